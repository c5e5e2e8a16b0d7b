"""Why does the distilled, BN-folded, unpruned FP32 network run faster than the FP32 reference
every speedup is measured against? Prints one JSON document.

Exports the demo's teacher four ways and times each against the reference (the teacher exported
with the exporter folding BatchNorm, `Workbench.export_reference`) in interleaved rounds, both on
the device (the agent's benchmark, what hadmc reports) and in this process with onnxruntime at
one thread, with and without flushing subnormal floats to zero (`session.set_denormal_as_zero`):

- reference: the reference against itself (the noise floor);
- folded: the teacher with BatchNorm folded by hadmc's pipeline (no re-estimation);
- pipeline: keep 1.0 at FP32 through the pipeline (BatchNorm re-estimated on training batches, folded);
- distilled: the pipeline's model fine-tuned by distillation (`--epochs`), the ablation's D row.

For each it counts the subnormal values (0 < |x| < 1.18e-38) among the weights and among the
activations of a validation batch: arithmetic on subnormals is slow on x86 unless flushed.

Usage: python bench/fp32_reference.py [--epochs 3] [--rounds 5] [--out DIR]  (uses $HADMC_HOME)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from device_agent.fingerprint import cpu_info
from host.compress.distill import distill_loader
from host.compress.fold import fold_batchnorm
from host.compress.policy import Policy
from host.demo import DEMO
from host.workbench import Workbench
from lut_store.precision import Precision

TINY = np.finfo(np.float32).tiny  # the smallest normal float32


def _subnormal(a: np.ndarray) -> int:
    a = np.asarray(a)
    return int(((a != 0) & (np.abs(a) < TINY)).sum()) if a.dtype == np.float32 else 0


def _weights_subnormal(path: Path) -> int:
    return sum(_subnormal(numpy_helper.to_array(t)) for t in onnx.load(path).graph.initializer)


def _activations_subnormal(path: Path, x: np.ndarray) -> tuple[int, int]:
    """(subnormal values, all values) over every node output for the batch `x`."""
    model = onnx.load(path)
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in known:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as written
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    return sum(_subnormal(o) for o in outputs), sum(int(np.asarray(o).size) for o in outputs)


def _session(path: Path, flush: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if flush:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _median_ms(session: ort.InferenceSession, x: np.ndarray, runs: int) -> float:
    feed = {session.get_inputs()[0].name: x}
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _in_process(models: dict[str, Path], reference: Path, x: np.ndarray, rounds: int) -> dict:
    """Median ms per model and setting, interleaved with the reference round by round."""
    result: dict[str, dict[str, list[float]]] = {}
    for flush in (False, True):
        setting = "flush_subnormals" if flush else "default"
        sessions = {name: _session(path, flush) for name, path in {"reference": reference, **models}.items()}
        for _ in range(rounds):
            for name, session in sessions.items():
                result.setdefault(name, {}).setdefault(setting, []).append(_median_ms(session, x, 100))
    return {
        name: {setting: {"median_ms": statistics.median(v), "rounds_ms": v} for setting, v in settings.items()}
        for name, settings in result.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from host import logs

    logs.configure()
    out = args.out or Path(tempfile.mkdtemp(prefix="hadmc-fp32-reference-"))
    out.mkdir(parents=True, exist_ok=True)
    config = replace(DEMO, device=replace(DEMO.device, benchmark_rounds=args.rounds))
    with Workbench.open(config) as bench:
        reference = bench.export_reference(out / "reference.onnx").path
        names = [lim.name for lim in bench.layer_limits()]
        policy = Policy.uniform(config.model, names, 1.0, Precision.FP32)
        folded = copy.deepcopy(bench.teacher)
        fold_batchnorm(folded)
        models = {"folded": bench.export(folded.eval(), policy, out / "folded.onnx").path}
        student, _ = bench.compress(policy, bench.loaders.train)
        models["pipeline"] = bench.export(student, policy, out / "pipeline.onnx").path
        distill = replace(config.final_distill, epochs=args.epochs)
        loader = distill_loader(bench.distill_set(distill), config.data.batch_size, config.data.seed)
        bench.distill(student, distill, loader)
        models["distilled"] = bench.export(student, policy, out / "distilled.onnx").path
        device = {"reference": bench.paired(reference, reference).speedup}
        device.update({name: bench.paired(path, reference).speedup for name, path in models.items()})
        x_val = np.ascontiguousarray(bench.data.x_val[:1], dtype=np.float32)
        x_batch = np.ascontiguousarray(bench.data.x_val[:32], dtype=np.float32)
    subnormals = {}
    for name, path in {"reference": reference, **models}.items():
        found, total = _activations_subnormal(path, x_batch)
        subnormals[name] = {"weights": _weights_subnormal(path), "activations": found, "activation_values": total}
    print(
        json.dumps(
            {
                "cpu": cpu_info().model,
                "speedup_over_reference_on_device": device,
                "in_process_one_thread": _in_process(models, reference, x_val, args.rounds),
                "subnormal_values": subnormals,
                "out": str(out),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
