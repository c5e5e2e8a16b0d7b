"""Per-kernel latencies inside a whole model, from the runtime's per-node profiler (onnxruntime's
profiler, OpenVINO's performance counters: see device_agent/runtimes).

Kernels timed alone miss whole-model latency by 10-30% (hot caches, layout conversions),
while the per-node profile of the whole model sums to within ~5% of it. So a kernel's
in-model latency is the time of the runtime nodes attributed to it (see
lut_store.keys.graph), per run.

The profiler adds a nearly constant time to every node it times (about 1.9 us for onnxruntime on
our CPU): on
24 random ResNet18/MobileNetV2 variants, whole latency = 1.00 x profiled sum - 1.8 us x nodes
fitted with 2% MAPE, while one scale factor per model left 20%. So the agent measures that
per-node overhead once per worker (two chains of small convolutions, 20 and 120 nodes: the
slope of profiled minus unprofiled time), subtracts it from every node, and then scales the
kernels of the model by the small factor (~1) that makes their mean latencies sum to the
model's median latency measured without the profiler in the same job (means add up across
kernels; medians do not). Time of runtime nodes that fit no kernel is reported beside the
kernels (`unattributed_ms`), so the kernels never silently claim or lose it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from device_agent.runtimes import Backend, NodeTimes
from lut_store.keys.graph import ModelKernels, UnsupportedModel, attribute_nodes
from protos.hadmc.v1 import agent_pb2, common_pb2

MAX_PROFILED_RUNS = 200


def _stats(samples_ms: np.ndarray, whole: common_pb2.LatencyStats) -> common_pb2.LatencyStats:
    return common_pb2.LatencyStats(
        latency_ms=float(samples_ms.mean()),
        median_ms=float(np.median(samples_ms)),
        mean_ms=float(samples_ms.mean()),
        p10_ms=float(np.percentile(samples_ms, 10)),
        p90_ms=float(np.percentile(samples_ms, 90)),
        p99_ms=float(np.percentile(samples_ms, 99)),
        std_ms=float(samples_ms.std(ddof=1)),
        min_ms=float(samples_ms.min()),
        max_ms=float(samples_ms.max()),
        n=len(samples_ms),
        stable=whole.stable,
        attempts=whole.attempts,
        other_cpu_cores=whole.other_cpu_cores,
        settings=whole.settings,
    )


def _conv_chain(nodes: int) -> bytes:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((16, 16, 1, 1)) * 0.1).astype(np.float32), f"w{i}")
        for i in range(nodes)
    ]
    graph = helper.make_graph(
        [helper.make_node("Conv", [f"t{i}", f"w{i}"], [f"t{i + 1}"], name=f"conv{i}") for i in range(nodes)],
        "chain",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, [1, 16, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def node_overhead_ms(
    backend: Backend, median_ms: Callable[[Callable[[], None]], float], cancelled: Callable[[], bool]
) -> float:
    """The time the profiler adds to each node it times: the slope, over chains of 20 and 120
    small convolutions, of (profiled node sum - unprofiled latency)."""
    feeds = {"t0": np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float32)}
    excess = {}
    for nodes in (20, 120):
        data = _conv_chain(nodes)
        plain = median_ms(backend.load(data).runner(feeds))
        times = backend.profile_nodes(data, None, feeds, None, 20, 200, cancelled)
        excess[nodes] = float(times.table_us.sum(axis=1).mean()) / 1000.0 - plain
    return max((excess[120] - excess[20]) / 100.0, 0.0)


# The profiler's clock: node durations are whole microseconds.
PROFILER_CLOCK_MS = 0.001


def kernel_times_ms(
    table_us: np.ndarray, members: dict[int, list[int]], n_kernels: int, overhead_ms: float
) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds per (run, kernel): its runtime nodes' time less the profiler's per-node
    overhead, and at least half a clock tick per node; and, per kernel, whether it ran below the
    profiler's resolution (the subtraction left it a median of 0).

    The floor keeps a kernel that runs (a Flatten, a small pool, every node of an MLP on tabular
    data) from costing 0 ms, and it is continuous: a kernel just above and one just below the
    overhead get nearly the same time, so fits through LUT latencies stay smooth. Kernels without
    nodes (the runtime elided them) stay at 0 and are not flagged."""
    per_kernel = np.zeros((table_us.shape[0], n_kernels))
    below = np.zeros(n_kernels, dtype=bool)
    for k, cols in members.items():
        corrected = table_us[:, cols].sum(axis=1) / 1000.0 - overhead_ms * len(cols)
        below[k] = not np.median(corrected) > 0
        per_kernel[:, k] = np.maximum(corrected, PROFILER_CLOCK_MS / 2 * len(cols))
    return per_kernel, below


def profile_kernels(
    mk: ModelKernels, times: NodeTimes, whole: common_pb2.LatencyStats, overhead_ms: float, statistic: str = "median"
) -> agent_pb2.KernelProfile:
    """Split `whole`'s latency of record (measured without the profiler) over the model's kernels,
    from the runtime's node times; `overhead_ms` is what the profiler adds to each node
    (see node_overhead_ms). With `statistic` "p10" the kernels' shares come from the faster half of
    the profiled runs, those that other tenants' work did not slow."""
    owner, lost = attribute_nodes(mk, times.nodes)
    names = [n.name for n in times.nodes]
    column = {n: i for i, n in enumerate(names)}
    table = times.table_us
    members: dict[int, list[int]] = {}
    for i, n in enumerate(names):
        if n in owner:
            members.setdefault(owner[n], []).append(i)
    lost_cols = [column[n] for n in lost if table[:, column[n]].any()]
    if statistic == "p10":
        run_ms = table.sum(axis=1)
        table = table[run_ms <= np.median(run_ms)]
    per_kernel, below = kernel_times_ms(table, members, len(mk.kernels), overhead_ms)
    lost_ms = 0.0
    if lost_cols:
        lost_ms = max(float(table[:, lost_cols].sum(axis=1).mean()) / 1000.0 - overhead_ms * len(lost_cols), 0.0)
    corrected_ms = float(per_kernel.sum(axis=1).mean()) + lost_ms
    if corrected_ms <= 0:
        raise UnsupportedModel("the runtime's profiler recorded no node times for this model")
    scale = (whole.latency_ms or whole.median_ms) / corrected_ms
    profile = agent_pb2.KernelProfile(
        runs=table.shape[0],
        profiled_sum_ms=float(table.sum(axis=1).mean()) / 1000.0,
        scale=scale,
        node_overhead_ms=overhead_ms,
        unattributed_nodes=[names[i] for i in lost_cols],
        unattributed_ms=lost_ms * scale,
        profiled_run_ms=float(times.run_ms.mean()),
        attributed_ms=corrected_ms,
    )
    for k, kernel in enumerate(mk.kernels):
        cols = members.get(k, [])
        item = profile.kernels.add(
            name=kernel.name,
            key=kernel.key.to_proto(),
            runtime_nodes=[names[i] for i in cols],
            below_resolution=bool(below[k]),
        )
        if cols:
            item.latency.CopyFrom(_stats(per_kernel[:, k] * scale, whole))
    return profile
