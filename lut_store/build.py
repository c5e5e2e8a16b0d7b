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

from lut_store.opkey import OpKey
from lut_store.records import Build, BuildInProgress, Entry, StoreError
from lut_store.store import LutStore
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


class _Progress:
    def __init__(self, total: int, callback: Callable[[int, int], None] | None) -> None:
        self.total, self.done, self._cb, self._lock = total, 0, callback, threading.Lock()

    def step(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if self._cb:
                self._cb(self.done, self.total)


def build_lut(
    store: LutStore,
    fingerprint_hash: str,
    fingerprint: Mapping[str, Any],
    keys: Sequence[OpKey],
    profilers: Sequence[Profiler],
    source: str = "manual",
    owner: str | None = None,
    settings: Any = None,
    note: str = "",
    lease_s: float = 120.0,
    chunk_keys: int = 32,
    retries: int = 3,
    retry_wait_s: float = 5.0,
    parent_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BuildReport:
    """Profile `keys` on `profilers` (devices of one fingerprint) into a version, then seal it.

    Resumes the fingerprint's open version when its lease has expired. Keys are split between
    the profilers; each writes its results as they arrive. Passing failures are retried
    `retries` times, `retry_wait_s` apart; keys still unmeasured leave the version open.
    """
    if not profilers:
        raise StoreError("no device to profile on")
    t0 = time.monotonic()
    owner = owner or default_owner()
    unique = list({k.hash: k for k in keys}.values())
    store.ensure_device(fingerprint_hash, fingerprint)
    settings_doc = json_format.MessageToDict(settings, preserving_proto_field_name=True) if settings else {}
    build = acquire(store, fingerprint_hash, source, owner, lease_s, settings_doc, note, parent_id)
    vid = build.version.id
    stored = store.lookup(vid, [k.hash for k in unique]).entries if build.resumed else {}
    todo = [k for k in unique if k.hash not in stored]
    log.info(
        "lut.build.start", version=vid, resumed=build.resumed, keys=len(unique), todo=len(todo), devices=len(profilers)
    )
    counts = {"ok": 0, "unsupported": 0, "failed": 0}
    lock = threading.Lock()
    bar = _Progress(len(unique), progress)
    bar.step(len(unique) - len(todo))
    last_renew = [time.monotonic()]

    def write(entries: list[Entry]) -> None:
        if not entries:
            return
        with lock:
            store.add_entries(vid, entries, owner)
            for e in entries:
                counts[e.status] += 1
            if time.monotonic() - last_renew[0] > lease_s / 3:
                store.renew_lease(vid, owner, lease_s)
                last_renew[0] = time.monotonic()

    def run(profiler: Profiler, share: list[OpKey], missing: dict[str, str], errors: list[BaseException]) -> None:
        """Profile a share of the keys; each result is stored as soon as it arrives."""
        try:
            for start in range(0, len(share), chunk_keys):
                chunk = share[start : start + chunk_keys]
                seen: set[str] = set()
                stream = iter(profiler.profile(chunk, settings=settings, timeout_s=max(600.0, 60.0 * len(chunk))))
                while True:
                    try:
                        result = next(stream)
                    except StopIteration:
                        break
                    except Exception as exc:  # the device went away mid-chunk: the rest is missing
                        for k in chunk:
                            if k.hash not in seen:
                                missing[k.hash] = f"device error: {exc}"
                        break
                    key = chunk[result.index]
                    seen.add(key.hash)
                    entry = entry_from_result(key, result)
                    if entry is None:
                        missing[key.hash] = f"{agent_pb2.KeyError.Code.Name(result.error.code)}: {result.error.message}"
                    else:
                        write([entry])
                        bar.step()
        except BaseException as exc:  # a store failure ends the build; re-raised by the caller
            errors.append(exc)

    missing: dict[str, str] = {}
    for attempt in range(retries + 1):
        shares = [todo[i :: len(profilers)] for i in range(len(profilers))]
        round_missing: list[dict[str, str]] = [{} for _ in profilers]
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=run, args=(p, s, m, errors), daemon=True)
            for p, s, m in zip(profilers, shares, round_missing, strict=True)
            if s
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        missing = {k: v for m in round_missing for k, v in m.items()}
        if not missing:
            break
        todo = [k for k in todo if k.hash in missing]
        if attempt < retries:
            log.warning(
                "lut.build.retry",
                version=vid,
                keys=len(todo),
                wait_s=retry_wait_s,
                example=next(iter(missing.values())),
            )
            time.sleep(retry_wait_s)
            store.renew_lease(vid, owner, lease_s)
    sealed = False
    if not missing:
        store.seal(vid)
        sealed = True
    report = BuildReport(
        version_id=vid,
        resumed=build.resumed,
        keys_total=len(unique),
        already_stored=len(stored),
        measured_ok=counts["ok"],
        unsupported=counts["unsupported"],
        failed=counts["failed"],
        missing=missing,
        sealed=sealed,
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
