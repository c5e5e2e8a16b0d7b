"""Versions that never hide anything, holders that never block each other, and the models a
device's LUT is kept fresh for: against SQLite, a real PostgreSQL and the gRPC front."""

from __future__ import annotations

import hashlib
import itertools
import threading
import time

import pytest

from lut_store.exchange import diff_versions, export_version, import_version
from lut_store.keys import ops
from lut_store.records import LeaseLost, StoreError, UnknownModel
from lut_store.store import open_store
from tests.test_store import FP, FP2, KEYS, ok_entry, sealed_version

MORE = [ops.elementwise("Relu", (1, 4 * i)) for i in range(1, 9)]
IN_MODEL = [k.with_context("in-model") for k in KEYS]


def _open(store, source, owner, lease_s=60.0, fp=FP, **kwargs):
    store.ensure_device(fp, {"cpu": {"model": "test"}})
    return store.acquire_build(fp, source, owner, lease_s=lease_s, **kwargs).version


def _medians(store, version_id):
    return {e.key_hash: e.median_ms for e in store.entries(version_id)}


def test_sealing_carries_forward_what_it_did_not_measure_marked_with_its_origin(store):
    a = sealed_version(store)  # KEYS at 1..5 ms
    b = _open(store, "nightly", "night")
    assert b.parent_id == a.id
    store.add_entries(b.id, [ok_entry(KEYS[0], 1.5), ok_entry(MORE[0], 7.0)], "night")
    sealed_b = store.seal(b.id, "night")
    assert sealed_b.entry_count == 6 and store.latest(FP).id == b.id
    got = {e.key_hash: e for e in store.entries(b.id)}
    assert got[KEYS[0].hash].median_ms == 1.5 and got[KEYS[0].hash].measured_in_uid is None  # its own
    assert got[KEYS[1].hash].measured_in_uid == a.uid  # carried, with its original time (its age)
    original = store.lookup(a.id, [KEYS[1].hash]).entries[KEYS[1].hash]
    assert got[KEYS[1].hash].measured_at_unix_s == original.measured_at_unix_s
    c = _open(store, "search", "search")
    store.add_entries(c.id, [ok_entry(MORE[1], 8.0)], "search")
    store.seal(c.id, "search")
    marks = {e.key_hash: e.measured_in_uid for e in store.entries(c.id)}
    # An entry carried twice still names the version it was measured in.
    assert marks[KEYS[1].hash] == a.uid and marks[KEYS[0].hash] == b.uid and marks[MORE[1].hash] is None
    d = diff_versions(store, b.id, c.id)
    assert d.common == 0 and d.carried == 6 and d.only_in_b == 1
    d = diff_versions(store, a.id, b.id)
    assert d.common == 1 and d.carried == 4 and d.most_changed[0].ratio == pytest.approx(1.5)


@pytest.mark.parametrize("order", list(itertools.permutations(("nightly", "search", "manual"))))
def test_concurrent_holders_of_one_fingerprint_lose_nothing_whatever_the_sealing_order(store, order):
    """A nightly run, a search's predictor and a `lut build` hold versions of one fingerprint at
    once, measure overlapping keys, and seal in any order: each seal keeps its own
    measurements, and the last sealed version holds every key any of them measured."""
    a = sealed_version(store)
    writes = {
        "nightly": [ok_entry(KEYS[0], 1.1), ok_entry(MORE[0], 2.0), ok_entry(IN_MODEL[0], 0.5)],
        "search": [ok_entry(KEYS[0], 1.2), ok_entry(IN_MODEL[0], 0.6), ok_entry(IN_MODEL[1], 0.7)],
        "manual": [ok_entry(MORE[1], 3.0), ok_entry(MORE[2], 4.0)],
    }
    versions = {source: _open(store, source, f"{source}-holder") for source in writes}
    for source, entries in writes.items():
        store.add_entries(versions[source].id, entries, f"{source}-holder")
    for source in order:
        sealed = store.seal(versions[source].id, f"{source}-holder")
        assert store.latest(FP).id == sealed.id
        own = _medians(store, sealed.id)
        assert all(own[e.key_hash] == e.median_ms for e in writes[source])
    everything = {k.hash for k in KEYS} | {e.key_hash for entries in writes.values() for e in entries}
    assert set(_medians(store, store.latest(FP).id)) == everything
    assert store.version(a.id).entry_count == 5


def test_threads_holding_versions_of_one_fingerprint_all_progress(store):
    sealed_version(store)
    owners = [f"holder-{i}" for i in range(3)]
    sources = ["nightly", "search", "manual"]
    errors: list[BaseException] = []
    made: list[int] = []

    def hold(owner, source, keys):
        try:
            version = _open(store, source, owner)
            for key in keys:
                store.add_entries(version.id, [ok_entry(key, 2.0)], owner)
                store.renew_lease(version.id, owner, 60.0)
            made.append(store.seal(version.id, owner).id)
        except BaseException as exc:  # asserted below
            errors.append(exc)

    shares = [MORE[i::3] + [IN_MODEL[i]] for i in range(3)]
    threads = [threading.Thread(target=hold, args=args) for args in zip(owners, sources, shares, strict=True)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(made) == 3
    latest = _medians(store, store.latest(FP).id)
    assert {k.hash for k in [*KEYS, *MORE, *IN_MODEL[:3]]} <= set(latest)


def test_an_elided_kernel_is_stored_as_measured_without_a_latency(store):
    from lut_store.records import Entry

    version = _open(store, "search", "s")
    elided = Entry(
        IN_MODEL[0].hash, IN_MODEL[0].canonical_json(), "elided", time.time(), reason="no runtime node: 0 ms"
    )
    store.add_entries(version.id, [elided], "s")
    [back] = store.entries(store.seal(version.id, "s").id)
    assert back == elided
    with pytest.raises(StoreError, match="needs a reason"):
        Entry("k", "{}", "elided", 0.0)


def _export_one(tmp_path, name, key, median_ms):
    with open_store(f"sqlite:///{tmp_path / f'{name}.sqlite'}") as elsewhere:
        elsewhere.ensure_device(FP, {"cpu": {"model": "test"}})
        build = elsewhere.acquire_build(FP, "manual", "there", lease_s=60)
        elsewhere.add_entries(build.version.id, [ok_entry(key, median_ms)], "there")
        elsewhere.seal(build.version.id)
        export_version(elsewhere, build.version.id, tmp_path / f"{name}.jsonl")
    return tmp_path / f"{name}.jsonl"


def test_an_import_that_becomes_the_latest_hides_nothing(store, tmp_path):
    older = _export_one(tmp_path, "older", MORE[1], 5.0)
    local = sealed_version(store)
    newer = _export_one(tmp_path, "newer", MORE[0], 9.0)
    imported = import_version(store, newer)
    assert store.latest(FP).id == imported.id
    assert set(_medians(store, imported.id)) == {k.hash for k in KEYS} | {MORE[0].hash}
    assert {e.measured_in_uid for e in store.entries(imported.id) if e.key_hash != MORE[0].hash} == {local.uid}
    # A version sealed elsewhere before the local latest is kept as it was, and is not the latest.
    old = import_version(store, older)
    assert store.latest(FP).id == imported.id and set(_medians(store, old.id)) == {MORE[1].hash}


def _onnx(seed: int) -> bytes:
    return b"onnx-bytes-" + str(seed).encode() * 50


def test_registered_models_by_sha256_most_recently_used_first_and_bounded(store):
    store.ensure_device(FP, {})
    assert store.model_limit() == 16
    first = store.register_model(FP, "/runs/a/final/ppo/model.onnx", _onnx(1), 1, ("k1", "k2", "k1"))
    assert first.evicted == () and first.model.model_sha256 == hashlib.sha256(_onnx(1)).hexdigest()
    assert first.model.kernels == ("k1", "k2", "k1") and first.model.size_bytes == len(_onnx(1))
    store.register_model(FP, "/runs/a/final/baseline_fp32.onnx", _onnx(2), 1, ("k3",))
    assert [m.name for m in store.registered_models(FP)][0] == "/runs/a/final/baseline_fp32.onnx"
    again = store.register_model(FP, "/runs/b/model.onnx", _onnx(1), 1, ("k1", "k2", "k1"))  # used again
    assert again.model.registered_at_unix_s == first.model.registered_at_unix_s
    assert [m.name for m in store.registered_models(FP)] == ["/runs/b/model.onnx", "/runs/a/final/baseline_fp32.onnx"]
    assert store.model_bytes(first.model.model_sha256) == _onnx(1)
    evicted = store.set_model_limit(1)
    assert [m.name for m in evicted] == ["/runs/a/final/baseline_fp32.onnx"] and store.model_limit() == 1
    with pytest.raises(UnknownModel, match="no registered model"):
        store.model_bytes(hashlib.sha256(_onnx(2)).hexdigest())  # its bytes went with it
    third = store.register_model(FP, "/runs/c/model.onnx", _onnx(3), 1, ("k4",))
    assert [m.name for m in third.evicted] == ["/runs/b/model.onnx"]
    # Models are per device: another device's list is its own, bytes are shared.
    store.ensure_device(FP2, {})
    store.register_model(FP2, "/runs/c/model.onnx", _onnx(3), 1, ("k4",))
    assert [m.fingerprint_hash for m in store.registered_models(FP2)] == [FP2]
    assert store.registered_models(FP)[0].model_sha256 == store.registered_models(FP2)[0].model_sha256
    with pytest.raises(StoreError, match="batch size 0"):
        store.register_model(FP, "x", _onnx(4), 0, ())
    with pytest.raises(StoreError, match="not in"):
        store.register_model("e" * 64, "x", _onnx(4), 1, ())


def test_a_large_model_is_registered_and_read_back_whole(store):
    store.ensure_device(FP, {})
    big = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: several gRPC chunks
    done = store.register_model(FP, "big.onnx", big, 2, ("k",))
    assert store.model_bytes(done.model.model_sha256) == big and done.model.batch_size == 2


def test_diff_names_the_registered_models_whose_predicted_latency_moved_most(store):
    store.ensure_device(FP, {})
    build = store.acquire_build(FP, "search", "s", lease_s=60)
    store.add_entries(build.version.id, [ok_entry(k, 1.0) for k in IN_MODEL], "s")
    a = store.seal(build.version.id, "s")
    store.register_model(FP, "steady.onnx", _onnx(1), 1, (IN_MODEL[0].hash, IN_MODEL[0].hash))
    store.register_model(FP, "slower.onnx", _onnx(2), 1, (IN_MODEL[1].hash, IN_MODEL[2].hash))
    store.register_model(FP, "unknown-kernel.onnx", _onnx(3), 1, ("not-in-any-version",))
    build = store.acquire_build(FP, "nightly", "n", lease_s=60)
    store.add_entries(build.version.id, [ok_entry(IN_MODEL[0], 1.0), ok_entry(IN_MODEL[1], 3.0)], "n")
    b = store.seal(build.version.id, "n")
    d = diff_versions(store, a.id, b.id)
    assert d.common == 2 and d.in_model == 2 and d.carried == 3
    assert [m.name for m in d.models] == ["slower.onnx", "steady.onnx"]
    slower = d.models[0]
    assert slower.predicted_a_ms == pytest.approx(2.0 * 1.01) and slower.ratio == pytest.approx(2.0)


def test_a_lease_is_kept_on_the_databases_clock(postgres_server, monkeypatch):
    """A client whose clock runs an hour ahead neither takes a live lease nor writes an
    already-expired one: PostgreSQL's clock decides."""
    url = postgres_server.new_database()
    with open_store(url) as store:
        store.ensure_device(FP, {})
        held = store.acquire_build(FP, "manual", "honest", lease_s=60)
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
        skewed = store.acquire_build(FP, "manual", "skewed", lease_s=60)
        assert not skewed.resumed and skewed.version.id != held.version.id
        assert abs(skewed.version.lease_expires_unix_s - (real_time() + 60)) < 30
        monkeypatch.undo()
        store.add_entries(held.version.id, [ok_entry(KEYS[0])], "honest")  # still the honest holder's


def test_an_older_store_is_migrated_and_keeps_what_it_held(tmp_path):
    import sqlite3

    from lut_store.sqlstore import SqliteStore

    class FirstSchema(SqliteStore):
        migrations = SqliteStore.migrations[:1]

    path = tmp_path / "old.sqlite"
    with FirstSchema(path) as old:
        assert old.applied_migrations() == ["0001_initial"]
    conn = sqlite3.connect(path)  # rows as the first schema's code wrote them
    conn.execute("INSERT INTO devices VALUES (?, '{}', 1.0)", (FP,))
    conn.execute(
        "INSERT INTO versions (uid, fingerprint_hash, status, source, created_at_unix_s, settings_json, note) "
        "VALUES ('old-uid', ?, 'open', 'manual', 1.0, '{}', '')",
        (FP,),
    )
    conn.execute(
        "INSERT INTO entries VALUES (1, ?, ?, 'ok', 2.5, 2.5, 2.6, 0.1, 2.4, 10, '{}', '{}', 2.0, '')",
        (KEYS[0].hash, KEYS[0].canonical_json()),
    )
    conn.execute("UPDATE versions SET status = 'sealed', sealed_at_unix_s = 3.0 WHERE id = 1")
    conn.commit()
    conn.close()
    with SqliteStore(path) as new:
        assert new.applied_migrations()[-1] == "0002_concurrent_versions_and_registered_models"
        assert new.latest(FP).id == 1 and new.lookup(1, [KEYS[0].hash]).entries[KEYS[0].hash].median_ms == 2.5
        assert all(e.measured_in_uid is None for e in new.entries(1))
        one = new.acquire_build(FP, "manual", "a", lease_s=60)
        two = new.acquire_build(FP, "manual", "b", lease_s=60)  # the one-open-version index is gone
        assert one.version.id != two.version.id
        with pytest.raises(LeaseLost):
            new.seal(one.version.id, "b")
        new.add_entries(one.version.id, [ok_entry(KEYS[1])], "a")
        assert {e.measured_in_uid for e in new.entries(new.seal(one.version.id, "a").id)} == {None, "old-uid"}


def test_a_lease_keeper_holds_the_version_until_it_lets_go(store):
    from lut_store.build import LeaseKeeper

    version = _open(store, "manual", "slow-builder", lease_s=0.3)
    keeper = LeaseKeeper(store, version.id, "slow-builder", 0.3).start()
    time.sleep(1.0)  # three leases long: renewed from the keeper's thread
    assert store.acquire_build(FP, "manual", "other", lease_s=60).version.id != version.id
    keeper.stop(release=True)
    resumed = store.acquire_build(FP, "manual", "third", lease_s=60)
    assert resumed.resumed and resumed.version.id == version.id
