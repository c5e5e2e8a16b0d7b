"""Run files as typed records, written and read by this one module: what `hadmc search`,
`hadmc compress` and `hadmc experiment` leave on disk, and what the report, the experiment
tables and `--resume` read back.

Every JSON file, and every line of episodes.jsonl, carries `"schema": SCHEMA`; a file of another
schema is a `RunFileError` that says so. Files are written atomically (a temporary file, fsync,
rename), so a killed run never leaves half a file that a resume would take for a finished step.
A measurement that could not be made is None (null on disk), never 0. Anything else missing or
of the wrong type is a `RunFileError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import threading
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from host.agent_client import Endpoint
from host.compress.policy import Policy, PolicyError
from lut_store.precision import Precision

SCHEMA = 2  # 1: the files hadmc wrote before records carried a schema
R = TypeVar("R")


class RunFileError(ValueError):
    """A run file that cannot be used; the message names the file and the field."""


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Latency statistics of one benchmark on the device, in ms (the agent's LatencyStats)."""

    median_ms: float
    mean_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    n: int
    rel_ci95: float
    stable: bool
    p10_ms: float | None = None  # None: measured by an agent older than the field
    latency_ms: float | None = None  # the agent's latency of record (None: as above, the median)

    @property
    def record_ms(self) -> float:
        """The latency of record: what speedups and comparisons use (the median, or the 10th
        percentile on an agent set to latency_statistic = "p10")."""
        return self.median_ms if self.latency_ms is None else self.latency_ms

    @classmethod
    def of(cls, stats: Any) -> Latency:
        """From a LatencyStats message."""
        return cls(
            stats.median_ms,
            stats.mean_ms,
            stats.p90_ms,
            stats.p99_ms,
            stats.std_ms,
            stats.min_ms,
            stats.max_ms,
            stats.n,
            stats.rel_ci95,
            stats.stable,
            stats.p10_ms or None,
            stats.latency_ms or None,
        )


@dataclass(frozen=True)
class Round:
    """One interleaved round: the model's and the FP32 reference's latency of record, ms."""

    model_ms: float
    baseline_ms: float


@dataclass(frozen=True)
class Baseline:
    """The FP32 teacher as exported and measured (baseline.json)."""

    model: str
    data: str
    val_accuracy: float
    test_accuracy: float
    test_accuracy_onnxruntime: float | None
    params: int
    fp32_size_bytes: int
    predicted_latency_ms: float
    measured_latency: Latency | None
    file_bytes: int | None = None  # the exported ONNX file (None in older files)


@dataclass(frozen=True)
class Agreement:
    """A final model against its teacher on the test split, both run by the device's runtime
    (host/agreement.py): per-class lists are in class order."""

    teacher_agreement: float  # share of inputs where the model predicts the teacher's class
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    teacher_recall: tuple[float, ...]
    teacher_f1: tuple[float, ...]
    chi2: float  # the two confusion matrices as two samples over (true, predicted) cells
    chi2_p_value: float
    chi2_dof: int

    @property
    def macro_f1(self) -> float:
        return sum(self.f1) / len(self.f1)

    @property
    def teacher_macro_f1(self) -> float:
        return sum(self.teacher_f1) / len(self.teacher_f1)


@dataclass(frozen=True)
class Candidate:
    """One of a controller's best episodes, fine-tuned again to choose its final model; or the
    selection floor (episode None), the unpruned network the episodes are measured against."""

    episode: int | None  # None: the selection floor, no episode
    predicted_latency_ms: float | None  # the LUT's prediction (None: not predicted)
    episode_val_accuracy: float | None  # after the episode's short fine-tune (None: the floor)
    val_accuracy: float  # after the common, longer one
    chosen: bool
    measured_latency_ms: float  # benchmarked on the device after the common fine-tune
    speedup: float  # over the FP32 model, in interleaved rounds
    val_kl: float | None = None  # KL(teacher || candidate) on the validation split after it


@dataclass(frozen=True)
class SelectionFloor:
    """The accuracy `fastest-within` measures candidates against (final/floor.json): the unpruned
    network at its fastest precisions, fine-tuned at the selection's fidelity. Exported, it is a
    candidate of every controller too: the choice when no pruned policy keeps the accuracy."""

    policy: Policy
    val_accuracy: float
    val_kl: float | None = None  # KL(teacher || it) on the validation split
    onnx: str = ""  # the exported model, relative to the run directory ("": older runs, measured again)
    predicted_latency_ms: float | None = None
    val_images: int | None = None  # the validation split it was scored on


@dataclass(frozen=True)
class FinalModel:
    """A compressed model fine-tuned, exported, verified and benchmarked in turn with the FP32
    reference (a search's final/NAME/result.json, a compress run's `compressed`)."""

    policy: Policy
    val_accuracy: float
    test_accuracy: float
    test_accuracy_onnxruntime: float | None
    params: int
    params_reduction: float
    fp32_size_bytes: int
    effective_size_bytes: int
    compression: float
    predicted_latency_ms: float
    measured_latency: Latency | None
    baseline_measured_latency: Latency | None
    speedup: float | None
    benchmark_rounds: tuple[Round, ...]
    onnx: str  # relative to the run directory
    episode: int | None = None  # the search episode whose policy this is (None: the selection floor's)
    episodes: int | None = None  # the search's budget per controller
    reward: float | None = None  # the reward of the final model (search only)
    selection: tuple[Candidate, ...] = ()  # the candidates it was chosen from (none: the best episode)
    file_bytes: int | None = None  # the exported ONNX file (None in older files)
    agreement: Agreement | None = None  # against the teacher on the test split (None: not measured)
    val_kl: float | None = None  # KL(teacher || model) on the validation split
    # HiReLC's effective parameter-storage compression ratio (host/compress/size.py; None in older files)
    storage_compression_ratio: float | None = None


@dataclass(frozen=True)
class HiReLCCycle:
    """What the hirelc controller adds to an episode (one active-learning cycle) in episodes.jsonl."""

    cycle: int
    estimator: str  # what scored the low-level agents' candidates: "logit-mse" or "surrogate"
    surrogate_accuracy: float | None  # the surrogate's accuracy for this policy before learning it
    surrogate_mae: float | None  # its mean absolute error over the cycles it predicted so far
    replay_buffer: int  # real outcomes the surrogate has learnt from
    retained_fraction: float  # Eq. (21), parameter-weighted over every kernel
    compression_ratio: float  # Eq. (22): 1 / retained_fraction
    block_targets: dict[str, float]  # the high-level agents' target fraction per block
    block_strategies: dict[str, str]
    block_fractions: dict[str, float]  # the realized fraction per block


@dataclass(frozen=True)
class EpisodeRow:
    """One line of episodes.jsonl: a policy scored during the search (validation split)."""

    controller: str
    episode: int
    policy: Policy
    predicted_latency_ms: float
    val_accuracy: float
    params: int
    size_bytes: int
    reward: float
    lut_version_ids: tuple[int, ...]
    wall_s: float
    profiled_kernels: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time
    surrogate_reward: float | None = None  # PPO's surrogate score of the policy before the episode
    surrogate_episodes_so_far: int | None = None  # PPO practice episodes so far
    val_agreement: float | None = None  # share of validation inputs where the top-1 is the teacher's
    val_kl: float | None = None  # mean KL(teacher || student) on the validation split, nats
    proposal: bool = False  # a warm start's proposal (host/search/allocate.py), not the controller's own
    hirelc: HiReLCCycle | None = None


@dataclass(frozen=True)
class EpisodeFailure:
    """One line of failures.jsonl: an episode whose evaluation failed (its Ray task retried once
    and failed again); it has no line in episodes.jsonl and the controller learnt nothing from it."""

    controller: str
    episode: int
    policy: Policy
    reason: str


@dataclass(frozen=True)
class PrecisionSupport:
    precision: str
    supported: bool
    note: str


@dataclass(frozen=True)
class DeviceRecord:
    """The device a run measured on (device.json)."""

    fingerprint_hash: str
    fingerprint: dict[str, Any]
    precisions: tuple[PrecisionSupport, ...]
    address: str  # "embedded" for an agent started by the run
    endpoint: Endpoint | None = None  # how it was named and reached (None in files of older runs)


@dataclass(frozen=True)
class LutPrior:
    """What the LUT ruled out before the first episode (prior.json): per layer, the precisions
    dominated there on the reward's terms."""

    dropped: dict[str, list[str]]


@dataclass(frozen=True)
class LutSpace:
    """The part of the search space read off the LUT at the start (space.json): each layer's share
    of the FP32 latency and, with the LUT prior, its allowed precisions and speed features. A
    resumed search reads it back: the controllers it restores go on in the space they were
    checkpointed in, even when the LUT has changed since (a nightly re-profile, a drift re-profile)."""

    layers: tuple[str, ...]
    precisions: tuple[Precision, ...]
    latency_share: tuple[float, ...]
    allowed: tuple[tuple[Precision, ...], ...]
    speed: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Alternative:
    """What a user gets in one command without hadmc (host/search/alternatives.py), verified and
    benchmarked in turn with the FP32 reference like a final model."""

    name: str  # "ort-ptq", "uniform+ptq"
    description: str  # what was done, with the numbers that chose it
    keep_ratio: float  # every prunable layer's (1.0: not pruned)
    test_accuracy_onnxruntime: float
    params: int
    file_bytes: int
    predicted_latency_ms: float | None  # None: the LUT cannot split this graph (`prediction_error` says why)
    measured_latency: Latency
    baseline_measured_latency: Latency
    speedup: float
    benchmark_rounds: tuple[Round, ...]
    onnx: str  # relative to the run directory
    agreement: Agreement
    prediction_error: str = ""


@dataclass(frozen=True)
class SearchSummary:
    """A finished search (summary.json)."""

    baseline: Baseline
    controllers: dict[str, FinalModel]
    lut_version_ids: tuple[int, ...]
    wall_s: float
    episodes: int
    alternatives: dict[str, Alternative] = field(default_factory=dict)  # the one-command baselines


@dataclass(frozen=True)
class CompressSummary:
    """A finished `hadmc compress` (summary.json): the policy's model against the FP32 teacher."""

    model: str
    data: str
    baseline_cached: bool
    baseline: Baseline
    compressed: FinalModel
    baseline_onnx: str
    distill_loss: tuple[float, ...]
    seconds: dict[str, float]
    layers_per_precision: dict[str, int]
    device: Endpoint | None = None  # how the device was named and reached (None in older files)


# --- reading and writing ----------------------------------------------------------------------


def to_doc(record: Any) -> dict[str, Any]:
    """The record as a JSON document, schema first (policies keep their layers' order)."""
    return {"schema": SCHEMA, **dataclasses.asdict(record)}


def write_record(path: Path, record: Any) -> None:
    write_json(path, to_doc(record))


def write_json(path: Path, doc: Any) -> None:
    """Atomically: the old file or the new one, never half of either."""
    write_bytes(path, json.dumps(doc, indent=2).encode())


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically and durably: the old file or the new one, fsynced before it replaces the old.
    A write that fails (a full disk) leaves the old file and no temporary one behind. Writers of
    one path in several processes (parallel seeds caching one teacher) each use their own
    temporary file: the last rename wins, whole."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        kept = "the previous one is intact" if path.exists() else "nothing was written"
        raise RunFileError(f"cannot write {path}: {exc.strerror or exc}; {kept}") from None


def read_json(path: Path) -> Any:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise RunFileError(f"{path} is missing") from None
    except OSError as exc:
        raise RunFileError(f"{path} cannot be read: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunFileError(f"{path} is not valid JSON: {exc}") from None


def check_schema(doc: Any, where: str) -> None:
    """`doc` is a JSON object of this hadmc's schema."""
    if not isinstance(doc, dict):
        raise RunFileError(f"{where} should be a JSON object, got {_kind(doc)}")
    schema = doc.get("schema", 1)
    if schema != SCHEMA:
        raise RunFileError(
            f"{where} has run-file schema {schema!r}; this hadmc reads schema {SCHEMA}: it was written by "
            "another hadmc version (rerun it, or read it with the version that wrote it)"
        )


def from_doc(cls: type[R], doc: Any, where: str) -> R:
    """A record of `cls` from a JSON document of this schema; errors name `where` and the field."""
    check_schema(doc, where)
    return _build(cls, {k: v for k, v in doc.items() if k != "schema"}, where, "")


def read_record(path: Path, cls: type[R]) -> R:
    return from_doc(cls, read_json(path), str(path))


def write_config(path: Path, config: Any) -> None:
    """A run's resolved config (a TOML config dataclass), so that `--resume` and reports see it."""
    write_json(path, {"schema": SCHEMA, **dataclasses.asdict(config)})


def read_config(path: Path, cls: type[R]) -> R:
    """A config written by `write_config`; ConfigError names the key that does not fit `cls`."""
    from lut_store.tomlfile import from_mapping

    doc = read_json(path)
    check_schema(doc, str(path))
    return from_mapping(cls, {k: v for k, v in doc.items() if k != "schema"})


class EpisodeLog(typing.Generic[R]):
    """episodes.jsonl (or failures.jsonl, with `record=EpisodeFailure`): one record a line,
    appended and fsynced before the controller's checkpoint that accounts for it is written."""

    def __init__(self, path: Path, record: type[R] = EpisodeRow) -> None:
        self.path = path
        self.record = record

    def read(self) -> tuple[list[R], int | None]:
        """The rows, and the 1-based number of a truncated last line that was skipped (a run
        killed mid-write) or None. A bad line anywhere else is an error: the file is damaged."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            raise RunFileError(f"{self.path} is missing: this is not a search run directory") from None
        numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
        rows: list[R] = []
        for k, (number, line) in enumerate(numbered):
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                if k == len(numbered) - 1:
                    return rows, number
                raise RunFileError(
                    f"{self.path}: line {number} is not valid JSON ({exc}); only the last line may be "
                    "truncated (by a killed run)"
                ) from None
            rows.append(from_doc(self.record, doc, f"{self.path}: line {number}"))
        return rows, None

    def keep(self, done: Mapping[str, int]) -> list[R]:
        """Keep the episodes the controllers' checkpoints account for (`done`: controller ->
        episodes checkpointed); a later or torn line goes. The file is rewritten atomically."""
        rows = [r for r in self.read()[0] if r.episode < done.get(r.controller, 0)] if self.path.exists() else []
        _write_lines(self.path, [to_doc(r) for r in rows])
        return rows

    def append(self, row: R) -> None:
        """One whole line or none: a failed append (a full disk) is cut back off the file."""
        data = memoryview((json.dumps(to_doc(row)) + "\n").encode())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except OSError as exc:
                os.ftruncate(fd, start)
                raise RunFileError(
                    f"cannot append episode {row.episode} of {row.controller} to {self.path}: "
                    f"{exc.strerror or exc}; the episodes before it are intact"
                ) from None
        finally:
            os.close(fd)


def _write_lines(path: Path, docs: list[Any]) -> None:
    write_bytes(path, "".join(json.dumps(d) + "\n" for d in docs).encode())


# --- the typed reader ---------------------------------------------------------------------------


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), f"{type(value).__name__} {value!r:.40}")


def _fail(where: str, path: str, what: str, value: Any) -> RunFileError:
    return RunFileError(f"{where}: {path or 'the document'} should be {what}, got {_kind(value)}")


def _build(tp: Any, value: Any, where: str, path: str) -> Any:
    """`value` checked against type `tp` (dataclasses built field by field)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _build(next(a for a in typing.get_args(tp) if a is not type(None)), value, where, path)
    if value is None and tp is not Any:
        raise RunFileError(f"{where}: {path} is null; it is required")
    if tp is Policy:
        return _policy(value, where, path)
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, where, path)
    if origin in (tuple, list):
        return _sequence(tp, value, where, path)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise _fail(where, path, "an object", value)
        item = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        return {str(k): _build(item, v, where, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _fail(where, path, f"one of {[m.value for m in tp]}", value) from None
    return _scalar(tp, value, where, path)


def _scalar(tp: Any, value: Any, where: str, path: str) -> Any:
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, path, "a number", value)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise _fail(where, path, "an integer", value)
        return int(value)
    if tp in (str, bool) and type(value) is not tp:
        raise _fail(where, path, "a string" if tp is str else "a boolean", value)
    return value


def _sequence(tp: Any, value: Any, where: str, path: str) -> Any:
    if not isinstance(value, list):
        raise _fail(where, path, "a list", value)
    args = typing.get_args(tp)
    item = args[0] if args else Any
    items = [_build(item, v, where, f"{path}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if typing.get_origin(tp) is tuple else items


def _dataclass(cls: Any, value: Any, where: str, path: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(where, path, "an object", value)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in value:
            optional = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if optional:
                continue
            raise RunFileError(f"{where}: {sub} is missing; it is required")
        kwargs[f.name] = _build(hints[f.name], value[f.name], where, sub)
    return cls(**kwargs)


def _policy(value: Any, where: str, path: str) -> Policy:
    try:
        return Policy.from_json(json.dumps(value))
    except PolicyError as exc:
        raise RunFileError(f"{where}: {path}: {exc}") from None
