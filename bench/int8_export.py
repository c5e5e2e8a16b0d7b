"""hadmc's int8 export against onnxruntime's own quantizer, on the same FP32 model; prints JSON.

Per model (untrained, unpruned, exported as the search exports it; latency does not depend on
trained weights): the FP32 export, hadmc's all-int8 policy export, and onnxruntime's
`quantize_static` (QDQ, per-channel) of the FP32 export, each run by onnxruntime on the CPU at
batch 1 in interleaved rounds, and the operators left in onnxruntime's optimized graph. Operators
other than QLinearConv / QGemm / QLinearAdd are the float work an int8 graph still does (a
DequantizeLinear -> Clip -> QuantizeLinear between two int8 convolutions, a float residual Add).

Usage: python bench/int8_export.py [--models resnet18 mobilenetv2] [--rounds 5] [--runs 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from device_agent.fingerprint import cpu_info
from host.compress.policy import Policy
from host.compress.ptq import quantize_int8
from host.latency.variants import export_variant, model_limits
from lut_store.precision import Precision

WARMUP_RUNS = 50
CALIBRATION_BATCHES = 8


def session(path: Path, threads: int, optimized: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_ms(s: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        s.run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(times)


def compare(model: str, work: Path, rounds: int, runs: int, threads: int) -> dict:
    names = [lim.name for lim in model_limits(model)]
    paths = {k: work / f"{model}_{k}.onnx" for k in ("fp32", "hadmc_int8", "ort_int8")}
    export_variant(model, Policy.uniform(model, names, 1.0, Precision.FP32), paths["fp32"])
    export_variant(model, Policy.uniform(model, names, 1.0, Precision.INT8), paths["hadmc_int8"])
    x = np.random.default_rng(0).standard_normal((CALIBRATION_BATCHES * 8, 3, 64, 64)).astype(np.float32)
    quantize_int8(paths["fp32"], paths["ort_int8"], [x[i * 8 : (i + 1) * 8] for i in range(CALIBRATION_BATCHES)])
    feed = {"input": x[:1]}
    sessions, ops = {}, {}
    for kind, path in paths.items():
        optimized = path.with_suffix(".opt.onnx")
        sessions[kind] = session(path, threads, optimized)
        ops[kind] = dict(collections.Counter(n.op_type for n in onnx.load(optimized).graph.node))
        for _ in range(WARMUP_RUNS):
            sessions[kind].run(None, feed)
    medians: dict[str, list[float]] = {kind: [] for kind in paths}
    for _ in range(rounds):
        for kind, s in sessions.items():
            medians[kind].append(median_ms(s, feed, runs))
    ms = {kind: statistics.median(v) for kind, v in medians.items()}
    return {
        "median_ms": ms,
        "round_medians_ms": medians,
        "speedup_over_fp32": {k: ms["fp32"] / v for k, v in ms.items() if k != "fp32"},
        "hadmc_over_ort_int8": ms["hadmc_int8"] / ms["ort_int8"],
        "optimized_ops": ops,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {m: compare(m, Path(tmp), args.rounds, args.runs, args.threads) for m in args.models}
    cpu = cpu_info()
    doc = {
        "machine": {"cpu": cpu.model, "flags": list(cpu.flags), "onnxruntime": ort.__version__},
        "threads": args.threads,
        "models": results,
    }
    json.dump(doc, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
