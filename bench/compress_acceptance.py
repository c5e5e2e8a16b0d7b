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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from host.compress.distill import DistillConfig  # noqa: E402
from host.compress.pipeline import CompressConfig, DataConfig, run_compress  # noqa: E402
from host.compress.policy import LayerAction, Policy  # noqa: E402
from host.compress.prune import layer_limits  # noqa: E402
from host.compress.train import TrainConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--distill-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    from host import logs

    logs.configure()  # logs to stderr: stdout is the JSON document

    from host.models import build_model
    from lut_store.precision import Precision

    config = CompressConfig(
        model="resnet18",
        data=DataConfig(name="synthetic-neu-det", seed=args.seed),
        baseline=replace(TrainConfig(), epochs=15, seed=args.seed),
        distill=replace(DistillConfig(), epochs=args.distill_epochs),
        threads=1,
        benchmark_batch=1,
    )
    names = [lim.name for lim in layer_limits(build_model("resnet18", 6, (3, 64, 64)), torch.zeros(1, 3, 64, 64))]
    policy = Policy.uniform("resnet18", names, 0.5, Precision.INT8, {"fc": LayerAction(1.0, Precision.INT8)})
    out = args.out or Path(tempfile.mkdtemp(prefix="hadmc-acceptance-"))
    s = run_compress(config, policy, out, progress=True)
    a = s.accuracy
    drop_points = 100 * (a["baseline_test_torch"] - a["compressed_test_onnxruntime"])
    result = {
        "accuracy": a,
        "accuracy_drop_points": round(drop_points, 2),
        "params": {
            "baseline": s.size["baseline_params"],
            "compressed": s.size["params"],
            "reduction": round(s.size["params_reduction"], 4),
        },
        "effective_size_compression": round(s.size["compression"], 4),
        "latency_ms": {k: s.latency[k]["latency"]["median_ms"] for k in ("baseline", "compressed")},
        "speedup": round(s.latency["speedup"], 2),
        "seconds": s.seconds,
        "out": str(out),
        "targets": {
            "accuracy_drop<=1pt": drop_points <= 1.0,
            "params-75%": s.size["params_reduction"] >= 0.745,
            "speedup>=5x": s.latency["speedup"] >= 5.0,
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
