"""What each weight granularity (and fp8) costs at run time, and what HiReLC's proxy replay saves. Prints one
JSON document.

1. A model (untrained: latency does not depend on the weights' values) with every layer at one
   (precision, granularity), exported by hadmc and timed in onnxruntime's CPU provider, one thread:
   `--rounds` interleaved rounds of `--runs` runs each, median, min and max per setting, with the
   exported file's size; with `--openvino`, each model also in OpenVINO's CPU plugin (f32 hint,
   one thread).
2. HiReLC's logit proxy (host/search/hirelc/proxy.py) on `--samples` inputs, one kernel changed at
   the first, middle and second-to-last layer: the seconds of a replay from that kernel against a
   full forward, `--repeats` each.

Usage: python bench/granularity_latency.py [--model resnet18] [--rounds 5] [--runs 30] [--samples 8] [--openvino]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from device_agent.fingerprint import cpu_info
from host.compress.apply import random_calibration, student_of
from host.compress.export import export_policy_model
from host.compress.policy import LayerAction, Policy
from host.compress.prune import layer_limits
from host.models import build_model
from host.search.hirelc.proxy import LogitProxy
from lut_store.precision import Precision

SETTINGS = (
    (Precision.FP32, "per-channel"),
    (Precision.INT4W, "per-channel"),
    (Precision.INT4W, "log"),
    (Precision.INT8, "per-channel"),
    (Precision.INT8, "uniform"),
    (Precision.FP8, "per-channel"),
    (Precision.FP8, "uniform"),
)


def _runners(path: Path, label: str, openvino: bool) -> dict[str, Callable[[np.ndarray], object]]:
    """One-thread runners of an exported model: onnxruntime's CPU provider, and OpenVINO's CPU at
    the f32 hint when asked (`openvino <label>`)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    runners: dict[str, Callable[[np.ndarray], object]] = {label: lambda x: session.run(None, {"input": x})}
    if openvino:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1}
        request = core.compile_model(core.read_model(str(path)), "CPU", config).create_infer_request()
        runners[f"openvino {label}"] = lambda x: request.infer({0: x})
    return runners


def latencies(
    model_name: str, shape: tuple[int, ...], rounds: int, runs: int, openvino: bool
) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    net = build_model(model_name, 6, shape).eval()
    example = torch.zeros((1, *shape))
    names = [lim.name for lim in layer_limits(net, example)]
    runners: dict[str, Callable[[np.ndarray], object]] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision, granularity in SETTINGS:
            policy = Policy(model_name, {n: LayerAction(1.0, precision, granularity) for n in names})
            student, _ = student_of(net, policy, example, 8, random_calibration(shape))
            path = Path(tmp) / f"{precision}-{granularity}.onnx"
            export_policy_model(student.eval(), policy, path, shape)
            made = _runners(path, f"{precision} {granularity}", openvino)
            runners.update(made)
            sizes.update(dict.fromkeys(made, path.stat().st_size))
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    times: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(rounds):
        for label, run in runners.items():
            for _ in range(5):
                run(x)
            t0 = time.perf_counter()
            for _ in range(runs):
                run(x)
            times[label].append((time.perf_counter() - t0) / runs * 1000)
    return {
        label: {
            "median_ms": statistics.median(ms),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "file_bytes": sizes[label],
        }
        for label, ms in times.items()
    }


def replay(model_name: str, shape: tuple[int, ...], samples: int, repeats: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    net = build_model(model_name, 6, shape).eval()
    names = [lim.name for lim in layer_limits(net, torch.zeros((1, *shape)))]
    x = torch.randn(samples, *shape)
    fast = LogitProxy(copy.deepcopy(net), x, 8)
    full = LogitProxy(copy.deepcopy(net), x, 8)
    full.replay, full.modules = None, dict(full.model.named_modules())
    out = {}
    for where, kernel in (("first", names[0]), ("middle", names[len(names) // 2]), ("late", names[-2])):
        action = {kernel: LayerAction(1.0, Precision.INT8)}
        seconds = {}
        for label, proxy in (("replay", fast), ("full", full)):
            t0 = time.perf_counter()
            for _ in range(repeats):
                proxy._measure(action)
            seconds[label] = (time.perf_counter() - t0) / repeats
        out[f"{where} ({kernel})"] = {
            "replay_s": seconds["replay"],
            "full_s": seconds["full"],
            "speedup": seconds["full"] / seconds["replay"],
            "same_value": fast._measure(action) == full._measure(action),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--openvino", action="store_true", help="also time each model in OpenVINO (f32 hint)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = (3, args.size, args.size)
    print(
        json.dumps(
            {
                "cpu": cpu_info().model,
                "onnxruntime": ort.__version__,
                "model": args.model,
                "input_shape": shape,
                "latency": latencies(args.model, shape, args.rounds, args.runs, args.openvino),
                "proxy_replay": replay(args.model, shape, args.samples, args.repeats),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
