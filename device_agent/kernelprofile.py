"""Per-kernel latencies inside a whole model, from onnxruntime's per-node profiler.

FACTS.md: kernels timed alone miss whole-model latency by 10-30% (hot caches, layout
conversions), while the per-node profile of the whole model sums to within ~5% of it. So a
kernel's in-model latency is the time of the runtime nodes attributed to it (see
lut_store.modelkeys), per run, scaled by one factor per model so that the kernels sum to the
model's latency measured without the profiler in the same job. Means are what add up across
kernels, so the scale makes the kernels' mean latencies sum to the model's median latency.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lut_store.modelkeys import ModelKernels, UnsupportedModel, attribute_runtime_nodes
from protos.hadmc.v1 import agent_pb2, common_pb2

MAX_PROFILED_RUNS = 200


def _runs(events: list[dict[str, Any]], node_index: dict[str, int], skip: int) -> np.ndarray:
    """Microseconds per (run, runtime node) from the profiler's events, warm-up runs skipped."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")[skip:]
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
        median_ms=float(np.median(samples_ms)), mean_ms=float(samples_ms.mean()),
        p90_ms=float(np.percentile(samples_ms, 90)), p99_ms=float(np.percentile(samples_ms, 99)),
        std_ms=float(samples_ms.std(ddof=1)), min_ms=float(samples_ms.min()), max_ms=float(samples_ms.max()),
        n=len(samples_ms), stable=whole.stable, attempts=whole.attempts, other_cpu_cores=whole.other_cpu_cores,
        settings=whole.settings,
    )


def profile_kernels(mk: ModelKernels, make_session: Callable[[Any], Any], run_factory: Callable[[Any], Callable[[], None]],
                    session_options: Any, whole: common_pb2.LatencyStats, warmup_runs: int,
                    cancelled: Callable[[], bool]) -> agent_pb2.KernelProfile:
    """Profile the model in a second session and split `whole`'s median over its kernels.

    `make_session(options)` creates the session, `run_factory(session)` returns a run-once
    closure; `whole` is the latency measured without the profiler.
    """
    runs = int(min(max(whole.n, 20), MAX_PROFILED_RUNS))
    with tempfile.TemporaryDirectory(prefix="hadmc-kprof-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        session_options.enable_profiling = True
        session_options.profile_file_prefix = str(Path(tmp) / "profile")
        session_options.optimized_model_filepath = str(optimized)
        sess = make_session(session_options)
        run_once = run_factory(sess)
        for k in range(warmup_runs + runs):
            if cancelled():
                sess.end_profiling()
                raise InterruptedError("cancelled")
            run_once()
        events = json.loads(Path(sess.end_profiling()).read_text())
        runtime_graph = onnx.load(optimized, load_external_data=False)
    owner = attribute_runtime_nodes(mk, runtime_graph)
    names = list(owner)
    table = _runs(events, {n: i for i, n in enumerate(names)}, skip=warmup_runs)
    per_run_ms = table.sum(axis=1) / 1000.0
    profiled_sum_ms = float(per_run_ms.mean())
    if profiled_sum_ms <= 0:
        raise UnsupportedModel("the runtime's profiler recorded no node times for this model")
    scale = whole.median_ms / profiled_sum_ms
    profile = agent_pb2.KernelProfile(runs=table.shape[0], profiled_sum_ms=profiled_sum_ms, scale=scale)
    members: dict[int, list[int]] = {}
    for i, n in enumerate(names):
        members.setdefault(owner[n], []).append(i)
    for k, kernel in enumerate(mk.kernels):
        cols = members.get(k, [])
        item = profile.kernels.add(name=kernel.name, key=kernel.key.to_proto(),
                                   runtime_nodes=[names[i] for i in cols])
        if cols:
            samples = table[:, cols].sum(axis=1) / 1000.0 * scale
            if samples.max() > 0:
                item.latency.CopyFrom(_stats(samples, whole))
    return profile
