"""Nightly re-profiling: on demand, after a fingerprint change at start, after a missed run."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import onnx
import pytest

from device_agent.config import ConfigError, NightlyConfig
from device_agent.nightly import Nightly, State, last_scheduled, write_state
from device_agent.server import Agent
from host.agent_client import AgentClient, AgentError, AgentTarget
from host.latency.predict import LatencyPredictor
from lut_store.store import open_store
from protos.hadmc.v1 import agent_pb2
from tests.conftest import quick_config
from tests.helpers import SlowedMoments, small_cnn

ROOT = Path(__file__).resolve().parent.parent
GRID = (
    "[[conv]]\nbatch = 1\nin_channels = [8, 16]\nsize = 8\nkernel = [1, 3]\n"
    "[[gemm]]\nbatch = 1\nin_features = 32\nout_features = 4\n"
)


def _wait_for_state(path: Path, fingerprint_hash: str | None = None, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            state = json.loads(path.read_text())
            if fingerprint_hash is None or state["fingerprint_hash"] == fingerprint_hash:
                return state
        time.sleep(0.2)
    raise AssertionError(f"no nightly state in {path}")


@pytest.fixture()
def nightly_setup(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    store_url = f"sqlite:///{tmp_path / 'lut.sqlite'}"
    return NightlyConfig(store=store_url, grids=[str(grid)], state_file=tmp_path / "nightly.json"), store_url


def test_reprofile_now_makes_versions_with_parents_and_drift(tmp_path, nightly_setup):
    nightly, store_url = nightly_setup
    agent = Agent(quick_config(nightly=nightly)).start()
    try:
        start_run = _wait_for_state(nightly.state_file)  # first start with grids: a run by itself
        with AgentClient(AgentTarget(agent.address)) as client:
            precisions = sum(p.supported for p in client.info().precisions)
            first = client.reprofile("manual")
            assert first.sealed and first.parent_version_id == start_run["version_id"]
            assert first.keys_total == 5 * precisions  # 4 convs + 1 gemm at every precision
            assert first.measured_ok + first.unsupported + first.failed == first.keys_total
            state = json.loads(nightly.state_file.read_text())
            assert state["version_id"] == first.version_id and state["store_url"] == store_url
            second = client.reprofile("again")
            assert second.sealed and second.parent_version_id == first.version_id
            assert second.keys_total == first.keys_total
            assert 0.2 < second.drift_median_ratio < 5 and second.drift_p5_ratio <= second.drift_p95_ratio
        with open_store(store_url) as store:
            v = store.version(second.version_id)
            assert v.source == "nightly" and v.note == "again" and v.parent_id == first.version_id
    finally:
        agent.stop(grace_s=1.0)


def test_reprofile_cli_against_a_daemon(tmp_path, nightly_setup):
    nightly, store_url = nightly_setup
    config = tmp_path / "agent.toml"
    config.write_text(
        f"[agent]\nintra_op_threads = 1\n[profile]\nmin_window_s = 0.0\nmax_time_s = 0.2\n"
        f'interference_max_cores = 64.0\n[nightly]\nstore = "{store_url}"\n'
        f'grids = ["{nightly.grids[0]}"]\nstate_file = "{nightly.state_file}"\n'
    )
    ready = tmp_path / "ready"
    env = {**os.environ, "HADMC_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "host.cli",
            "agent",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            str(config),
            "--ready-file",
            str(ready),
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        from tests.test_cli import _wait_ready

        address = _wait_ready(proc, ready)
        # First start with grids configured: the agent builds its first version by itself.
        first = _wait_for_state(nightly.state_file)["version_id"]
        out = subprocess.run(
            [sys.executable, "-m", "host.cli", "agent", "reprofile", "--now", "--device", address, "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["sealed"] and int(doc["parent_version_id"]) == first
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_fingerprint_change_reprofiles_at_start_from_the_old_version_and_its_models(tmp_path, nightly_setup):
    """After a driver update the at-start re-profile builds the new fingerprint's first version
    from the old version's keys and the models registered under the old fingerprint, so a
    search on the updated device predicts them without profiling anything."""
    nightly, store_url = nightly_setup
    model = tmp_path / "model.onnx"
    onnx.save(small_cnn(batch=1), model)
    two_threads = Agent(quick_config(nightly=nightly, intra_op_threads=2)).start()
    try:
        _wait_for_state(nightly.state_file)
        with AgentClient(AgentTarget(two_threads.address)) as client, open_store(store_url) as store:
            with LatencyPredictor.for_device(store, client) as searched:
                searched.register(model)
            old = client.reprofile("before the update")
            old_fp = client.info().fingerprint_hash
            assert old.models_measured == 1
    finally:
        two_threads.stop(grace_s=1.0)
    # Same device after a "driver update": its fingerprint differs (here: the thread count).
    one_thread = Agent(quick_config(nightly=nightly, intra_op_threads=1)).start()
    try:
        new_fp = one_thread.info.fingerprint_hash
        assert new_fp != old_fp
        _wait_for_state(nightly.state_file, new_fp)
        with open_store(store_url) as store:
            latest = store.latest(new_fp)
            assert latest.parent_id == old.version_id and latest.source == "nightly"
            assert latest.note.startswith("fingerprint changed: intra_op_threads 2 -> 1")
            new_keys = {e.key_hash for e in store.entries(latest.id)}
            assert new_keys == {e.key_hash for e in store.entries(old.version_id)}
            assert all(e.measured_in_uid is None for e in store.entries(latest.id))  # nothing of the old device
            [registered] = store.registered_models(new_fp)
            assert registered.name == str(model.resolve()) and set(registered.kernels) <= new_keys
            offline = LatencyPredictor(store, new_fp, store.device(new_fp).fingerprint)
            assert offline.predict(model).version_ids == (latest.id,)
    finally:
        one_thread.stop(grace_s=1.0)


def test_reprofile_measures_registered_models_in_context_and_names_those_it_skips(tmp_path, nightly_setup):
    nightly, store_url = nightly_setup
    model = tmp_path / "model.onnx"
    onnx.save(small_cnn(batch=1, channels=16), model)
    agent = Agent(quick_config(nightly=nightly)).start()
    try:
        first = _wait_for_state(nightly.state_file)["version_id"]
        with AgentClient(AgentTarget(agent.address)) as client, open_store(store_url) as store:
            fp = client.info().fingerprint_hash
            with LatencyPredictor.for_device(store, client) as searched:
                kernels = searched.register(model).model.kernels
            search_version = store.latest(fp)
            store.register_model(fp, "/runs/old/garbage.onnx", b"these bytes are no ONNX model", 1, ("k",))
            damaged = store.register_model(fp, "/runs/old/damaged.onnx", small_cnn(batch=1).SerializeToString(), 1, ())
            _damage_blob(store_url, damaged.model.model_sha256)
            resp = client.reprofile("with models")
            assert resp.sealed and resp.parent_version_id == search_version.id != first
            assert resp.models_measured == 1 and resp.in_model_keys == len(set(kernels))
            skipped = {m.name: m.reason for m in resp.skipped_models}
            assert set(skipped) == {"/runs/old/garbage.onnx", "/runs/old/damaged.onnx"}
            assert "invalid" in skipped["/runs/old/garbage.onnx"] and "damaged" in skipped["/runs/old/damaged.onnx"]
            assert [m.name for m in resp.model_drift] == [str(model.resolve())] and resp.model_drift[0].ratio > 0
            measured = store.lookup(resp.version_id, kernels).entries
            assert set(measured) == set(kernels)
            for entry in measured.values():
                assert entry.measured_in_uid is None and entry.settings["method"] == "in-model"
                assert entry.settings["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
            assert client.health() == "SERVING"
    finally:
        agent.stop(grace_s=1.0)


def test_a_build_measures_registered_models_in_passes_and_keeps_each_ones_fastest(tmp_path, client):
    from lut_store.build import BuildPlan, build_lut, in_model_entries
    from lut_store.fingerprint import document

    data = small_cnn(batch=1, channels=16).SerializeToString()
    info = client.info()
    with open_store(f"sqlite:///{tmp_path / 'lut.sqlite'}") as store:
        store.ensure_device(info.fingerprint_hash, document(info.fingerprint))
        store.register_model(info.fingerprint_hash, "cnn", data, 1, ())
        [model] = store.registered_models(info.fingerprint_hash)
        slowed = SlowedMoments(client, [4.0, 8.0, 1.0])
        report = build_lut(
            store,
            info.fingerprint_hash,
            document(info.fingerprint),
            [],
            [slowed],
            BuildPlan(model_passes=3),
            models=[model],
        )
        assert report.sealed and report.models_measured == 1 and not report.skipped_models
        fastest = in_model_entries(slowed.responses[2]).entries
        stored = store.lookup(report.version_id, set(fastest)).entries
        assert {h: e.mean_ms for h, e in stored.items()} == {h: e.mean_ms for h, e in fastest.items()}
        [registered] = store.registered_models(info.fingerprint_hash)
        assert registered.kernels == in_model_entries(slowed.responses[0]).kernels
    with pytest.raises(ValueError, match="model_passes = 0"):
        BuildPlan(model_passes=0)


def _damage_blob(store_url: str, model_sha256: str) -> None:
    """Change a registered model's stored bytes behind the store's back (a damaged disk)."""
    conn = sqlite3.connect(store_url[len("sqlite:///") :])
    conn.execute("UPDATE model_blobs SET onnx = ? WHERE model_sha256 = ?", (b"flipped bits", model_sha256))
    conn.commit()
    conn.close()


def _info(fp_hash: str = "f" * 64) -> agent_pb2.DeviceInfo:
    info = agent_pb2.DeviceInfo(fingerprint_hash=fp_hash)
    info.fingerprint.intra_op_threads = 2
    return info


def test_a_run_missed_while_the_machine_was_off_happens_at_start(tmp_path):
    state_file = tmp_path / "state.json"
    config = quick_config(nightly=NightlyConfig(at="03:00", store="sqlite:///x", state_file=state_file))
    now = dt.datetime(2026, 11, 22, 9, 30)
    nightly = Nightly(config, runner=None, info=_info(), clock=lambda: now)
    from lut_store.fingerprint import document

    doc = document(_info().fingerprint)
    write_state(state_file, State("sqlite:///x", 1, "f" * 64, doc, dt.datetime(2026, 11, 22, 2, 0).timestamp()))
    assert nightly.due_at_start() == "missed the run scheduled at 2026-11-22T03:00"
    write_state(state_file, State("sqlite:///x", 1, "f" * 64, doc, dt.datetime(2026, 11, 22, 3, 5).timestamp()))
    assert nightly.due_at_start() is None
    assert last_scheduled("03:00", dt.datetime(2026, 11, 22, 2, 0)) == dt.datetime(2026, 11, 21, 3, 0)


def test_reprofile_without_a_store_or_keys_is_failed_precondition(tmp_path):
    bare = Agent(quick_config()).start()
    empty = Agent(
        quick_config(nightly=NightlyConfig(store=f"sqlite:///{tmp_path / 'e.sqlite'}", state_file=tmp_path / "s.json"))
    ).start()
    try:
        for agent, message in ((bare, "no LUT store configured"), (empty, "nothing to re-profile")):
            with AgentClient(AgentTarget(agent.address)) as client:
                with pytest.raises(AgentError, match=message) as exc:
                    client.reprofile()
                assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION
                assert client.health() == "SERVING"
    finally:
        bare.stop(grace_s=1.0)
        empty.stop(grace_s=1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"at": "25:00", "store": "sqlite:///x"}, "not a time of day"),
        ({"at": "03:00"}, "nightly.store is not"),
        ({"model_passes": 0}, "model_passes = 0 must be between 1 and 20"),
    ],
)
def test_bad_nightly_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        NightlyConfig(**kwargs)


def test_a_failing_run_is_logged_and_never_ends_the_schedule(monkeypatch):
    from device_agent import nightly as module
    from tests.helpers import LogRecorder

    logs = LogRecorder()
    monkeypatch.setattr(module, "log", logs)
    nightly = object.__new__(Nightly)  # only the run wrapper is under test

    def broken(reason):
        raise KeyError("a bug in a grid expansion")

    monkeypatch.setattr(nightly, "run_once", broken, raising=False)
    nightly._run_logged("scheduled run at 03:00")  # returns: the loop goes on to tomorrow's run
    ((level, _, fields),) = [e for e in logs.entries if e[1] == "nightly.crashed"]
    assert level == "exception" and "KeyError" in fields["error"] and fields["reason"] == "scheduled run at 03:00"
