"""OpenVINO's per-node profiling: the figures behind the agent's OpenVINO backend; prints JSON.

On random ResNet18 and MobileNetV2 variants (untrained, exported as the search exports them),
compiled as the agent compiles them (`OpenVinoBackend`: one stream, the latency hint, the agent's
threads, batch 1):

1. `perf_count_cost`: per variant, `--compilations` compilations with PERF_COUNT and as many
   without, alternating, each timed over `--runs` runs; the ratio of the medians of their medians
   (with / without). The agent profiles the very compilation it measured only if this is ~1.
2. `compilation_spread`: per variant, slowest / fastest median among the compilations without
   PERF_COUNT. Two compilations of one model need not run alike, which is why the profile is
   taken on the compilation that was measured.
3. `node_coverage`: per variant, the node times of a profiled run summed, over the run's wall
   time, as OpenVINO reports them (whole microseconds, truncated) and with the half microsecond
   the agent adds to every executed node. What stays uncovered is the run's own overhead.

Usage: python bench/openvino_profile.py [--variants 4] [--compilations 4] [--runs 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from device_agent.jobs import WorkerSettings
from device_agent.runtimes.ov import OpenVinoBackend
from host.latency.variants import export_variant, model_limits, random_policy
from lut_store.precision import Precision

KEEP_RATIOS = (0.25, 0.5, 0.75, 1.0)
WARMUP_RUNS = 20


def median_ms(
    backend: OpenVinoBackend, data: bytes, feeds: dict[str, np.ndarray], runs: int, perf_count: bool
) -> float:
    """A fresh compilation's median latency over `runs` runs."""
    run = backend.load(data, 1, for_profile=perf_count).runner(feeds)
    for _ in range(WARMUP_RUNS):
        run()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(times)


def measure(backend: OpenVinoBackend, data: bytes, compilations: int, runs: int) -> dict[str, float]:
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    with_pc, without = [], []
    for _ in range(compilations):
        without.append(median_ms(backend, data, feeds, runs, perf_count=False))
        with_pc.append(median_ms(backend, data, feeds, runs, perf_count=True))
    times = backend.profile_nodes(data, None, feeds, 1, WARMUP_RUNS, runs, lambda: False)
    executed = (times.table_us > 0).sum(axis=1)  # every executed node carries at least the half microsecond
    summed_us = times.table_us.sum(axis=1)
    wall_us = times.run_ms * 1000.0
    return {
        "median_ms_without_perf_count": statistics.median(without),
        "perf_count_cost": statistics.median(with_pc) / statistics.median(without),
        "compilation_spread": max(without) / min(without),
        "node_coverage_reported": float(np.mean((summed_us - 0.5 * executed) / wall_us)),
        "node_coverage_corrected": float(np.mean(summed_us / wall_us)),
        "executed_nodes": float(np.median(executed)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=4, help="per model")
    parser.add_argument("--models", default="resnet18,mobilenetv2")
    parser.add_argument("--compilations", type=int, default=4)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = WorkerSettings("CPU", {}, args.threads, 1, 1 << 30, (), runtime="openvino")
    backend = OpenVinoBackend(settings)
    report: dict = {
        "settings": vars(args),
        "cpu_busy_pct_before": psutil.cpu_percent(interval=1.0),
        "openvino": backend.facts.version,
        "inference_precision": backend.facts.inference_precision,
        "variants": [],
    }
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="hadmc-ov-profile-") as tmp:
        for name in args.models.split(","):
            limits = model_limits(name)
            for i in range(args.variants):
                policy = random_policy(name, limits, rng, KEEP_RATIOS, tuple(Precision))
                path = export_variant(name, policy, Path(tmp) / f"{name}_{i}.onnx", seed=i)
                row = measure(backend, path.read_bytes(), args.compilations, args.runs)
                report["variants"].append({"model": name, "variant": i, **row})
    rows = report["variants"]
    report["summary"] = {
        key: [min(r[key] for r in rows), max(r[key] for r in rows)]
        for key in ("perf_count_cost", "compilation_spread", "node_coverage_reported", "node_coverage_corrected")
    }
    report["cpu_busy_pct_after"] = psutil.cpu_percent(interval=1.0)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
