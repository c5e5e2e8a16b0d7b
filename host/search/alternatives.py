"""The baselines a user reaches for without hadmc, one command each, measured beside the search's
final models on the same device in the same run (final/NAME/):

- `ort-ptq`: onnxruntime's static int8 quantizer (host/compress/ptq.py) on the FP32 teacher as
  the search exported it (the reference), calibrated on the training split;
- `uniform+ptq`: every prunable layer pruned to one keep-ratio, BatchNorm re-estimated and
  folded, no fine-tuning, then the same quantizer. The keep-ratio is the largest on a 0.05 grid
  of the search's keep range whose uniform int8 model the LUT predicts within the budget:
  `latency_budget_ms`, else the predicted latency of the search's first controller's final model
  (hadmc's answer), so the two are compared at one speed;
- `openvino-default` (opt-in): the FP32 reference as OpenVINO runs it by default (bf16 where the
  CPU has it) on an OpenVINO agent on the search device's machine (`[search] openvino_device`,
  else an embedded one), benchmarked in turn with the reference on the search's device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from host.compress.export import ExportedModel
from host.compress.prune import count_params
from host.compress.ptq import calibration_batches, quantize_int8
from host.device import DeviceConfig, open_device, paired_latency
from host.latency import LatencyError
from host.runs import Alternative, read_record, write_record
from host.search.space import SearchSpace
from host.workbench import Workbench
from lut_store.precision import Precision
from lut_store.tomlfile import ConfigError
from protos.hadmc.v1 import agent_pb2

ALTERNATIVES = ("ort-ptq", "uniform+ptq", "openvino-default")
DEFAULT_ALTERNATIVES = ("ort-ptq", "uniform+ptq")
KEEP_STEP = 0.05


@dataclass(frozen=True)
class Made:
    """An alternative's FP32 model before the quantizer, and what chose it."""

    fp32: Path
    keep_ratio: float
    params: int
    description: str


def run_alternatives(
    bench: Workbench,
    names: list[str],
    space: SearchSpace,
    out: Path,
    reference: ExportedModel,
    budget_ms: float,
    openvino: str = "",
) -> dict[str, Alternative]:
    """Each named alternative made, verified and measured (a finished one is read back);
    `openvino` names the OpenVINO agent of `openvino-default` (empty: an embedded one)."""
    return {name: _alternative(bench, name, space, out, reference, budget_ms, openvino) for name in names}


def _alternative(
    bench: Workbench,
    name: str,
    space: SearchSpace,
    out: Path,
    reference: ExportedModel,
    budget_ms: float,
    openvino: str,
) -> Alternative:
    directory = out / "final" / name
    if (directory / "result.json").exists():
        return read_record(directory / "result.json", Alternative)
    directory.mkdir(exist_ok=True)
    if name == "openvino-default":
        alternative = _openvino_default(bench, openvino, out, reference)
        write_record(directory / "result.json", alternative)
        return alternative
    bench.progress.say(f"[{name}] the one-command alternative: onnxruntime's int8 quantizer ...")
    made = (
        Made(
            reference.path,
            1.0,
            count_params(bench.teacher),
            "onnxruntime quantize_static of the FP32 teacher (QDQ, per-channel int8 weights, uint8 "
            "activations, min-max calibration on the training split)",
        )
        if name == "ort-ptq"
        else _uniform_fp32(bench, space, directory, budget_ms)
    )
    config = bench.config
    rng = np.random.default_rng(config.data.seed)
    x = bench.data.x_train[rng.permutation(len(bench.data.x_train))]
    path = quantize_int8(
        made.fp32,
        directory / "model.onnx",
        calibration_batches(x, config.data.batch_size, config.compress.calibration_batches),
        weight_bits=bench.int8_weight_bits(),
    )
    accuracy, agrees = bench.agreement(path, reference.path)
    paired = bench.paired(path, reference.path)
    try:
        predicted, error = bench.predict(path).latency_ms, ""
    except LatencyError as exc:  # a graph the LUT's splitter does not know: measured, not predicted
        predicted, error = None, str(exc)
    alternative = Alternative(
        name,
        made.description,
        made.keep_ratio,
        accuracy,
        made.params,
        path.stat().st_size,
        predicted,
        paired.model,
        paired.baseline,
        paired.speedup,
        paired.rounds,
        str(path.relative_to(out)),
        agrees,
        error,
    )
    write_record(directory / "result.json", alternative)
    return alternative


def openvino_device(device: DeviceConfig, name: str) -> DeviceConfig:
    """The OpenVINO agent of `openvino-default`: the device `name` (`[search] openvino_device`),
    else an embedded one with the search device's threads (beside an embedded search device)."""
    return replace(device, name=name, runtime="") if name else replace(device, runtime="openvino")


def check_openvino_default(bench: Workbench, name: str) -> None:
    """Refuse, before the search, an OpenVINO agent that cannot give `openvino-default`: another
    runtime, a precision hint other than the default, or another kind of machine than the
    search device's (the alternative compares runtimes on one machine)."""
    config = openvino_device(bench.config.device, name)
    with open_device(config) as device:
        theirs = device.info().fingerprint
    ours = bench.device.info().fingerprint
    where = config.describe()
    if theirs.runtime != "openvino":
        raise ConfigError(
            f"openvino-default needs an OpenVINO agent; {where} runs {theirs.runtime} (start one with "
            "hadmc agent serve --runtime openvino)"
        )
    if "INFERENCE_PRECISION_HINT" in theirs.provider_options:
        raise ConfigError(
            f"openvino-default is OpenVINO's default execution; {where} was started with inference_precision = "
            f"{theirs.provider_options['INFERENCE_PRECISION_HINT']!r}: start it with the default"
        )
    machine = ("cpu.model", "cpu.architecture", "memory_total_bytes", "kernel")
    mine, other = (_facts(f) for f in (ours, theirs))
    if mine != other:
        differ = ", ".join(f"{k}: {a!r} vs {b!r}" for k, a, b in zip(machine, mine, other, strict=True) if a != b)
        raise ConfigError(
            f"openvino-default compares runtimes on one machine, and {where} is not on the search device's "
            f"({differ}); name an OpenVINO agent on that machine in [search] openvino_device"
        )


def _facts(f: agent_pb2.Fingerprint) -> tuple[str, str, int, str]:
    return f.cpu.model, f.cpu.architecture, f.memory_total_bytes, f.kernel


def _openvino_default(bench: Workbench, name: str, out: Path, reference: ExportedModel) -> Alternative:
    """The FP32 reference on the OpenVINO agent, measured in turn with it on the search's device."""
    config = openvino_device(bench.config.device, name)
    bench.progress.say(f"[openvino-default] the FP32 model as OpenVINO runs it by default ({config.describe()}) ...")
    settings = bench.config.device
    with open_device(config) as device:
        info = device.info()
        accuracy, agrees = bench.agreement(reference.path, reference.path, on=device)
        paired = paired_latency(
            device, reference.path, reference.path, settings.benchmark_rounds, settings.benchmark_batch, bench.device
        )
    f = info.fingerprint
    return Alternative(
        "openvino-default",
        f"the FP32 teacher (the reference ONNX, unchanged) run by OpenVINO {f.runtime_version.split('-')[0]} "
        f"with its default settings ({config.describe()}): float layers computed in {f.inference_precision}",
        1.0,
        accuracy,
        count_params(bench.teacher),
        reference.path.stat().st_size,
        None,
        paired.model,
        paired.baseline,
        paired.speedup,
        paired.rounds,
        str(reference.path.relative_to(out)),
        agrees,
        "measured on the OpenVINO agent; the LUT is the search device's",
    )


def _uniform_fp32(bench: Workbench, space: SearchSpace, directory: Path, budget_ms: float) -> Made:
    """The teacher pruned uniformly to the budget's keep-ratio, BN re-estimated and folded, FP32."""
    keep, predicted_ms = uniform_keep(bench, space, budget_ms, directory)
    n = len(space.layers)
    policy = space.policy([keep] * n, [Precision.FP32] * n)
    student, _ = bench.compress(policy, bench.loaders.train)
    exported = bench.export(student, policy, directory / "pruned_fp32.onnx")
    return Made(
        exported.path,
        keep,
        count_params(student),
        f"every prunable layer kept at {keep:g} (its uniform int8 model predicted {predicted_ms:.4g} ms, "
        f"budget {budget_ms:.4g} ms), BatchNorm re-estimated and folded, no fine-tuning, then onnxruntime "
        "quantize_static as for ort-ptq",
    )


def uniform_keep(bench: Workbench, space: SearchSpace, budget_ms: float, workdir: Path) -> tuple[float, float]:
    """The largest keep-ratio on the grid whose uniform int8 model the LUT predicts within
    `budget_ms`, with that prediction; the grid's smallest when none is (latency falls as keep does)."""
    grid = _grid(space.min_keep, space.max_keep)
    n = len(space.layers)
    predicted: dict[float, float] = {}

    def latency(keep: float) -> float:
        if keep not in predicted:
            policy = space.policy([keep] * n, [Precision.INT8] * n)
            exported = bench.export(bench.variant(policy), policy, workdir / f"uniform_int8_keep{keep:g}.onnx")
            predicted[keep] = bench.predict(exported).latency_ms
        return predicted[keep]

    lo, hi = 0, len(grid) - 1  # the answer lies in grid[lo..hi]; grid[0] when nothing fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if latency(grid[mid]) <= budget_ms:
            lo = mid
        else:
            hi = mid - 1
    return grid[lo], latency(grid[lo])


def _grid(low: float, high: float) -> list[float]:
    """Keep-ratios from `low` to `high` in KEEP_STEP steps, both ends included."""
    steps = int(round((high - low) / KEEP_STEP))
    return sorted({round(min(high, low + i * KEEP_STEP), 4) for i in range(steps + 1)} | {round(high, 4)})
