"""The LUT store, run against SQLite, a real PostgreSQL started by the test run, and the gRPC front."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lut_store.exchange import diff_versions, export_version, import_version
from lut_store.keys import ops
from lut_store.keys.ops import NCHW, ConvSpec
from lut_store.records import (
    CorruptExport,
    Entry,
    LeaseLost,
    NoSealedVersion,
    StoreError,
    UnknownDevice,
    UnknownVersion,
    VersionNotOpen,
)
from lut_store.sqlstore import SqliteStore
from lut_store.store import open_store

ROOT = Path(__file__).resolve().parent.parent
FP = "a" * 64
FP2 = "b" * 64


def ok_entry(key, median_ms=1.0, n=20):
    return Entry(
        key_hash=key.hash,
        key_json=key.canonical_json(),
        status="ok",
        measured_at_unix_s=time.time(),
        median_ms=median_ms,
        mean_ms=median_ms * 1.01,
        p90_ms=median_ms * 1.1,
        std_ms=0.01,
        min_ms=median_ms * 0.95,
        n=n,
        settings={"target_rel_ci": 0.02},
        environment={"cpu_freq_mhz": 2000.0},
    )


KEYS = [ops.conv(NCHW(1, 8 * i, 16, 16), ConvSpec(8 * i, 3)) for i in range(1, 6)]


def sealed_version(store, fp=FP, medians=(1.0, 2.0, 3.0, 4.0, 5.0), owner="builder"):
    store.ensure_device(fp, {"cpu": {"model": "test"}})
    build = store.acquire_build(fp, "manual", owner, lease_s=60)
    store.add_entries(build.version.id, [ok_entry(k, m) for k, m in zip(KEYS, medians, strict=True)], owner)
    return store.seal(build.version.id)


def test_migrations_are_recorded_and_applied_once(store_url):
    if store_url.startswith("grpc"):
        pytest.skip("migrations belong to the SQL store behind the gRPC front")
    applied = ["0001_initial", "0002_concurrent_versions_and_registered_models"]
    with open_store(store_url) as first:
        assert first.applied_migrations() == applied
    with open_store(store_url) as again:
        assert again.applied_migrations() == applied


def test_build_seal_latest_and_lookup(store):
    v = sealed_version(store)
    assert v.status == "sealed" and v.entry_count == 5 and v.parent_id is None and v.sealed_at_unix_s
    assert store.latest(FP).id == v.id
    hits = store.lookup(v.id, [k.hash for k in KEYS[:3]] + ["missing"])
    assert hits.version_id == v.id
    assert set(hits.entries) == {k.hash for k in KEYS[:3]}
    assert hits.entries[KEYS[1].hash].median_ms == 2.0
    assert hits.entries[KEYS[1].hash].environment == {"cpu_freq_mhz": 2000.0}
    second = sealed_version(store, medians=(1.1, 2.2, 3.3, 4.4, 5.5))
    assert second.parent_id == v.id and store.latest(FP).id == second.id


def test_sealed_versions_are_immutable(store, store_url):
    v = sealed_version(store)
    with pytest.raises(VersionNotOpen, match="sealed"):
        store.add_entries(v.id, [ok_entry(KEYS[0], 9.0)])
    with pytest.raises(VersionNotOpen):
        store.abandon(v.id)
    # The database refuses too, whoever writes (behind the gRPC front, no other writer reaches it).
    raw_update = f"UPDATE entries SET median_ms = 9 WHERE version_id = {int(v.id)}"
    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(store_url[len("sqlite:///") :])
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            conn.execute(raw_update)
        conn.close()
    elif store_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as conn, pytest.raises(psycopg.Error, match="immutable"):
            conn.execute(raw_update)
    assert store.lookup(v.id, [KEYS[0].hash]).entries[KEYS[0].hash].median_ms == 1.0


def test_open_and_abandoned_versions_are_never_latest(store):
    store.ensure_device(FP, {})
    with pytest.raises(NoSealedVersion, match="no sealed LUT version"):
        store.latest(FP)
    build = store.acquire_build(FP, "manual", "crashed-builder", lease_s=60)
    store.add_entries(build.version.id, [ok_entry(KEYS[0])])
    with pytest.raises(NoSealedVersion):
        store.latest(FP)
    store.abandon(build.version.id)
    with pytest.raises(NoSealedVersion):
        store.latest(FP)


def test_unknown_fingerprint_lists_known_devices(store):
    sealed_version(store)
    with pytest.raises(UnknownDevice, match=f"known: {FP[:16]}"):
        store.latest("f" * 64)
    with pytest.raises(UnknownVersion):
        store.version(12345)
    with pytest.raises(UnknownVersion):
        store.lookup(12345, ["x"])


@pytest.mark.parametrize("lease_s", [float("nan"), float("inf"), 0.0, -5.0])
def test_a_lease_is_a_finite_positive_time(store, lease_s):
    store.ensure_device(FP, {"cpu": {"model": "test"}})
    with pytest.raises(StoreError, match="lease_s = .*a lease lasts a finite"):
        store.acquire_build(FP, "manual", "builder", lease_s=lease_s)
    build = store.acquire_build(FP, "manual", "builder", lease_s=60)
    if lease_s != 0.0:  # renewing for 0 s lets the lease go
        with pytest.raises(StoreError, match="lease_s = .*a lease lasts a finite"):
            store.renew_lease(build.version.id, "builder", lease_s)
    assert store.version(build.version.id).lease_expires_unix_s > time.time()


def test_each_holder_gets_its_own_version_and_an_expired_one_is_resumed_by_its_kind(store):
    store.ensure_device(FP, {})
    first = store.acquire_build(FP, "manual", "host-a:1", lease_s=0.5)
    store.add_entries(first.version.id, [ok_entry(KEYS[0])], "host-a:1")
    # Another holder, of this kind or another, never waits: it gets a version of its own.
    second = store.acquire_build(FP, "manual", "host-b:2", lease_s=60)
    search = store.acquire_build(FP, "search", "host-c:3", lease_s=0.1)
    assert not second.resumed and not search.resumed
    assert len({first.version.id, second.version.id, search.version.id}) == 3
    time.sleep(0.6)
    # Expired: resumed by a holder of the same source and parent only.
    nightly = store.acquire_build(FP, "nightly", "host-d:4", lease_s=60)
    assert not nightly.resumed and nightly.version.id not in (first.version.id, search.version.id)
    third = store.acquire_build(FP, "manual", "host-e:5", lease_s=60)
    assert third.resumed and third.version.id == first.version.id
    with pytest.raises(LeaseLost, match="held by host-e:5"):
        store.add_entries(first.version.id, [ok_entry(KEYS[1])], "host-a:1")
    with pytest.raises(LeaseLost, match="held by host-e:5"):
        store.seal(first.version.id, "host-a:1")
    store.add_entries(third.version.id, [ok_entry(KEYS[1])], "host-e:5")
    assert store.version(third.version.id).entry_count == 2
    # A released lease (0 s) is resumable at once by its kind: sealed_version's builder takes it.
    store.renew_lease(second.version.id, "host-b:2", 0.0)
    other_parent = sealed_version(store)
    assert other_parent.id == second.version.id
    # A holder of another parent never resumes an open version.
    fresh = store.acquire_build(FP, "manual", "host-f:6", lease_s=60)
    assert not fresh.resumed and fresh.version.parent_id == other_parent.id
    again = store.acquire_build(FP, "manual", "host-f:6", lease_s=60, parent_id=None)
    assert again.resumed and again.version.id == fresh.version.id


def test_same_builder_resumes_its_open_version(store):
    store.ensure_device(FP, {})
    first = store.acquire_build(FP, "manual", "me", lease_s=60)
    store.add_entries(first.version.id, [ok_entry(KEYS[0])], "me")
    again = store.acquire_build(FP, "manual", "me", lease_s=60)
    assert again.resumed and again.version.id == first.version.id
    store.add_entries(again.version.id, [ok_entry(KEYS[0], 7.0)], "me")  # re-measured: replaced
    assert store.lookup(again.version.id, [KEYS[0].hash]).entries[KEYS[0].hash].median_ms == 7.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"median_ms": 0.0}, "median > 0"),
        ({"median_ms": None}, "median > 0"),
        ({"n": 1}, "n >= 2"),
    ],
)
def test_entries_never_store_zeros_or_single_runs(kwargs, message):
    base = dict(key_hash="k", key_json="{}", status="ok", measured_at_unix_s=0.0, median_ms=1.0, n=10)
    with pytest.raises(StoreError, match=message):
        Entry(**{**base, **kwargs})
    with pytest.raises(StoreError, match="needs a reason"):
        Entry(key_hash="k", key_json="{}", status="failed", measured_at_unix_s=0.0)


def test_failed_and_unsupported_entries_are_stored_with_reasons(store):
    store.ensure_device(FP, {})
    build = store.acquire_build(FP, "manual", "me", lease_s=60)
    store.add_entries(
        build.version.id,
        [
            Entry(KEYS[0].hash, KEYS[0].canonical_json(), "unsupported", time.time(), reason="int4 is weight-only"),
            Entry(KEYS[1].hash, KEYS[1].canonical_json(), "failed", time.time(), reason="agent died"),
        ],
    )
    got = store.lookup(build.version.id, [KEYS[0].hash, KEYS[1].hash]).entries
    assert got[KEYS[0].hash].status == "unsupported" and got[KEYS[0].hash].median_ms is None
    assert got[KEYS[1].hash].reason == "agent died"


def test_four_writer_processes_lose_no_entry(store, store_url):
    store.ensure_device(FP, {})
    build = store.acquire_build(FP, "manual", "shared", lease_s=600)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.store_writer", store_url, str(build.version.id), f"w{i}", "25", "8"], cwd=ROOT
        )
        for i in range(4)
    ]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    assert store.version(build.version.id).entry_count == 4 * 25 * 8


def _open_at(path: str, start: float, results) -> None:
    while time.time() < start:
        pass
    try:
        SqliteStore(Path(path)).close()
        results.put("ok")
    except StoreError as exc:
        results.put(str(exc))


def test_processes_that_open_a_new_sqlite_store_at_once_all_open_it(tmp_path):
    """They race to switch the new file to WAL; SQLite told the losers "database is locked" at
    once (4 of 30 rounds before the retry)."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    for round_no in range(20):
        results = fork.Queue()
        start = time.time() + 0.2
        procs = [
            fork.Process(target=_open_at, args=(str(tmp_path / f"{round_no}.sqlite"), start, results)) for _ in range(3)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [results.get(timeout=5) for _ in procs] == ["ok"] * 3, f"round {round_no}"


def test_diff_summarises_per_key_ratios(store):
    a = sealed_version(store)
    b = sealed_version(store, medians=(1.0, 2.0, 3.0, 8.0, 2.5))
    d = diff_versions(store, a.id, b.id)
    assert d.common == 5 and d.only_in_a == 0 and d.only_in_b == 0
    assert d.median_ratio == pytest.approx(1.0)
    assert d.most_changed[0].ratio == pytest.approx(2.0) and d.most_changed[1].ratio == pytest.approx(0.5)
    assert d.most_changed[0].kernel.startswith("conv fp32")


def test_export_then_import_elsewhere(store, tmp_path):
    v = sealed_version(store)
    path = tmp_path / "lut.jsonl"
    header = export_version(store, v.id, path)
    assert header["entries"] == 5 and header["fingerprint_hash"] == FP
    with open_store(f"sqlite:///{tmp_path / 'other.sqlite'}") as other:
        imported = import_version(other, path)
        assert imported.status == "sealed" and imported.uid == v.uid and imported.entry_count == 5
        assert other.latest(FP).id == imported.id
        assert [e.median_ms for e in other.entries(imported.id)] == [e.median_ms for e in store.entries(v.id)]
        with pytest.raises(StoreError, match="already in"):
            import_version(other, path)


def test_an_import_beside_an_open_build_of_the_same_device(store, tmp_path):
    """An import lands while a build of the same fingerprint is open: each keeps its own entries,
    the build's lease is untouched, and the build sealed after it takes in what it lacks."""
    with open_store(f"sqlite:///{tmp_path / 'elsewhere.sqlite'}") as elsewhere:
        exported = sealed_version(elsewhere, medians=(1.0, 2.0, 3.0, 4.0, 5.0))
        export_version(elsewhere, exported.id, tmp_path / "lut.jsonl")
    store.ensure_device(FP, {"cpu": {"model": "test"}})
    build = store.acquire_build(FP, "nightly", "nightly-1", lease_s=60)
    store.add_entries(build.version.id, [ok_entry(KEYS[0], 7.0)], "nightly-1")
    imported = import_version(store, tmp_path / "lut.jsonl")
    assert imported.status == "sealed" and store.latest(FP).id == imported.id
    store.renew_lease(build.version.id, "nightly-1", 60)  # still the build's holder
    store.add_entries(build.version.id, [ok_entry(KEYS[1], 8.0)], "nightly-1")
    sealed = store.seal(build.version.id, "nightly-1")
    assert store.latest(FP).id == sealed.id and sealed.sealed_at_unix_s > imported.sealed_at_unix_s
    medians = {e.key_hash: e.median_ms for e in store.entries(sealed.id)}
    assert [medians[k.hash] for k in KEYS] == [7.0, 8.0, 3.0, 4.0, 5.0]
    assert [e.median_ms for e in store.entries(imported.id)] == [
        m for _, m in sorted(zip([k.hash for k in KEYS], [1.0, 2.0, 3.0, 4.0, 5.0], strict=True))
    ]


def _rehashed_with_a_wrong_key_hash(text: str) -> str:
    """An export whose first entry is filed under another key's hash, with a checksum that matches."""
    from lut_store.exchange import _digest

    head, first, *rest = text.rstrip("\n").split("\n")
    header, entry = json.loads(head), json.loads(first)
    entry["key_hash"] = "0" * 64
    body = [json.dumps(entry, sort_keys=True, separators=(",", ":")), *rest]
    header["sha256"] = _digest(header, body)
    return "\n".join([json.dumps(header, sort_keys=True), *body]) + "\n"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: t[: len(t) // 2], "truncated"),
        (lambda t: t.rsplit("\n", 2)[0] + "\n", "truncated or padded"),
        (lambda t: t.replace('"median_ms":3.0', '"median_ms":0.3'), "checksum"),
        (lambda t: "garbage\n" + t, "not a hadmc LUT export"),
        (lambda t: t.replace('"model": "test"', '"model": "evil"', 1), "checksum: its header or entries"),
        (lambda t: t.replace('"sealed_at_unix_s":', '"sealed_at":', 1), "header's version has no 'sealed_at_unix_s'"),
        (lambda t: t.replace('"fingerprint":', '"fp":', 1), "header has no 'fingerprint'"),
        (_rehashed_with_a_wrong_key_hash, "line 2's key_hash .* is not the hash of its key"),
    ],
)
def test_corrupt_exports_are_refused_and_nothing_is_written(store, tmp_path, damage, message):
    v = sealed_version(store)
    path = tmp_path / "lut.jsonl"
    export_version(store, v.id, path)
    path.write_text(damage(path.read_text()))
    with open_store(f"sqlite:///{tmp_path / 'other.sqlite'}") as other:
        with pytest.raises(CorruptExport, match=message):
            import_version(other, path)
        assert other.versions() == [] and other.devices() == []


def test_a_version_1_export_whose_checksum_covers_only_its_entries_still_imports(tmp_path):
    from lut_store.exchange import _digest

    with open_store(f"sqlite:///{tmp_path / 'a.sqlite'}") as store:
        v = sealed_version(store)
        path = tmp_path / "lut.jsonl"
        export_version(store, v.id, path)
    head, *body = path.read_text().rstrip("\n").split("\n")
    header = {**json.loads(head), "format_version": 1}
    header["sha256"] = _digest(header, body)
    path.write_text("\n".join([json.dumps(header, sort_keys=True), *body]) + "\n")
    with open_store(f"sqlite:///{tmp_path / 'b.sqlite'}") as other:
        assert import_version(other, path).uid == v.uid


def test_only_sealed_versions_are_exported(store, tmp_path):
    store.ensure_device(FP, {})
    build = store.acquire_build(FP, "manual", "me", lease_s=60)
    with pytest.raises(StoreError, match="only sealed"):
        export_version(store, build.version.id, tmp_path / "x.jsonl")


def test_unwritable_sqlite_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open the SQLite store"):
        open_store(f"sqlite:///{blocker / 'lut.sqlite'}")


def test_unreachable_postgres_fails_within_its_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the TCP connection, never speaks PostgreSQL
    port = silent.getsockname()[1]
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
            open_store(f"postgresql://u:secret@127.0.0.1:{port}/db", timeout_s=2)
        assert time.monotonic() - t0 < 10
        with pytest.raises(StoreError) as exc:
            open_store("postgresql://u:secret@127.0.0.1:1/db", timeout_s=2)
        assert "secret" not in str(exc.value)
    finally:
        silent.close()


def test_bad_store_url():
    with pytest.raises(StoreError, match="expected sqlite"):
        open_store("mysql://x")


def test_concurrent_threads_share_one_store(store):
    store.ensure_device(FP, {})
    build = store.acquire_build(FP, "manual", "me", lease_s=60)
    errors = []

    def write(i):
        try:
            store.add_entries(build.version.id, [ok_entry(ops.elementwise("Relu", (1, i + 1)))])
        except Exception as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and store.version(build.version.id).entry_count == 8


def test_a_version_of_another_fingerprint_is_refused_unless_forced(store):
    from lut_store.records import FingerprintMismatch
    from lut_store.store import resolve_version

    old_doc = {"onnxruntime_version": "1.31.0", "intra_op_threads": 2}
    new_doc = {"onnxruntime_version": "1.32.0", "intra_op_threads": 2}
    store.ensure_device(FP, old_doc)
    build = store.acquire_build(FP, "manual", "me", lease_s=60)
    store.add_entries(build.version.id, [ok_entry(KEYS[0])], "me")
    old = store.seal(build.version.id)
    with pytest.raises(FingerprintMismatch, match="onnxruntime_version: '1.31.0' -> '1.32.0'"):
        resolve_version(store, FP2, new_doc, pinned=old.id)
    assert resolve_version(store, FP2, new_doc, pinned=old.id, force=True).id == old.id
    assert resolve_version(store, FP, old_doc).id == old.id
