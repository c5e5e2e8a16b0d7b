"""Read and check a search run directory (the files `hadmc search` writes) into typed records the
plots and the HTML page share.

A measurement that could not be made is `None` here and "not measured" in the report, never 0.
Anything else that is missing or of the wrong type is a `ReportError` naming the file and the field.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lut_store.precision import Precision

LATENCY_KEYS = ("median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms")


class ReportError(ValueError):
    """A run directory the report cannot be built from; the message names the file and the problem."""


@dataclass(frozen=True)
class MeasuredLatency:
    """Latency statistics of one benchmark on the device (ms); a field is None when not measured."""

    median_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    std_ms: float | None
    n: int | None


@dataclass(frozen=True)
class LayerChoice:
    """One layer of a policy: keep-ratio, precision, quantization granularity."""

    layer: str
    keep_ratio: float
    precision: Precision
    granularity: str


@dataclass(frozen=True)
class EpisodeRecord:
    """One line of episodes.jsonl: a policy evaluated during the search (validation split)."""

    controller: str
    episode: int
    predicted_latency_ms: float
    val_accuracy: float
    reward: float
    params: int | None
    size_bytes: int | None
    lut_version_ids: tuple[int, ...]
    wall_s: float | None
    surrogate_reward: float | None = None  # PPO practising on a surrogate: its score before the episode


@dataclass(frozen=True)
class ModelRow:
    """One row of the summary table: the FP32 baseline or a controller's final model."""

    name: str
    val_accuracy: float | None
    test_accuracy: float | None
    test_accuracy_onnxruntime: float | None
    params: int
    fp32_size_bytes: int
    effective_size_bytes: int
    predicted_latency_ms: float
    measured: MeasuredLatency
    speedup: float | None
    reward: float | None
    episodes: int | None
    layers: tuple[LayerChoice, ...]
    onnx: str | None


@dataclass(frozen=True)
class RunData:
    """Everything the report shows, read from one run directory."""

    run_dir: Path
    model: str
    data: str
    baseline: ModelRow
    finals: tuple[ModelRow, ...]
    episodes: tuple[EpisodeRecord, ...]
    skipped_last_line: int | None  # 1-based line number of a truncated last line of episodes.jsonl
    lut_version_ids: tuple[int, ...]
    wall_s: float | None
    device: dict[str, Any] | None  # device.json, None when the file is absent
    config: Any  # config.json, None when the file is absent

    @property
    def controllers(self) -> list[str]:
        """Controller names: those with a final model first (summary order), then any seen only in episodes."""
        names = [f.name for f in self.finals]
        return names + sorted({e.controller for e in self.episodes} - set(names))


class _Doc:
    """Typed access to one JSON object, with errors that name the file and the field's path."""

    def __init__(self, doc: Any, file: Path, where: str) -> None:
        if not isinstance(doc, dict):
            raise ReportError(f"{file}: {where or 'the document'} should be a JSON object, got {_kind(doc)}")
        self.doc, self.file, self.where = doc, file, where

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _value(self, key: str, nullable: bool) -> Any:
        value = self.doc.get(key)
        if value is None and not nullable:
            raise self._absent(key)
        return value

    def maybe_number(self, key: str) -> float | None:
        """A number, or None when the field is null or absent (a measurement that was not made)."""
        value = self._value(key, True)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportError(f"{self.file}: {self._path(key)} should be a number, got {_kind(value)}")
        return float(value)

    def number(self, key: str) -> float:
        value = self.maybe_number(key)
        if value is None:
            raise self._absent(key)
        return value

    def maybe_integer(self, key: str) -> int | None:
        value = self.maybe_number(key)
        if value is None:
            return None
        if not value.is_integer():
            raise ReportError(f"{self.file}: {self._path(key)} should be an integer, got {value!r}")
        return int(value)

    def integer(self, key: str) -> int:
        value = self.maybe_integer(key)
        if value is None:
            raise self._absent(key)
        return value

    def string(self, key: str) -> str:
        value = self._value(key, False)
        if not isinstance(value, str):
            raise ReportError(f"{self.file}: {self._path(key)} should be a string, got {_kind(value)}")
        return value

    def precision(self, key: str) -> Precision:
        try:
            return Precision(self.string(key))
        except ValueError as exc:
            raise ReportError(f"{self.file}: {self._path(key)}: {exc}") from None

    def maybe_obj(self, key: str) -> _Doc | None:
        value = self._value(key, True)
        return None if value is None else _Doc(value, self.file, self._path(key))

    def obj(self, key: str) -> _Doc:
        return _Doc(self._value(key, False), self.file, self._path(key))

    def _absent(self, key: str) -> ReportError:
        what = "null" if key in self.doc else "missing"
        return ReportError(f"{self.file}: {self._path(key)} is {what}; it is required")

    def int_list(self, key: str) -> tuple[int, ...]:
        value = self._value(key, True)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ReportError(f"{self.file}: {self._path(key)} should be a list of integers, got {value!r:.80}")
        return tuple(value)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"{type(value).__name__} {value!r:.40}"
    )


def natural_key(name: str) -> list[Any]:
    """Sort key that puts "features.2" before "features.10" (run files are written with sorted keys)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _layers(policy: _Doc) -> tuple[LayerChoice, ...]:
    layers = policy.obj("layers")
    names = list(layers.doc)
    if names == sorted(names):  # written with sorted keys: the model's order is lost; "10" after "2" at least
        names.sort(key=natural_key)
    out = []
    for name in names:
        action = layers.obj(name)
        out.append(
            LayerChoice(
                name,
                action.number("keep_ratio"),
                action.precision("precision"),
                action.doc.get("granularity") if isinstance(action.doc.get("granularity"), str) else "",
            )
        )
    return tuple(out)


def _measured(doc: _Doc) -> MeasuredLatency:
    stats = doc.maybe_obj("measured_latency")
    if stats is None:
        return MeasuredLatency(None, None, None, None, None, None)
    values = {k: stats.maybe_number(k) for k in LATENCY_KEYS}
    return MeasuredLatency(**values, n=stats.maybe_integer("n"))


def _baseline(doc: _Doc) -> ModelRow:
    fp32 = doc.integer("fp32_size_bytes")
    measured = _measured(doc)
    return ModelRow(
        name="FP32 baseline",
        val_accuracy=doc.maybe_number("val_accuracy"),
        test_accuracy=doc.maybe_number("test_accuracy"),
        test_accuracy_onnxruntime=doc.maybe_number("test_accuracy_onnxruntime"),
        params=doc.integer("params"),
        fp32_size_bytes=fp32,
        effective_size_bytes=fp32,
        predicted_latency_ms=doc.number("predicted_latency_ms"),
        measured=measured,
        speedup=1.0 if measured.median_ms is not None else None,
        reward=None,
        episodes=None,
        layers=(),
        onnx=None,
    )


def _final(name: str, doc: _Doc) -> ModelRow:
    policy = doc.obj("policy")
    onnx = doc.doc.get("onnx")
    return ModelRow(
        name=name,
        val_accuracy=doc.maybe_number("val_accuracy"),
        test_accuracy=doc.maybe_number("test_accuracy"),
        test_accuracy_onnxruntime=doc.maybe_number("test_accuracy_onnxruntime"),
        params=doc.integer("params"),
        fp32_size_bytes=doc.integer("fp32_size_bytes"),
        effective_size_bytes=doc.integer("effective_size_bytes"),
        predicted_latency_ms=doc.number("predicted_latency_ms"),
        measured=_measured(doc),
        speedup=doc.maybe_number("speedup"),
        reward=doc.number("reward"),
        episodes=doc.maybe_integer("episodes"),
        layers=_layers(policy),
        onnx=onnx if isinstance(onnx, str) else None,
    )


def _read_json(path: Path, required: bool) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        if not required:
            return None
        raise ReportError(
            f"{path} is missing: this is not a finished search run directory "
            "(finish it with `hadmc search --resume --out DIR`)"
        ) from None
    except OSError as exc:
        raise ReportError(f"{path} cannot be read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from None


def read_episodes(path: Path) -> tuple[list[EpisodeRecord], int | None]:
    """The episodes and the 1-based number of a truncated last line that was skipped (None if none).

    A killed run can leave its last line half-written; that line is skipped. A bad line anywhere
    else means the file is damaged, which is an error."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ReportError(f"{path} is missing: this is not a search run directory") from None
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    episodes, skipped = [], None
    for k, (number, line) in enumerate(numbered):
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            if k == len(numbered) - 1:
                skipped = number
                break
            raise ReportError(
                f"{path}: line {number} is not valid JSON ({exc}); only the last line may be "
                "truncated (by a killed run)"
            ) from None
        row = _Doc(doc, path, f"line {number}")
        row.obj("policy")
        episodes.append(
            EpisodeRecord(
                controller=row.string("controller"),
                episode=row.integer("episode"),
                predicted_latency_ms=row.number("predicted_latency_ms"),
                val_accuracy=row.number("val_accuracy"),
                reward=row.number("reward"),
                params=row.maybe_integer("params"),
                size_bytes=row.maybe_integer("size_bytes"),
                lut_version_ids=row.int_list("lut_version_ids"),
                wall_s=row.maybe_number("wall_s"),
                surrogate_reward=row.maybe_number("surrogate_reward"),
            )
        )
    return episodes, skipped


def load_run(run_dir: Path) -> RunData:
    """Read and check summary.json, episodes.jsonl, device.json and config.json of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a directory; pass the --out directory of `hadmc search`")
    summary_path = run_dir / "summary.json"
    summary = _Doc(_read_json(summary_path, required=True), summary_path, "")
    base_doc = summary.obj("baseline")
    controllers = summary.obj("controllers")
    finals = tuple(_final(name, controllers.obj(name)) for name in controllers.doc)
    episodes, skipped = read_episodes(run_dir / "episodes.jsonl")

    device_path = run_dir / "device.json"
    device = _read_json(device_path, required=False)
    if device is not None:
        checked = _Doc(device, device_path, "")
        checked.string("fingerprint_hash")
        checked.obj("fingerprint")
    wall_s = summary.maybe_number("wall_s")
    return RunData(
        run_dir=run_dir,
        model=base_doc.string("model"),
        data=base_doc.string("data"),
        baseline=_baseline(base_doc),
        finals=finals,
        episodes=tuple(episodes),
        skipped_last_line=skipped,
        lut_version_ids=summary.int_list("lut_version_ids"),
        wall_s=wall_s if wall_s is not None and math.isfinite(wall_s) else None,
        device=device,
        config=_read_json(run_dir / "config.json", required=False),
    )
