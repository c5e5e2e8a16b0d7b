"""Faults with real parts: a PostgreSQL restarted under a store, under `lut serve` and under a
running search; `lut serve` killed with SIGKILL mid-import; a full disk under the SQLite store and
under a run directory; a stepped clock in one writer. Each case checks that nothing stored is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from lut_store.exchange import export_version, import_version
from lut_store.precision import Precision
from lut_store.records import CommitOutcomeUnknown, StoreError, StoreUnavailable
from lut_store.sqlstore import PostgresStore, SqliteStore
from lut_store.store import open_store
from tests.helpers import synthetic_entries as entries
from tests.pg import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
FP = "f" * 64


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A server of this module's own: restarting it must not disturb other tests' connections."""
    server = PostgresServer()
    yield server
    server.stop()


def open_build(store, owner: str = "writer", source: str = "manual") -> int:
    store.ensure_device(FP, {"cpu": {"model": "test"}})
    return store.acquire_build(FP, source, owner, lease_s=600).version.id


def write_across_a_restart(pg: PostgresServer, store, version_id: int, batches: int) -> list[int]:
    """Batches of 200 entries written by a thread while PostgreSQL restarts under it (after the
    fifth batch, mid-transaction or between two); the batches written. A write whose commit was
    cut is written again: add_entries replaces by key, so a batch that did land changes nothing."""
    done: list[int] = []

    def write() -> None:
        for b in range(batches):
            while True:
                try:
                    store.add_entries(version_id, entries(f"b{b}", 200), "writer")
                    break
                except CommitOutcomeUnknown:
                    continue
            done.append(b)

    writer = threading.Thread(target=write)
    writer.start()
    while len(done) < 5 and writer.is_alive():
        time.sleep(0.01)
    pg.restart()
    writer.join(120)
    assert not writer.is_alive()
    return done


def test_postgres_restart_under_a_store_loses_nothing(pg, record_property):
    url = pg.new_database()
    with PostgresStore(url, reconnect_s=30) as store:
        vid = open_build(store)
        assert write_across_a_restart(pg, store, vid, 60) == list(range(60))
        sealed = store.seal(vid, "writer")  # on the new connection
        record_property("entries_lost", 60 * 200 - sealed.entry_count)
        assert sealed.entry_count == 60 * 200 and store.latest(FP).id == vid


def test_postgres_down_past_the_reconnect_budget_is_unavailable_then_recovers(pg, record_property):
    url = pg.new_database()
    with PostgresStore(url, reconnect_s=2) as store:
        vid = open_build(store)
        store.add_entries(vid, entries("before", 10), "writer")
        pg.halt()
        try:
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"could not reconnect within 2 s \(\d+ attempts\)"):
                store.add_entries(vid, entries("during", 10), "writer")
            assert time.monotonic() - t0 < 10
            with pytest.raises(StoreUnavailable):
                store.versions()
        finally:
            pg.start()
        store.add_entries(vid, entries("after", 10), "writer")
        sealed = store.seal(vid, "writer")
        record_property("entries_lost", 20 - sealed.entry_count)
        assert sealed.entry_count == 20


@contextmanager
def served(store_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`lut serve` in a process of its own; yields it and its address."""
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    code = (
        "import sys; from pathlib import Path; from lut_store.grpc_front import serve_store; "
        f"sys.exit(serve_store({store_url!r}, '127.0.0.1:0', ready_file=Path({str(ready)!r})))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "lut serve did not start"
            time.sleep(0.05)
        yield proc, ready.read_text().strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def test_postgres_restart_under_lut_serve_loses_nothing(pg, tmp_path, record_property):
    url = pg.new_database()
    with served(url, tmp_path) as (proc, address), open_store(f"grpc://{address}", timeout_s=30) as store:
        vid = open_build(store)
        assert write_across_a_restart(pg, store, vid, 40) == list(range(40))
        assert store.seal(vid, "writer").entry_count == 40 * 200
        assert proc.poll() is None  # it served on
    with PostgresStore(url) as direct:
        record_property("entries_lost", 40 * 200 - direct.latest(FP).entry_count)
        assert direct.latest(FP).entry_count == 40 * 200


def test_postgres_restart_under_a_running_search(pg, agent, tmp_path, monkeypatch, record_property):
    """The search profiles kernels into its open version, renews its lease and seals at the end,
    all through the store; PostgreSQL restarts once the first kernels are stored."""
    from host.search.run import load_search_config, run_search
    from tests.test_search import MLP

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    url = pg.new_database()
    search = {**MLP["search"], "controllers": ["ppo"], "episodes": 3, "alternatives": []}
    config = load_search_config(None, {**MLP, "search": search, "device": {"name": agent.address}, "store": url})
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_search(config, tmp_path / "run", progress=False)
        except BaseException as exc:  # reported by the test's thread
            failure.append(exc)

    searching = threading.Thread(target=run)
    searching.start()
    stored_before = 0
    with psycopg.connect(url, autocommit=True) as watch:
        while searching.is_alive() and stored_before == 0:
            try:
                stored_before = watch.execute(
                    "SELECT COUNT(*) FROM entries e JOIN versions v ON v.id = e.version_id WHERE v.source = 'search'"
                ).fetchone()[0]
            except psycopg.errors.UndefinedTable:  # the search has not opened the store yet
                pass
            time.sleep(0.05)
    assert stored_before > 0, "the search ended before it stored a kernel"
    pg.restart()
    searching.join(600)
    assert not searching.is_alive() and not failure, failure
    with PostgresStore(url) as store:
        [sealed] = [v for v in store.versions(None) if v.source == "search"]
        record_property("entries_lost", max(0, stored_before - sealed.entry_count))
        assert sealed.status == "sealed" and sealed.entry_count >= stored_before
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["controllers"]["ppo"]["measured_latency"]["median_ms"] > 0


def test_lut_serve_killed_mid_import_shows_no_partial_version(tmp_path, record_property):
    """SIGKILL while the import's transaction is being written (its WAL growing): afterwards the
    store is intact, holds no trace of the import, and the same file imports whole."""
    source = tmp_path / "source.sqlite"
    with SqliteStore(source) as store:
        vid = open_build(store)
        for b in range(6):
            store.add_entries(vid, entries(f"b{b}", 5000, pad=200), "writer")
        sealed = store.seal(vid, "writer")
        export_version(store, sealed.id, tmp_path / "lut.jsonl")
    db = tmp_path / "served.sqlite"
    wal = Path(f"{db}-wal")
    with served(f"sqlite:///{db}", tmp_path) as (proc, address):
        start_wal = wal.stat().st_size if wal.exists() else 0

        outcome: list[BaseException | None] = []

        def run_import() -> None:
            with open_store(f"grpc://{address}", timeout_s=120) as remote:
                try:
                    import_version(remote, tmp_path / "lut.jsonl")
                    outcome.append(None)
                except StoreError as exc:
                    outcome.append(exc)

        importing = threading.Thread(target=run_import)
        importing.start()
        deadline = time.monotonic() + 120
        while (wal.stat().st_size if wal.exists() else 0) < start_wal + (4 << 20):
            assert time.monotonic() < deadline and proc.poll() is None, "the import never reached the store"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        importing.join(150)
        assert not importing.is_alive() and isinstance(outcome[0], StoreError)  # the client hears it failed
    with SqliteStore(db) as after:
        assert after.integrity_check() == "ok"
        assert [v.uid for v in after.versions()] == []  # the open transaction rolled back whole
        imported = import_version(after, tmp_path / "lut.jsonl")
        record_property("entries_lost", 30000 - imported.entry_count)
        assert imported.uid == sealed.uid and imported.entry_count == 30000


@pytest.fixture()
def small_disk(tmp_path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test (needs root, as CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(path: Path) -> None:
    """Fill the filesystem that holds `path` to the last byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (64 << 10, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_full_disk_under_the_sqlite_store(small_disk, record_property):
    with SqliteStore(small_disk / "lut.sqlite") as store:
        vid = open_build(store)
        store.add_entries(vid, entries("kept", 200), "writer")
        first = store.seal(vid, "writer")
        second = store.acquire_build(FP, "manual", "writer", lease_s=600).version.id
        store.add_entries(second, entries("open", 100), "writer")
        fill(small_disk / "ballast")
        with pytest.raises(StoreError, match="nothing of this write was stored.*free space"):
            for b in range(100):  # until the WAL can grow no more
                store.add_entries(second, entries(f"more{b}", 500, pad=500), "writer")
        with pytest.raises(StoreError, match="nothing of this write was stored"):
            store.seal(second, "writer")
        assert store.version(second).status == "open"  # not sealed half-written
        assert store.latest(FP).id == first.id and first.entry_count == 200
        (small_disk / "ballast").unlink()
        assert store.integrity_check() == "ok"
        record_property("entries_lost", 200 - len(list(store.entries(first.id))))
        assert len(list(store.entries(first.id))) == 200
        assert store.seal(second, "writer").status == "sealed"


def test_stepped_clock_in_one_writer_steals_no_lease_and_reorders_no_version(pg, monkeypatch):
    """PostgreSQL keeps leases and seal times on its own clock: a writer whose clock jumped a day
    ahead neither takes a live lease nor seals its version 'after' one sealed later."""
    url = pg.new_database()
    with PostgresStore(url) as a, PostgresStore(url) as b:
        held = open_build(a, owner="a", source="nightly")
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 86400)
        taken = b.acquire_build(FP, "nightly", "b", lease_s=600)
        assert taken.version.id != held and not taken.resumed  # a's lease is live on the server's clock
        b.add_entries(taken.version.id, entries("b", 3), "b")
        sealed_b = b.seal(taken.version.id, "b")
        monkeypatch.setattr(time, "time", real_time)
        a.add_entries(held, entries("a", 3), "a")
        sealed_a = a.seal(held, "a")
        assert sealed_a.sealed_at_unix_s > sealed_b.sealed_at_unix_s and a.latest(FP).id == held
        assert abs(sealed_b.sealed_at_unix_s - real_time()) < 60
        monkeypatch.setattr(time, "time", lambda: real_time() - 86400)
        seen = b.ensure_device("e" * 64, {"cpu": {"model": "new"}})
        assert abs(seen.first_seen_unix_s - real_time()) < 60  # the server's clock, not b's


def test_full_disk_under_a_run_directory(small_disk, record_property):
    from host.compress.policy import LayerAction, Policy
    from host.runs import EpisodeLog, EpisodeRow, RunFileError, read_json, write_json

    write_json(small_disk / "summary.json", {"kept": True})
    log = EpisodeLog(small_disk / "episodes.jsonl")
    policy = Policy("mlp", {"a": LayerAction(0.5, Precision.INT8)})
    row = EpisodeRow("ppo", 0, policy, 1.0, 0.9, 100, 100, 1.0, (1,), 1.0, seconds={"pad": 0.0})
    log.append(row)
    fill(small_disk / "ballast")
    with pytest.raises(RunFileError, match=r"cannot write .*summary.json: No space left on device; the previous"):
        write_json(small_disk / "summary.json", {"kept": False, "pad": "x" * 100_000})
    assert read_json(small_disk / "summary.json") == {"kept": True}
    assert not list(small_disk.glob("summary.json.*tmp"))
    big = EpisodeRow("ppo", 1, policy, 1.0, 0.9, 100, 100, 1.0, (1,), 1.0, seconds={"x" * 100_000: 0.0})
    with pytest.raises(RunFileError, match="cannot append episode 1 of ppo .*the episodes before it are intact"):
        log.append(big)
    (small_disk / "ballast").unlink()
    log.append(EpisodeRow("ppo", 1, policy, 1.0, 0.9, 100, 100, 1.0, (1,), 1.0))
    rows, torn = log.read()
    record_property("entries_lost", 2 - len(rows))
    assert [r.episode for r in rows] == [0, 1] and torn is None  # no half line was left between them


def test_a_search_into_a_full_disk_stops_with_a_clear_error(small_disk, tmp_path):
    from host.cli import EXIT_ERROR

    fill(small_disk / "ballast")
    env = {**os.environ, "HADMC_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "host.cli", "search", "--out", str(small_disk / "run"), "--episodes", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == EXIT_ERROR, result.stderr
    assert "hadmc: error: cannot write" in result.stderr and "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
