"""`hadmc compress`: one given policy, end to end.

baseline (cached) -> prune -> re-estimate and fold BN -> fake-quant -> distill -> export ONNX ->
latency from the LUT -> accuracy in onnxruntime on the device -> benchmark on the device in turn
with the FP32 baseline exported and measured the same way -> summary.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host.compress.distill import DistillConfig
from host.compress.policy import Policy
from host.device import Device
from host.progress import Progress
from host.runs import CompressSummary, write_config, write_json, write_record
from host.workbench import BenchConfig, CompressSettings, Workbench
from lut_store.tomlfile import ConfigError, from_mapping, read_toml


@dataclass(frozen=True)
class CompressConfig(BenchConfig):
    """A compress run's TOML: the workbench's tables and [distill]."""

    compress: CompressSettings = CompressSettings(calibration_batches=4)
    distill: DistillConfig = DistillConfig()


def load_compress_config(path: Path | None, overrides: dict[str, Any] | None = None) -> CompressConfig:
    """The TOML at `path` (defaults without one), its tables updated by `overrides` (None: keep)."""
    doc = read_toml(path, "config", ConfigError) if path is not None else {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            doc[key] = {**doc.get(key, {}), **{k: v for k, v in value.items() if v is not None}}
        elif value is not None:
            doc[key] = value
    return from_mapping(CompressConfig, doc)


def run_compress(
    config: CompressConfig, policy: Policy, out: Path, progress: bool = True, device: Device | None = None
) -> CompressSummary:
    """The whole pipeline for one policy (on `device`, else the config's); writes the ONNX files,
    policy.json, config.json and, last, summary.json into `out`."""
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    shown = Progress(progress)
    with Workbench.open(config, shown, device) as bench:
        bench.validate(policy)  # before any training
        reference = bench.export_reference(out / "baseline_fp32.onnx")
        t1 = time.monotonic()
        shown.say(f"distilling the compressed student ({config.distill.epochs} epochs) ...")
        made = bench.final_model(
            policy, config.distill, bench.distill_set(config.distill), out / "compressed.onnx", reference.path
        )
        t2 = time.monotonic()
        baseline = bench.baseline(reference.path, made.paired.baseline)
        for path in (reference.path, made.exported.path):
            bench.register(path)  # the device's nightly re-profile keeps their kernels fresh
    summary = CompressSummary(
        config.model,
        bench.data.name,
        bool(bench.teacher_cached),
        baseline,
        made.model,
        reference.path.name,
        tuple(made.distill.epoch_loss),
        {"baseline_s": t1 - t0, "final_model_s": t2 - t1, "total_s": time.monotonic() - t0},
        {p.value: n for p, n in made.exported.layers_per_precision.items()},
        bench.device.endpoint,
    )
    write_json(out / "policy.json", json.loads(policy.to_json()))
    write_config(out / "config.json", config)
    write_record(out / "summary.json", summary)  # last: a compression with summary.json is finished
    return summary
