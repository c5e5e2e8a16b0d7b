"""Building a LUT version: profile keys on one or more devices of one fingerprint, write the
results into the fingerprint's open version as they arrive, seal when every key is measured.

A crashed build leaves its open version behind; the next build of that fingerprint resumes it
(its lease has expired) and measures only what is missing. Keys whose measurement failed for a
passing reason (the agent went away, a timeout, a busy device) are retried, and never written:
a version with such keys stays open, so it is never sealed half-built.
"""

from __future__ import annotations

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
from lut_store.records import Build, BuildInProgress, Entry, StoreError
from protos.hadmc.v1 import agent_pb2, common_pb2

log = structlog.get_logger(__name__)

# KeyError codes that say nothing about the key itself: measure again later.
_TRANSIENT_CODES = frozenset({agent_pb2.KeyError.CODE_TIMEOUT, agent_pb2.KeyError.CODE_INTERFERENCE})


class Profiler(Protocol):
    """One device that profiles keys (host.agent_client.AgentClient fits)."""

    def profile(
        self, keys: Sequence[OpKey], settings: Any = None, timeout_s: float | None = None
    ) -> Iterator[agent_pb2.ProfileResult]: ...


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
    """store.acquire_build, taking the open version over at once when its holder is a dead
    process of this host; BuildInProgress when a live builder holds it."""
    try:
        return store.acquire_build(fingerprint_hash, source, owner, lease_s, settings, note, parent_id)
    except BuildInProgress:
        holder = next((v.lease_owner for v in store.versions(fingerprint_hash) if v.status == "open"), None)
        if holder is None or not holder_is_dead(holder):
            raise
        log.warning("lut.build.takeover", holder=holder, reason="its process is gone from this host")
        return store.acquire_build(
            fingerprint_hash, source, owner, lease_s, settings, note, parent_id, take_over_from=holder
        )


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


class _Progress:
    def __init__(self, total: int, callback: Callable[[int, int], None] | None) -> None:
        self.total, self.done, self._cb, self._lock = total, 0, callback, threading.Lock()

    def step(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if self._cb:
                self._cb(self.done, self.total)


class _Writer:
    """Writes a build's entries as they arrive, from any profiler's thread, renewing the lease
    on the way; counts them by status."""

    def __init__(self, store: LutStore, version_id: int, plan: BuildPlan, progress: _Progress) -> None:
        self.store, self.version_id, self.plan, self.progress = store, version_id, plan, progress
        self.counts = {"ok": 0, "unsupported": 0, "failed": 0}
        self._lock = threading.Lock()
        self._renewed = time.monotonic()

    def write(self, entry: Entry) -> None:
        with self._lock:
            self.store.add_entries(self.version_id, [entry], self.plan.owner)
            self.counts[entry.status] += 1
            if time.monotonic() - self._renewed > self.plan.lease_s / 3:
                self.renew()
        self.progress.step()

    def renew(self) -> None:
        self.store.renew_lease(self.version_id, self.plan.owner, self.plan.lease_s)
        self._renewed = time.monotonic()


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
            writer.renew()
    return missing


def build_lut(
    store: LutStore,
    fingerprint_hash: str,
    fingerprint: Mapping[str, Any],
    keys: Sequence[OpKey],
    profilers: Sequence[Profiler],
    plan: BuildPlan | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BuildReport:
    """Profile `keys` on `profilers` (devices of one fingerprint) into a version, then seal it.

    Resumes the fingerprint's open version when its lease has expired. Keys are split between
    the profilers; each writes its results as they arrive. Passing failures are retried as
    `plan` says; keys still unmeasured leave the version open. `progress(done, total)` is called
    as keys are stored.
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
        "lut.build.start", version=vid, resumed=build.resumed, keys=len(unique), todo=len(todo), devices=len(profilers)
    )
    bar = _Progress(len(unique), progress)
    bar.step(len(unique) - len(todo))
    writer = _Writer(store, vid, plan, bar)
    missing = _measure(profilers, todo, writer)
    if not missing:
        store.seal(vid)
    report = BuildReport(
        version_id=vid,
        resumed=build.resumed,
        keys_total=len(unique),
        already_stored=len(stored),
        measured_ok=writer.counts["ok"],
        unsupported=writer.counts["unsupported"],
        failed=writer.counts["failed"],
        missing=missing,
        sealed=not missing,
        elapsed_s=round(time.monotonic() - t0, 3),
    )
    log.info(
        "lut.build.done", **{k: v for k, v in report.__dict__.items() if k != "missing"}, missing_keys=len(missing)
    )
    return report


def report_dict(report: BuildReport) -> dict[str, Any]:
    doc = dict(report.__dict__)
    doc["missing"] = [{"key_hash": k, "reason": v} for k, v in report.missing.items()]
    return json.loads(json.dumps(doc))
