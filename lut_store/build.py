"""Building a LUT version: profile keys on one or more devices of one fingerprint, measure
registered models in context (in `model_passes` passes between the keys, each model keeping its
fastest), write the results into the builder's own open version as they arrive, seal when every
key is measured.

Each builder holds its own open version under a lease that a background thread renews
(`LeaseKeeper`), so builders, nightly runs and searches of one fingerprint never wait for each
other; sealing takes in what the latest sealed version has and the new one lacks (see
lut_store/interface.py). A crashed build leaves its open version behind; the next build of the
same source and parent resumes it (its lease expired, or its holder is a dead process of this
host) and measures only what is missing. Keys whose measurement failed for a passing reason (the
agent went away, a timeout, a busy device) are retried, and never written: a version with such
keys stays open, its lease released for the rerun, so it is never sealed half-built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from google.protobuf import json_format

from lut_store.interface import LutStore
from lut_store.opkey import OpKey
from lut_store.records import Build, Entry, LeaseLost, RegisteredModel, StoreError, UnknownModel
from protos.hadmc.v1 import agent_pb2, common_pb2

log = structlog.get_logger(__name__)

# KeyError codes that say nothing about the key itself: measure again later.
_TRANSIENT_CODES = frozenset({agent_pb2.KeyError.CODE_TIMEOUT, agent_pb2.KeyError.CODE_INTERFERENCE})


class Profiler(Protocol):
    """One device that profiles keys, and benchmarks models kernel by kernel for the registered
    models of a build (host.agent_client.AgentClient fits)."""

    def profile(
        self, keys: Sequence[OpKey], settings: Any = None, timeout_s: float | None = None
    ) -> Iterator[agent_pb2.ProfileResult]: ...

    def benchmark(
        self, model: bytes, batch_size: int = 0, *, per_kernel: bool = False
    ) -> agent_pb2.BenchmarkResponse: ...


@dataclass(frozen=True)
class ModelSkip:
    """A registered model a build could not measure, and why."""

    name: str
    model_sha256: str
    reason: str


@dataclass(frozen=True)
class BuildReport:
    version_id: int
    resumed: bool
    keys_total: int
    already_stored: int
    measured_ok: int
    unsupported: int
    failed: int
    # key hash -> reason, for keys still unmeasured (passing failures); the version stays open
    missing: dict[str, str] = field(default_factory=dict)
    sealed: bool = False
    elapsed_s: float = 0.0
    models_measured: int = 0
    in_model_keys: int = 0  # distinct in-model keys the model measurements stored
    skipped_models: tuple[ModelSkip, ...] = ()
    carried_forward: int = 0  # entries the seal took in from the latest sealed version


def default_owner() -> str:
    """Builders are named host:pid, so a crashed one on this host can be recognised."""
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_dead(owner: str) -> bool:
    """Whether `owner` (host:pid) is a process of this host that no longer runs."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def acquire(
    store: LutStore,
    fingerprint_hash: str,
    source: str,
    owner: str,
    lease_s: float,
    settings: Mapping[str, Any] | None = None,
    note: str = "",
    parent_id: int | None = None,
) -> Build:
    """store.acquire_build, taking over at once an open version of the same source whose holder
    is a dead process of this host (the store resumes it only for the same parent)."""
    dead = next(
        (
            v
            for v in store.versions(fingerprint_hash)
            if v.status == "open"
            and v.source == source
            and v.lease_owner not in (None, owner)
            and (parent_id is None or v.parent_id == parent_id)
            and holder_is_dead(v.lease_owner)
        ),
        None,
    )
    holder = dead.lease_owner if dead is not None else None
    build = store.acquire_build(
        fingerprint_hash, source, owner, lease_s, settings, note, parent_id, take_over_from=holder
    )
    if dead is not None and build.version.id == dead.id:
        log.warning("lut.build.takeover", version=dead.id, holder=holder, reason="its process is gone from this host")
    return build


class LeaseKeeper:
    """Renews a holder's lease from a background thread every `lease_s` / 3, so a holder busy
    elsewhere for longer than its lease (training between predictions, a long benchmark) keeps
    its version. A lost lease ends it (the holder's next write raises LeaseLost); a store that
    does not answer is tried again on the next tick."""

    def __init__(self, store: LutStore, version_id: int, owner: str, lease_s: float) -> None:
        self.store, self.version_id, self.owner, self.lease_s = store, version_id, owner, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{version_id}", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.store.renew_lease(self.version_id, self.owner, self.lease_s)
            except LeaseLost as exc:
                log.error("lut.lease_lost", version=self.version_id, owner=self.owner, error=str(exc))
                return
            except StoreError as exc:
                log.warning("lut.lease_renewal_failed", version=self.version_id, error=str(exc))

    def stop(self, release: bool = False) -> None:
        """Stop renewing; with `release`, let the lease go now, so that the next holder of the same
        source and parent resumes the version at once (a release the store does not take is
        logged: the lease then runs out by itself)."""
        self._stop.set()
        self._thread.join(timeout=30)
        if release:
            try:
                self.store.renew_lease(self.version_id, self.owner, 0.0)
            except StoreError as exc:
                log.warning("lut.lease_release_failed", version=self.version_id, error=str(exc))


def entry_from_stats(
    key: OpKey,
    stats: common_pb2.LatencyStats,
    environment: common_pb2.MeasurementEnvironment,
    extra_settings: Mapping[str, Any] | None = None,
) -> Entry:
    """The stored form of a measured latency: the stats an entry has columns for in columns; the
    rest of them, the measurement settings in force and `extra_settings` (how it was measured)
    in its settings document; the device's state as its environment."""
    env = json_format.MessageToDict(environment, preserving_proto_field_name=True)
    settings = json_format.MessageToDict(stats.settings, preserving_proto_field_name=True)
    settings.update(
        latency_ms=stats.latency_ms,
        p10_ms=stats.p10_ms,
        p90_ms=stats.p90_ms,
        p99_ms=stats.p99_ms,
        max_ms=stats.max_ms,
        rel_ci95=stats.rel_ci95,
        stable=stats.stable,
        attempts=stats.attempts,
        other_cpu_cores=stats.other_cpu_cores,
    )
    settings.update(extra_settings or {})
    return Entry(
        key.hash,
        key.canonical_json(),
        "ok",
        env.get("measured_at_unix_s", time.time()),
        median_ms=stats.median_ms,
        mean_ms=stats.mean_ms,
        p90_ms=stats.p90_ms,
        std_ms=stats.std_ms,
        min_ms=stats.min_ms,
        n=stats.n,
        settings=settings,
        environment=env,
    )


@dataclass(frozen=True)
class InModelProfile:
    """A model's kernels as one Benchmark with per_kernel measured them: an entry per distinct
    in-model key ('elided' for a kernel the runtime ran no node of), and every kernel's key hash
    in graph order, repeats included."""

    entries: dict[str, Entry]
    kernels: tuple[str, ...]


def in_model_entries(resp: agent_pb2.BenchmarkResponse) -> InModelProfile:
    """The stored form of a per-kernel benchmark: every kernel's latency inside the whole model,
    with how it was measured. The one conversion the predictor and re-profiling share."""
    entries: dict[str, Entry] = {}
    for item in resp.kernel_profile.kernels:
        key = OpKey.from_proto(item.key)
        if key.hash in entries and (entries[key.hash].status == "ok" or not item.HasField("latency")):
            continue  # a repeated kernel keeps its first measured occurrence
        how = {
            "method": "in-model",
            "model_sha256": resp.model.sha256,
            "scale": resp.kernel_profile.scale,
            "profiled_runs": resp.kernel_profile.runs,
            "runtime_nodes": list(item.runtime_nodes),
            "below_resolution": item.below_resolution,
        }
        if item.HasField("latency"):
            entries[key.hash] = entry_from_stats(key, item.latency, resp.environment, how)
            continue
        env = json_format.MessageToDict(resp.environment, preserving_proto_field_name=True)
        reason = f"the runtime ran no node of it inside model {resp.model.sha256[:16]}: 0 ms there"
        entries[key.hash] = Entry(
            key.hash,
            key.canonical_json(),
            "elided",
            env.get("measured_at_unix_s", time.time()),
            settings=how,
            environment=env,
            reason=reason,
        )
    return InModelProfile(entries, tuple(OpKey.from_proto(item.key).hash for item in resp.kernel_profile.kernels))


def entry_from_result(key: OpKey, result: agent_pb2.ProfileResult) -> Entry | None:
    """The stored form of one profile result; None for a passing failure (not stored)."""
    if result.WhichOneof("outcome") == "stats":
        return entry_from_stats(key, result.stats, result.environment)
    code = result.error.code
    if code in _TRANSIENT_CODES:
        return None
    status = "unsupported" if code == agent_pb2.KeyError.CODE_UNSUPPORTED else "failed"
    name = agent_pb2.KeyError.Code.Name(code)
    return Entry(key.hash, key.canonical_json(), status, time.time(), reason=f"{name}: {result.error.message}")


@dataclass(frozen=True)
class BuildPlan:
    """How a build runs: the version it writes (`source`, `note`, `parent_id`; None: the latest
    sealed one) and under which lease, how keys are measured (`settings`: a
    MeasurementSettings, None for the devices' defaults; `chunk_keys` per Profile call), and how
    often passing failures are retried, `retry_wait_s` apart."""

    source: str = "manual"
    note: str = ""
    parent_id: int | None = None
    owner: str = field(default_factory=default_owner)
    lease_s: float = 120.0
    settings: Any = None
    chunk_keys: int = 32
    retries: int = 3
    retry_wait_s: float = 5.0
    # Registered models are measured this many times, spread over the build; each keeps its
    # fastest pass (a CPU shared with other tenants slows single measurements for minutes).
    model_passes: int = 1

    def __post_init__(self) -> None:
        if self.model_passes < 1:
            raise ValueError(f"model_passes = {self.model_passes}: at least one pass measures the models")


class _Progress:
    def __init__(self, total: int, callback: Callable[[int, int], None] | None) -> None:
        self.total, self.done, self._cb, self._lock = total, 0, callback, threading.Lock()

    def step(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if self._cb:
                self._cb(self.done, self.total)


class _Writer:
    """Writes a build's entries as they arrive, from any profiler's thread, while its lease
    holds; counts them by status."""

    def __init__(self, store: LutStore, version_id: int, plan: BuildPlan, progress: _Progress) -> None:
        self.store, self.version_id, self.plan, self.progress = store, version_id, plan, progress
        self.counts = {"ok": 0, "unsupported": 0, "failed": 0}
        self._lock = threading.Lock()

    def write(self, entry: Entry) -> None:
        with self._lock:
            self.store.add_entries(self.version_id, [entry], self.plan.owner)
            self.counts[entry.status] += 1
        self.progress.step()

    def write_model(self, entries: Sequence[Entry]) -> None:
        """A model's entries, in one transaction: all of them or none."""
        with self._lock:
            self.store.add_entries(self.version_id, entries, self.plan.owner)


def _profile_chunk(profiler: Profiler, chunk: Sequence[OpKey], writer: _Writer, missing: dict[str, str]) -> None:
    """Profile one chunk; store each result as soon as it arrives; name each key left
    unmeasured in `missing`, with the reason."""
    seen: set[str] = set()
    timeout_s = max(600.0, 60.0 * len(chunk))
    stream = iter(profiler.profile(chunk, settings=writer.plan.settings, timeout_s=timeout_s))
    while True:
        try:
            result = next(stream)
        except StopIteration:
            return
        except Exception as exc:  # the device went away mid-chunk: the rest is missing
            for k in chunk:
                if k.hash not in seen:
                    missing[k.hash] = f"device error: {exc}"
            return
        key = chunk[result.index]
        seen.add(key.hash)
        entry = entry_from_result(key, result)
        if entry is None:
            missing[key.hash] = f"{agent_pb2.KeyError.Code.Name(result.error.code)}: {result.error.message}"
        else:
            writer.write(entry)


def _measure_round(profilers: Sequence[Profiler], todo: Sequence[OpKey], writer: _Writer) -> dict[str, str]:
    """Split the keys between the profilers, one thread each; return the keys left unmeasured,
    with reasons. A store failure in any thread ends the build (raised here)."""
    shares = [todo[i :: len(profilers)] for i in range(len(profilers))]
    missing: list[dict[str, str]] = [{} for _ in profilers]
    errors: list[BaseException] = []

    def run(profiler: Profiler, share: Sequence[OpKey], missing_here: dict[str, str]) -> None:
        try:
            for start in range(0, len(share), writer.plan.chunk_keys):
                _profile_chunk(profiler, share[start : start + writer.plan.chunk_keys], writer, missing_here)
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(p, s, m), daemon=True)
        for p, s, m in zip(profilers, shares, missing, strict=True)
        if s
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {k: v for m in missing for k, v in m.items()}


def _measure(profilers: Sequence[Profiler], todo: Sequence[OpKey], writer: _Writer) -> dict[str, str]:
    """Rounds of measuring until no key is missing or the retries are spent; the keys still
    missing, with reasons."""
    missing: dict[str, str] = {}
    for attempt in range(writer.plan.retries + 1):
        missing = _measure_round(profilers, todo, writer)
        if not missing:
            break
        todo = [k for k in todo if k.hash in missing]
        if attempt < writer.plan.retries:
            log.warning(
                "lut.build.retry",
                version=writer.version_id,
                keys=len(todo),
                wait_s=writer.plan.retry_wait_s,
                example=next(iter(missing.values())),
            )
            time.sleep(writer.plan.retry_wait_s)
    return missing


class _UnusableBytes(Exception):
    """A registered model's stored bytes that cannot be measured; the message says why."""


def _model_bytes(store: LutStore, model: RegisteredModel) -> bytes:
    try:
        onnx = store.model_bytes(model.model_sha256)
    except UnknownModel as exc:
        raise _UnusableBytes(f"its bytes are gone from the store: {exc}") from None
    if hashlib.sha256(onnx).hexdigest() != model.model_sha256:
        raise _UnusableBytes("its stored bytes no longer match its sha256: damaged")
    return onnx


def _profile_model(
    profiler: Profiler, model: RegisteredModel, onnx: bytes, fingerprint_hash: str
) -> tuple[InModelProfile, float]:
    """One per-kernel benchmark of a registered model, and the model's latency of record in it (ms);
    raises (anything) when it cannot be made."""
    resp = profiler.benchmark(onnx, batch_size=model.batch_size, per_kernel=True)
    if resp.fingerprint_hash and resp.fingerprint_hash != fingerprint_hash:
        raise ValueError(f"the device's fingerprint is now {resp.fingerprint_hash[:16]}, not {fingerprint_hash[:16]}")
    if not resp.kernel_profile.kernels:
        raise ValueError("the device returned no per-kernel profile")
    return in_model_entries(resp), resp.latency.latency_ms or resp.latency.median_ms  # older agents: median


@dataclass
class _ModelsMeasured:
    count: int = 0
    keys: set[str] = field(default_factory=set)
    skipped: list[ModelSkip] = field(default_factory=list)


class _ModelPasses:
    """Registered models measured kernel by kernel in passes (round robin over the profilers); each
    model keeps the entries of the pass that measured it fastest, all of them at once. Each
    measured model is registered for the build's fingerprint (after a fingerprint change, it is
    kept fresh for the new one from then on)."""

    def __init__(
        self, profilers: Sequence[Profiler], models: Sequence[RegisteredModel], writer: _Writer, fingerprint_hash: str
    ) -> None:
        self.profilers, self.models, self.writer, self.fingerprint_hash = profilers, models, writer, fingerprint_hash
        self.fastest_ms: dict[int, float] = {}
        self.failures: dict[int, str] = {}
        self.unusable: set[int] = set()  # stored bytes gone or damaged: no later pass can measure them
        self.keys: set[str] = set()

    def measure_pass(self) -> None:
        for i, model in enumerate(self.models):
            if i in self.unusable:
                continue
            try:
                onnx = _model_bytes(self.writer.store, model)
                profile, model_ms = _profile_model(
                    self.profilers[i % len(self.profilers)], model, onnx, self.fingerprint_hash
                )
            except Exception as exc:  # whatever kept this model from being measured: skip it, report why
                if isinstance(exc, _UnusableBytes):
                    self.unusable.add(i)
                self.failures[i] = str(exc) or type(exc).__name__
                log.warning(
                    "lut.build.model_skipped", version=self.writer.version_id, model=model.name, reason=self.failures[i]
                )
                continue
            if model_ms >= self.fastest_ms.get(i, float("inf")):
                continue
            self.writer.write_model(list(profile.entries.values()))
            first = i not in self.fastest_ms
            self.fastest_ms[i] = model_ms
            self.keys |= set(profile.entries)
            if first and (model.fingerprint_hash != self.fingerprint_hash or model.kernels != profile.kernels):
                self.writer.store.register_model(
                    self.fingerprint_hash, model.name, onnx, model.batch_size, profile.kernels, model.last_used_unix_s
                )

    def result(self) -> _ModelsMeasured:
        """Models measured in any pass count; a model no pass could measure is skipped, with the
        reason its last pass gave."""
        skipped = [
            ModelSkip(m.name, m.model_sha256, self.failures[i])
            for i, m in enumerate(self.models)
            if i not in self.fastest_ms
        ]
        return _ModelsMeasured(len(self.fastest_ms), self.keys, skipped)


def _measure_all(
    profilers: Sequence[Profiler], todo: Sequence[OpKey], passes: _ModelPasses
) -> tuple[dict[str, str], _ModelsMeasured]:
    """The keys in slices, a pass over the models after each: key profiling between the passes
    spreads each model's measurements over the build. The keys left unmeasured (with reasons) and
    the models measured."""
    missing: dict[str, str] = {}
    count = passes.writer.plan.model_passes
    for p in range(count):
        missing |= _measure(profilers, todo[p::count], passes.writer)
        if passes.models:
            passes.measure_pass()
    return missing, passes.result()


def build_lut(
    store: LutStore,
    fingerprint_hash: str,
    fingerprint: Mapping[str, Any],
    keys: Sequence[OpKey],
    profilers: Sequence[Profiler],
    plan: BuildPlan | None = None,
    progress: Callable[[int, int], None] | None = None,
    models: Sequence[RegisteredModel] = (),
) -> BuildReport:
    """Profile `keys` and measure `models` in context on `profilers` (devices of one fingerprint)
    into this builder's own version, then seal it.

    Resumes an open version of the same source and parent whose lease expired (or whose holder
    died on this host). Keys are split between the profilers; each writes its results as they
    arrive. Passing failures are retried as `plan` says; keys still unmeasured leave the version
    open (its lease released for a rerun). `progress(done, total)` is called as keys are stored.
    """
    if not profilers:
        raise StoreError("no device to profile on")
    plan = plan or BuildPlan()
    t0 = time.monotonic()
    unique = list({k.hash: k for k in keys}.values())
    store.ensure_device(fingerprint_hash, fingerprint)
    settings_doc = json_format.MessageToDict(plan.settings, preserving_proto_field_name=True) if plan.settings else {}
    build = acquire(
        store, fingerprint_hash, plan.source, plan.owner, plan.lease_s, settings_doc, plan.note, plan.parent_id
    )
    vid = build.version.id
    stored = store.lookup(vid, [k.hash for k in unique]).entries if build.resumed else {}
    todo = [k for k in unique if k.hash not in stored]
    log.info(
        "lut.build.start",
        version=vid,
        resumed=build.resumed,
        keys=len(unique),
        todo=len(todo),
        models=len(models),
        devices=len(profilers),
    )
    bar = _Progress(len(unique), progress)
    bar.step(len(unique) - len(todo))
    writer = _Writer(store, vid, plan, bar)
    keeper = LeaseKeeper(store, vid, plan.owner, plan.lease_s).start()
    try:
        missing, measured = _measure_all(profilers, todo, _ModelPasses(profilers, models, writer, fingerprint_hash))
    except BaseException:
        keeper.stop(release=True)
        raise
    keeper.stop(release=bool(missing))  # an incomplete version is left for the rerun to resume
    carried = None
    if not missing:
        own = store.version(vid).entry_count
        carried = store.seal(vid, plan.owner).entry_count - own
    report = BuildReport(
        version_id=vid,
        resumed=build.resumed,
        keys_total=len(unique),
        already_stored=len(stored),
        measured_ok=writer.counts["ok"],
        unsupported=writer.counts["unsupported"],
        failed=writer.counts["failed"],
        missing=missing,
        sealed=carried is not None,
        elapsed_s=round(time.monotonic() - t0, 3),
        models_measured=measured.count,
        in_model_keys=len(measured.keys),
        skipped_models=tuple(measured.skipped),
        carried_forward=carried or 0,
    )
    log.info(
        "lut.build.done",
        **{k: v for k, v in report.__dict__.items() if k not in ("missing", "skipped_models")},
        missing_keys=len(missing),
        skipped_models=[m.name for m in measured.skipped],
    )
    return report


def report_dict(report: BuildReport) -> dict[str, Any]:
    doc = dataclasses.asdict(report)
    doc["missing"] = [{"key_hash": k, "reason": v} for k, v in report.missing.items()]
    return json.loads(json.dumps(doc))
