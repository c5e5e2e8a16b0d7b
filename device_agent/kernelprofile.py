"""Per-kernel latencies inside a whole model, from onnxruntime's per-node profiler.

Kernels timed alone miss whole-model latency by 10-30% (hot caches, layout conversions),
while the per-node profile of the whole model sums to within ~5% of it. So a kernel's
in-model latency is the time of the runtime nodes attributed to it (see
lut_store.keys.graph), per run.

The profiler adds a nearly constant time to every node it times (about 1.9 us on our CPU): on
24 random ResNet18/MobileNetV2 variants, whole latency = 1.00 x profiled sum - 1.8 us x nodes
fitted with 2% MAPE, while one scale factor per model left 20%. So the agent measures that
per-node overhead once per worker (two chains of small convolutions, 20 and 120 nodes: the
slope of profiled minus unprofiled time), subtracts it from every node, and then scales the
kernels of the model by the small factor (~1) that makes their mean latencies sum to the
model's median latency measured without the profiler in the same job (means add up across
kernels; medians do not).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lut_store.keys.graph import ModelKernels, UnsupportedModel, attribute_runtime_nodes
from protos.hadmc.v1 import agent_pb2, common_pb2

MAX_PROFILED_RUNS = 200


@dataclass(frozen=True)
class Sessions:
    """How this worker makes onnxruntime sessions: `make_session(model, options)` (model bytes or
    a path), `make_options()` for fresh session options, and `cancelled()`, polled between runs."""

    make_session: Callable[[Any, Any], Any]
    make_options: Callable[[], Any]
    cancelled: Callable[[], bool]


def _runs(events: list[dict[str, Any]], node_index: dict[str, int], skip: int) -> np.ndarray:
    """Microseconds per (run, runtime node) from the profiler's events, warm-up runs skipped."""
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[skip:]
    if not runs:
        raise UnsupportedModel("the runtime's profiler recorded no model runs")
    starts = np.array([r[0] for r in runs])
    table = np.zeros((len(runs), len(node_index)))
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = node_index.get(name[: -len("_kernel_time")])
        run = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if node is not None and run >= 0 and e["ts"] <= runs[run][1]:
            table[run, node] += e["dur"]
    return table


def _stats(samples_ms: np.ndarray, whole: common_pb2.LatencyStats) -> common_pb2.LatencyStats:
    return common_pb2.LatencyStats(
        median_ms=float(np.median(samples_ms)),
        mean_ms=float(samples_ms.mean()),
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


def _profiled(
    session: Any, run_once: Callable[[], None], warmup_runs: int, runs: int, cancelled: Callable[[], bool]
) -> list[dict[str, Any]]:
    """Run a profiling session; return the profiler's events."""
    for _ in range(warmup_runs + runs):
        if cancelled():
            session.end_profiling()
            raise InterruptedError("cancelled")
        run_once()
    return json.loads(Path(session.end_profiling()).read_text())


def _profiling_options(make_options: Callable[[], Any], tmp: Path, optimized: Path | None = None) -> Any:
    options = make_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp / "profile")
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return options


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
    sessions: Sessions,
    run_factory: Callable[[Any, dict[str, Any]], Callable[[], None]],
    median_ms: Callable[[Callable[[], None]], float],
) -> float:
    """The time the profiler adds to each node it times: the slope, over chains of 20 and 120
    small convolutions, of (profiled node sum - unprofiled latency)."""
    feeds = {"t0": np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float32)}
    excess = {}
    for nodes in (20, 120):
        data = _conv_chain(nodes)
        plain = median_ms(run_factory(sessions.make_session(data, sessions.make_options()), feeds))
        with tempfile.TemporaryDirectory(prefix="hadmc-kprof-") as tmp:
            sess = sessions.make_session(data, _profiling_options(sessions.make_options, Path(tmp)))
            events = _profiled(sess, run_factory(sess, feeds), 20, 200, sessions.cancelled)
        node_ms = (
            sum(e["dur"] for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"))
            / 1000.0
        )
        runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        excess[nodes] = node_ms / runs - plain
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
    mk: ModelKernels,
    model: str,
    sessions: Sessions,
    run_once_for: Callable[[Any], Callable[[], None]],
    whole: common_pb2.LatencyStats,
    overhead_ms: float,
    warmup_runs: int,
) -> agent_pb2.KernelProfile:
    """Profile `model` (a path) in a second session and split `whole`'s median over its kernels.

    `run_once_for(session)` returns a run-once closure; `whole` is the latency measured without
    the profiler; `overhead_ms` is what the profiler adds to each node (see node_overhead_ms).
    """
    runs = int(min(max(whole.n, 20), MAX_PROFILED_RUNS))
    with tempfile.TemporaryDirectory(prefix="hadmc-kprof-") as tmp_name:
        tmp = Path(tmp_name)
        sess = sessions.make_session(model, _profiling_options(sessions.make_options, tmp, tmp / "optimized.onnx"))
        events = _profiled(sess, run_once_for(sess), warmup_runs, runs, sessions.cancelled)
        runtime_graph = onnx.load(tmp / "optimized.onnx", load_external_data=False)
    owner = attribute_runtime_nodes(mk, runtime_graph)
    names = list(owner)
    table = _runs(events, {n: i for i, n in enumerate(names)}, skip=warmup_runs)
    profiled_sum_ms = float(table.sum(axis=1).mean()) / 1000.0
    members: dict[int, list[int]] = {}
    for i, n in enumerate(names):
        members.setdefault(owner[n], []).append(i)
    per_kernel, below = kernel_times_ms(table, members, len(mk.kernels), overhead_ms)
    corrected_ms = float(per_kernel.sum(axis=1).mean())
    if corrected_ms <= 0:
        raise UnsupportedModel("the runtime's profiler recorded no node times for this model")
    scale = whole.median_ms / corrected_ms
    profile = agent_pb2.KernelProfile(
        runs=table.shape[0], profiled_sum_ms=profiled_sum_ms, scale=scale, node_overhead_ms=overhead_ms
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
