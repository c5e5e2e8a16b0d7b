"""Keeping the device's LUT fresh: re-profile daily, after a missed run and after a fingerprint
change (driver, runtime, provider...), into a new version whose parent is the previous one.

A run re-measures the isolated keys of the previous version (and the configured grids) and the
models registered for the device in the store (the final models and FP32 baselines of searches
and compressions), each in context with a per-kernel benchmark, so the in-model entries a search
reads are fresh too; sealing carries forward whatever else the latest version held. After a
fingerprint change the models registered under the previous fingerprint are measured into the
new fingerprint's first version, so the next search on the updated device finds a full LUT.

The last run is remembered in a small JSON state file: the store, the version made and the
fingerprint it was made under. At start the agent compares that fingerprint with its current
one and checks whether a scheduled run was missed while the machine was off. Alternatively,
leave `at` empty and call `hadmc agent reprofile --now` from a systemd timer.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from device_agent.config import AgentConfig, NightlyConfig
from device_agent.jobs import CANCELLED, BenchmarkJob, JobError
from device_agent.profiling import profile_one, resolve_settings
from device_agent.runner import MeasurementRunner
from lut_store.build import BuildPlan, BuildReport, build_lut
from lut_store.exchange import diff_versions
from lut_store.fingerprint import differences, document
from lut_store.interface import LutStore
from lut_store.keys.grid import load_grid
from lut_store.opkey import OpKey
from lut_store.precision import device_precisions
from lut_store.records import RegisteredModel, StoreError, UnknownVersion
from lut_store.store import open_store
from protos.hadmc.v1 import agent_pb2, common_pb2

log = structlog.get_logger(__name__)


class NothingToReprofile(StoreError):
    """No earlier version, no grid and no registered model: nothing to keep fresh."""


@dataclass(frozen=True)
class State:
    store_url: str
    version_id: int
    fingerprint_hash: str
    fingerprint: dict[str, Any]
    last_run_unix_s: float


def default_state_file() -> Path:
    home = os.environ.get("HADMC_HOME")
    base = Path(home) if home else Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "hadmc"
    return base / "nightly.json"


def read_state(path: Path) -> State | None:
    try:
        return State(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("nightly.state_unreadable", path=str(path), error=str(exc))
        return None


def write_state(path: Path, state: State) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # only the agent's user reads it
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(state.__dict__, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)  # a file left by an older agent keeps its mode through O_TRUNC
    tmp.replace(path)


def last_scheduled(at: str, now: dt.datetime) -> dt.datetime:
    """The most recent scheduled time at or before `now` (local time)."""
    hour, minute = (int(x) for x in at.split(":"))
    today = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return today if today <= now else today - dt.timedelta(days=1)


class LocalProfiler:
    """Profiles and benchmarks through the daemon's own job queue, as its Profile and Benchmark
    RPCs do (the Profiler protocol of lut_store.build)."""

    def __init__(self, runner: MeasurementRunner, config: AgentConfig, stop: threading.Event) -> None:
        self._runner, self._config, self._stop = runner, config, stop

    def profile(
        self,
        keys: Sequence[OpKey],
        settings: common_pb2.MeasurementSettings | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[agent_pb2.ProfileResult]:
        resolved = resolve_settings(settings or common_pb2.MeasurementSettings(), self._config.profile)
        with self._runner.slot(self._active):
            for index, key in enumerate(keys):
                try:
                    yield profile_one(
                        self._runner, index, key.to_proto(), resolved, self._config.key_timeout_s, self._active
                    )
                except JobError as exc:
                    if exc.code == CANCELLED:
                        return
                    raise

    def benchmark(self, model: bytes, batch_size: int = 0, *, per_kernel: bool = False) -> agent_pb2.BenchmarkResponse:
        """One benchmark of `model` with the agent's benchmark settings (those a Benchmark call
        without settings gets); JobError naming the job's code when it cannot be made."""
        settings = resolve_settings(common_pb2.MeasurementSettings(), self._config.benchmark)
        with tempfile.TemporaryDirectory(prefix="hadmc-nightly-", dir=self._runner.tmp_dir) as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(model)
            job = BenchmarkJob(str(path), batch_size, settings, per_kernel=per_kernel)
            try:
                with self._runner.slot(self._active):
                    reply = self._runner.call(job, self._config.job_timeout_s, self._active)
            except JobError as exc:
                raise JobError(exc.code, f"{exc.code}: {exc}") from None
        return agent_pb2.BenchmarkResponse.FromString(reply)

    def _active(self) -> bool:
        return not self._stop.is_set()


class Nightly:
    """The re-profiling schedule of one agent."""

    def __init__(
        self,
        config: AgentConfig,
        runner: MeasurementRunner,
        info: agent_pb2.DeviceInfo,
        clock: Callable[[], dt.datetime] = dt.datetime.now,
    ) -> None:
        self.config: NightlyConfig = config.nightly
        self._agent_config = config
        self._runner = runner
        self._info = info
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.state_file = self.config.state_file or default_state_file()

    def _open_store(self) -> LutStore:
        if not self.config.store:
            raise StoreError("no LUT store configured for re-profiling: set [nightly] store in the agent config")
        token = Path(self.config.store_token_file).read_text().strip() if self.config.store_token_file else None
        ca = Path(self.config.store_tls_ca).read_bytes() if self.config.store_tls_ca else None
        return open_store(self.config.store, token=token, tls_ca=ca)

    def due_at_start(self) -> str | None:
        """Why a run is due now that the agent starts, or None."""
        state = read_state(self.state_file)
        if state is None:
            return "first start with re-profiling configured" if self.config.grids else None
        if state.fingerprint_hash != self._info.fingerprint_hash:
            changed = differences(state.fingerprint, document(self._info.fingerprint))
            return "fingerprint changed: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        if self.config.at:
            missed = last_scheduled(self.config.at, self._clock())
            if state.last_run_unix_s < missed.timestamp():
                return f"missed the run scheduled at {missed.isoformat(timespec='minutes')}"
        return None

    def _previous(self, store: LutStore, state: State | None) -> int | None:
        """The last version this agent made, when it is in this store."""
        if state is None or state.store_url != store.shown_url:
            return None
        try:
            return store.version(state.version_id).id
        except UnknownVersion:
            return None

    def _keys(self, store: LutStore, state: State | None) -> tuple[list[OpKey], int | None]:
        """The isolated keys to re-profile, and the new version's parent: the latest sealed version
        of this fingerprint (whoever made it, it holds everything sealed for the device), else the
        last version this agent made (under its previous fingerprint). The keys come from both, and
        from the grids; in-model keys are re-measured inside the registered models."""
        previous = self._previous(store, state)
        try:
            parent: int | None = store.latest(self._info.fingerprint_hash).id
        except StoreError:
            parent = previous
        keys: dict[str, OpKey] = {}
        for version_id in dict.fromkeys(v for v in (parent, previous) if v is not None):
            for entry in store.entries(version_id):
                key = OpKey.from_json(entry.key_json)
                if key.context == "isolated":
                    keys.setdefault(key.hash, key)
        precisions = device_precisions(self._info)
        for grid in self.config.grids:
            for key in load_grid(Path(grid), precisions):
                keys.setdefault(key.hash, key)
        return list(keys.values()), parent

    def _models(self, store: LutStore, state: State | None) -> list[RegisteredModel]:
        """The models to measure in context: those registered for this device, and after a
        fingerprint change those registered under the previous fingerprint too; most recently
        used first."""
        models = {(m.model_sha256, m.batch_size): m for m in store.registered_models(self._info.fingerprint_hash)}
        if (
            state is not None
            and state.store_url == store.shown_url
            and state.fingerprint_hash != self._info.fingerprint_hash
        ):
            for m in store.registered_models(state.fingerprint_hash):
                models.setdefault((m.model_sha256, m.batch_size), m)
        return sorted(models.values(), key=lambda m: -m.last_used_unix_s)

    def run_once(self, reason: str) -> tuple[BuildReport, agent_pb2.ReprofileResponse]:
        """Re-profile now; one run at a time."""
        with self._lock, self._open_store() as store:
            state = read_state(self.state_file)
            keys, parent = self._keys(store, state)
            models = self._models(store, state)
            if not keys and not models:
                raise NothingToReprofile(
                    "nothing to re-profile: no earlier LUT version of this device, no registered model in "
                    f"{store.shown_url} and no [nightly] grids"
                )
            log.info(
                "nightly.start",
                reason=reason,
                keys=len(keys),
                models=len(models),
                parent=parent,
                store=store.shown_url,
            )
            report = build_lut(
                store,
                self._info.fingerprint_hash,
                document(self._info.fingerprint),
                keys,
                [LocalProfiler(self._runner, self._agent_config, self._stop)],
                BuildPlan(
                    source="nightly",
                    note=reason,
                    parent_id=parent,
                    lease_s=self.config.lease_s,
                    model_passes=self.config.model_passes,
                ),
                models=models,
            )
            response = _response(report, store.shown_url, reason, parent)
            if report.sealed:
                write_state(
                    self.state_file,
                    State(
                        store.shown_url,  # the state file never holds the store's password
                        report.version_id,
                        self._info.fingerprint_hash,
                        document(self._info.fingerprint),
                        time.time(),
                    ),
                )
                if parent is not None:
                    _add_drift(response, store, parent, report.version_id)
            else:
                log.warning("nightly.incomplete", version=report.version_id, missing=len(report.missing))
            return report, response

    def _run_logged(self, reason: str) -> None:
        """One scheduled run; a failure is logged and the schedule goes on (tomorrow's run still
        happens: the thread must not die of one bad grid or one bug)."""
        try:
            self.run_once(reason)
        except (StoreError, OSError, ValueError) as exc:
            log.error("nightly.failed", reason=reason, error=str(exc))
        except Exception as exc:  # anything else is a bug: logged with its traceback, never silent
            log.exception("nightly.crashed", reason=reason, error=f"{type(exc).__name__}: {exc}")

    def _loop(self) -> None:
        reason = self.due_at_start()
        if reason:
            self._run_logged(reason)
        while self.config.at and not self._stop.is_set():
            now = self._clock()
            following = last_scheduled(self.config.at, now) + dt.timedelta(days=1)
            if self._stop.wait(max(1.0, (following - now).total_seconds())):
                return
            self._run_logged(f"scheduled run at {self.config.at}")

    def start(self) -> None:
        if not self.config.store:
            return
        self._thread = threading.Thread(target=self._loop, name="nightly", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _response(report: BuildReport, store_url: str, reason: str, parent: int | None) -> agent_pb2.ReprofileResponse:
    response = agent_pb2.ReprofileResponse(
        version_id=report.version_id,
        sealed=report.sealed,
        keys_total=report.keys_total,
        measured_ok=report.measured_ok + report.already_stored,
        unsupported=report.unsupported,
        failed=report.failed,
        missing=len(report.missing),
        store_url=store_url,
        reason=reason,
        models_measured=report.models_measured,
        in_model_keys=report.in_model_keys,
        skipped_models=[
            agent_pb2.SkippedModel(name=m.name, model_sha256=m.model_sha256, reason=m.reason)
            for m in report.skipped_models
        ],
        carried_forward=report.carried_forward,
    )
    if parent is not None:
        response.parent_version_id = parent
    return response


def _add_drift(response: agent_pb2.ReprofileResponse, store: LutStore, parent: int, version_id: int) -> None:
    """The new version against its parent: ratios over the keys re-measured (in-model ones
    included) and the registered models whose predicted latency moved most."""
    drift = diff_versions(store, parent, version_id, top=5)
    for name in ("median_ratio", "p5_ratio", "p95_ratio"):
        value = getattr(drift, name)
        if value is not None:
            setattr(response, f"drift_{name}", value)
    for c in drift.models:
        response.model_drift.add(
            name=c.name, model_sha256=c.model_sha256, parent_ms=c.predicted_a_ms, new_ms=c.predicted_b_ms, ratio=c.ratio
        )
    log.info(
        "nightly.drift",
        parent=parent,
        version=version_id,
        keys=drift.common,
        in_model_keys=drift.in_model,
        carried=drift.carried,
        median_ratio=drift.median_ratio,
        p5_ratio=drift.p5_ratio,
        p95_ratio=drift.p95_ratio,
        most_changed=[f"{c.kernel} x{c.ratio:.3f}" for c in drift.most_changed[:5]],
        models=[f"{c.name} x{c.ratio:.3f}" for c in drift.models],
    )
