"""A search run directory read through its typed records (host/runs.py) into the rows the plots
and the HTML page share.

A measurement that could not be made is `None` here and "not measured" in the report, never 0.
Anything else that is missing or of the wrong type is a `ReportError` naming the file and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host.compress.policy import Policy
from host.runs import (
    Agreement,
    Alternative,
    Baseline,
    DeviceRecord,
    EpisodeLog,
    EpisodeRow,
    FinalModel,
    Latency,
    RunFileError,
    SearchSummary,
    read_json,
    read_record,
)
from lut_store.precision import Precision


class ReportError(ValueError):
    """A run directory the report cannot be built from; the message names the file and the problem."""


@dataclass(frozen=True)
class MeasuredLatency:
    """Latency statistics of one benchmark on the device (ms); a field is None when not measured.
    `latency_ms` is the latency of record: the median, or the 10th percentile on an agent set to it."""

    latency_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    std_ms: float | None
    n: int | None

    @classmethod
    def of(cls, latency: Latency | None) -> MeasuredLatency:
        if latency is None:
            return cls(None, None, None, None, None, None)
        return cls(latency.record_ms, latency.p90_ms, latency.p99_ms, latency.mean_ms, latency.std_ms, latency.n)


@dataclass(frozen=True)
class LayerChoice:
    """One layer of a policy: keep-ratio, precision, quantization granularity."""

    layer: str
    keep_ratio: float
    precision: Precision
    granularity: str


@dataclass(frozen=True)
class ModelRow:
    """One row of the summary table: the FP32 baseline or a controller's final model."""

    name: str
    val_accuracy: float | None
    test_accuracy: float | None
    test_accuracy_onnxruntime: float | None
    params: int
    fp32_size_bytes: int
    effective_size_bytes: int | None  # None: not accounted (a quantizer other than hadmc's)
    file_bytes: int | None  # the exported ONNX file
    predicted_latency_ms: float | None  # None: the LUT cannot split the graph
    measured: MeasuredLatency
    speedup: float | None
    reward: float | None
    episodes: int | None
    layers: tuple[LayerChoice, ...]
    onnx: str | None
    agreement: Agreement | None = None  # against the teacher on the test split
    description: str = ""  # a one-command baseline's: what was done

    @classmethod
    def of_baseline(cls, b: Baseline) -> ModelRow:
        measured = MeasuredLatency.of(b.measured_latency)
        speedup = 1.0 if measured.latency_ms is not None else None
        return cls(
            "FP32 baseline",
            b.val_accuracy,
            b.test_accuracy,
            b.test_accuracy_onnxruntime,
            b.params,
            b.fp32_size_bytes,
            b.fp32_size_bytes,
            b.file_bytes,
            b.predicted_latency_ms,
            measured,
            speedup,
            None,
            None,
            (),
            None,
        )

    @classmethod
    def of_alternative(cls, a: Alternative) -> ModelRow:
        return cls(
            a.name,
            None,
            None,
            a.test_accuracy_onnxruntime,
            a.params,
            4 * a.params,
            None,
            a.file_bytes,
            a.predicted_latency_ms,
            MeasuredLatency.of(a.measured_latency),
            a.speedup,
            None,
            None,
            (),
            a.onnx,
            a.agreement,
            a.description,
        )

    @classmethod
    def of_final(cls, name: str, m: FinalModel) -> ModelRow:
        return cls(
            name,
            m.val_accuracy,
            m.test_accuracy,
            m.test_accuracy_onnxruntime,
            m.params,
            m.fp32_size_bytes,
            m.effective_size_bytes,
            m.file_bytes,
            m.predicted_latency_ms,
            MeasuredLatency.of(m.measured_latency),
            m.speedup,
            m.reward,
            m.episodes,
            _layers(m.policy),
            m.onnx,
            m.agreement,
        )


@dataclass(frozen=True)
class RunData:
    """Everything the report shows, read from one run directory."""

    run_dir: Path
    model: str
    data: str
    baseline: ModelRow
    finals: tuple[ModelRow, ...]
    alternatives: tuple[ModelRow, ...]  # the one-command baselines measured beside the finals
    episodes: tuple[EpisodeRow, ...]
    skipped_last_line: int | None  # 1-based line number of a truncated last line of episodes.jsonl
    lut_version_ids: tuple[int, ...]
    wall_s: float | None
    device: DeviceRecord | None  # None when device.json is absent
    config: Any  # config.json, None when the file is absent

    @property
    def controllers(self) -> list[str]:
        """Controller names: those with a final model first (summary order), then any seen only in episodes."""
        names = [f.name for f in self.finals]
        return names + sorted({e.controller for e in self.episodes} - set(names))


def _layers(policy: Policy) -> tuple[LayerChoice, ...]:
    """The policy's layers in its order (the model's execution order, as the search writes them)."""
    return tuple(LayerChoice(n, a.keep_ratio, a.precision, a.granularity) for n, a in policy.layers.items())


def load_run(run_dir: Path) -> RunData:
    """Read and check summary.json, episodes.jsonl, device.json and config.json of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a directory; pass the --out directory of `hadmc search`")
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise ReportError(
            f"{summary_path} is missing: this is not a finished search run directory "
            "(finish it with `hadmc search --resume --out DIR`)"
        )
    try:
        summary = read_record(summary_path, SearchSummary)
        episodes, skipped = EpisodeLog(run_dir / "episodes.jsonl").read()
        device = read_record(run_dir / "device.json", DeviceRecord) if (run_dir / "device.json").exists() else None
        config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else None
    except RunFileError as exc:
        raise ReportError(str(exc)) from None
    finals = tuple(ModelRow.of_final(name, m) for name, m in summary.controllers.items())
    return RunData(
        run_dir=run_dir,
        model=summary.baseline.model,
        data=summary.baseline.data,
        baseline=ModelRow.of_baseline(summary.baseline),
        finals=finals,
        alternatives=tuple(ModelRow.of_alternative(a) for a in summary.alternatives.values()),
        episodes=tuple(episodes),
        skipped_last_line=skipped,
        lut_version_ids=summary.lut_version_ids,
        wall_s=summary.wall_s if math.isfinite(summary.wall_s) else None,
        device=device,
        config=config,
    )
