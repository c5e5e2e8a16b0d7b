"""`hadmc demo`: the built-in default run on an embedded agent.

Until the search lands this measures what the search will stand on: the device fingerprint and
the precisions it runs, the FP32 ResNet18 (paper setting, 64x64, 6 classes) benchmarked on the
device, and the latency of ResNet18's stage convolutions at every precision the device runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from host.agent_client import AgentClient, message_dict
from host.embedded import embedded_agent
from lut_store import kernels
from lut_store.opkey import precision_from_proto

# (in_channels, spatial size, out_channels, stride) of ResNet18's first conv per stage at 64x64.
_STAGE_CONVS = ((64, 16, 64, 1), (64, 16, 128, 2), (128, 8, 256, 2), (256, 4, 512, 2))


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def run_demo(out: Path, progress: bool = True) -> dict[str, Any]:
    from host.compress.export import export_onnx
    from host.models.resnet import ResNet18

    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "resnet18_fp32.onnx"
    _say(progress, "exporting ResNet18 (64x64, 6 classes) to ONNX ...")
    export_onnx(ResNet18(num_classes=6), model_path, (3, 64, 64))
    _say(progress, "starting an embedded agent on 127.0.0.1 (probing the device) ...")
    with embedded_agent() as target, AgentClient(target) as client:
        info = client.info()
        precisions = [precision_from_proto(p.precision) for p in info.precisions if p.supported]
        _say(progress, f"device {info.fingerprint_hash[:12]}: {info.fingerprint.cpu.model}, "
                       f"{info.fingerprint.execution_provider}, precisions {', '.join(precisions)}")
        _say(progress, "benchmarking ResNet18 FP32 at batch 1 ...")
        bench = client.benchmark(model_path, batch_size=1)
        _say(progress, f"  median {bench.latency.median_ms:.3f} ms, p90 {bench.latency.p90_ms:.3f} ms, "
                       f"n={bench.latency.n}, CI +-{bench.latency.rel_ci95 * 100:.1f}%")
        keys = [kernels.conv(1, c_in, size, size, c_out, 3, stride=stride, bias=True, fuse=("relu",),
                             precision=precision)
                for c_in, size, c_out, stride in _STAGE_CONVS for precision in precisions]
        _say(progress, f"profiling {len(keys)} conv+relu kernels ...")
        kernels_out = []
        for key, result in zip(keys, client.profile(keys, timeout_s=600)):
            row: dict[str, Any] = {"kernel": key.describe(), "precision": key.precision, "key_hash": result.key_hash}
            if result.WhichOneof("outcome") == "stats":
                row["latency"] = message_dict(result.stats)
                _say(progress, f"  {key.describe():<40} {result.stats.median_ms:8.4f} ms")
            else:
                row["error"] = result.error.message
                _say(progress, f"  {key.describe():<40} {result.error.message}")
            kernels_out.append(row)
    summary = {"device": message_dict(info), "resnet18_fp32_benchmark": message_dict(bench, drop=("outputs",)), "kernels": kernels_out}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
