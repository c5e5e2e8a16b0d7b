"""The compression acceptance run: prints one JSON document.

ResNet18 on the built-in synthetic NEU-DET, uniform policy keep-ratio 0.5 + int8 on every layer,
15 baseline epochs and 20 distillation epochs, then accuracy in onnxruntime and latency on an
embedded agent at batch 1 with one thread, against the FP32 baseline exported and measured the
same way. Targets: accuracy drop <= 1 point, -75% parameters, speedup >= 5x.

Usage: python bench/compress_acceptance.py [--out DIR] [--distill-epochs 20] [--seed 0]
(uses $HADMC_HOME for the cached baseline; set it to a temp dir for a cold run)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from host.compress.distill import DistillConfig
from host.compress.policy import LayerAction, Policy
from host.compress.run import CompressConfig, run_compress
from host.compress.train import TrainConfig
from host.data import DataConfig
from host.device import DeviceConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--distill-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from host import logs
    from host.latency.variants import model_limits

    logs.configure()  # logs to stderr: stdout is the JSON document

    from lut_store.precision import Precision

    config = CompressConfig(
        model="resnet18",
        data=DataConfig(name="synthetic-neu-det", seed=args.seed),
        baseline=replace(TrainConfig(), epochs=15, seed=args.seed),
        distill=replace(DistillConfig(), epochs=args.distill_epochs),
        device=DeviceConfig(threads=1, benchmark_batch=1),
    )
    names = [lim.name for lim in model_limits("resnet18")]
    policy = Policy.uniform("resnet18", names, 0.5, Precision.INT8, {"fc": LayerAction(1.0, Precision.INT8)})
    out = args.out or Path(tempfile.mkdtemp(prefix="hadmc-acceptance-"))
    s = run_compress(config, policy, out, progress=True)
    base, c = s.baseline, s.compressed
    drop_points = 100 * (base.test_accuracy - c.test_accuracy_onnxruntime)
    result = {
        "accuracy": {
            "baseline_test_torch": base.test_accuracy,
            "baseline_test_onnxruntime": base.test_accuracy_onnxruntime,
            "compressed_test_torch": c.test_accuracy,
            "compressed_test_onnxruntime": c.test_accuracy_onnxruntime,
        },
        "accuracy_drop_points": round(drop_points, 2),
        "params": {"baseline": base.params, "compressed": c.params, "reduction": round(c.params_reduction, 4)},
        "effective_size_compression": round(c.compression, 4),
        "latency_ms": {"baseline": c.baseline_measured_latency.record_ms, "compressed": c.measured_latency.record_ms},
        "predicted_latency_ms": {"baseline": base.predicted_latency_ms, "compressed": c.predicted_latency_ms},
        "speedup": round(c.speedup, 2),
        "seconds": s.seconds,
        "out": str(out),
        "targets": {
            "accuracy_drop<=1pt": drop_points <= 1.0,
            "params-75%": c.params_reduction >= 0.745,
            "speedup>=5x": c.speedup >= 5.0,
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
