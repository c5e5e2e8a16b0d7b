"""LUT freshness that serves the search, end to end on real agents and real stores: a search's
models re-measured by the nightly run so the next prediction needs no device, writers of one
fingerprint that never block each other nor lose a measurement, and a store that goes away
mid-search."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from device_agent.config import NightlyConfig
from device_agent.server import Agent
from host.agent_client import AgentClient, AgentTarget
from host.cli import main
from host.latency.predict import LatencyPredictor
from host.search.run import load_search_config, run_search
from lut_store.build import build_lut
from lut_store.fingerprint import document
from lut_store.grpc_front import LutServer
from lut_store.keys.grid import load_grid
from lut_store.records import StoreError
from lut_store.sqlstore import SqliteStore
from lut_store.store import open_store
from lut_store.tomlfile import ConfigError
from tests.conftest import quick_config
from tests.helpers import small_cnn
from tests.test_nightly import GRID, _wait_for_state
from tests.test_search import MLP

TINY_SEARCH = {**MLP, "search": {"controllers": ["random"], "episodes": 2, "episode_samples": 64}}


def _cli_json(argv: list[str], capsys) -> dict:
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_after_a_search_and_a_nightly_run_the_final_model_predicts_offline_from_the_newest_version(
    tmp_path, monkeypatch, capsys
):
    """The search writes the SQLite store directly; the agent's nightly job writes the same store
    through `hadmc lut serve`'s front (grpc://), as on two machines."""
    from host import logs

    logs.configure()  # as `hadmc` does: logs on stderr, stdout for the commands' documents
    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'lut.sqlite'}"
    with SqliteStore(tmp_path / "lut.sqlite") as backing:
        server = LutServer(backing).start()
        nightly = NightlyConfig(store=f"grpc://{server.address}", state_file=tmp_path / "nightly.json")
        agent = Agent(quick_config(nightly=nightly)).start()
        try:
            out = tmp_path / "run"
            config = load_search_config(None, {**TINY_SEARCH, "device": {"name": agent.address}, "store": url})
            summary = run_search(config, out, progress=False)
            final = out / summary.controllers["random"].onnx
            with open_store(url) as store:
                fp = agent.info.fingerprint_hash
                searched = store.latest(fp)
                registered = {m.name for m in store.registered_models(fp)}
                assert registered == {str(final.resolve()), str((out / "final" / "baseline_fp32.onnx").resolve())}
            done = _cli_json(["agent", "reprofile", "--now", "--device", agent.address], capsys)
            assert done["sealed"] and int(done["parent_version_id"]) == searched.id
            assert done["models_measured"] == 2 and done["in_model_keys"] > 0 and not done["skipped_models"]
            assert {m["name"] for m in done["model_drift"]} == registered
            with open_store(url) as store:
                newest = store.latest(fp)
            assert newest.id == int(done["version_id"]) and newest.source == "nightly"
            offline = ["predict", str(final), "--device", agent.address, "--store", url, "--no-profile"]
            predicted = _cli_json(offline, capsys)
            assert predicted["version_ids"] == [newest.id] and predicted["profiled_kernels"] == 0
            assert main(offline) == 0 and f"LUT versions [{newest.id}]" in capsys.readouterr().out
            diff = _cli_json(["lut", "diff", str(searched.id), str(newest.id), "--store", url], capsys)
            assert diff["in_model"] > 0 and all("in-model" in c["kernel"] for c in diff["most_changed"])
            assert {m["name"] for m in diff["models"]} == registered
            assert main(["lut", "diff", str(searched.id), str(newest.id), "--store", url]) == 0
            text = capsys.readouterr().out
            assert f"({diff['in_model']} in-model)" in text and str(final.resolve()) in text
            assert main(["lut", "show", str(newest.id), "--store", url]) == 0
            assert f"(from v{searched.id}, " in capsys.readouterr().out  # episodes' kernels, carried forward
            kept = _cli_json(["lut", "models", "--store", url, "--keep", "1"], capsys)
            assert kept["limit"] == 1 and len(kept["models"]) == 1 and len(kept["evicted"]) == 1
        finally:
            agent.stop(grace_s=1.0)
            server.stop(grace_s=1.0)


BUILD_GRID = "[[gemm]]\nbatch = 1\nin_features = [16, 24]\nout_features = [4, 6]\n"


def _own(store, version_id: int) -> set[str]:
    """Keys a version measured itself (not carried forward)."""
    return {e.key_hash for e in store.entries(version_id) if e.measured_in_uid is None}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_nightly_run_a_search_and_a_lut_build_of_one_device_all_progress_and_lose_nothing(tmp_path, backend, request):
    url = (
        f"sqlite:///{tmp_path / 'lut.sqlite'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_server").new_database()
    )
    (tmp_path / "grid.toml").write_text(GRID)
    (tmp_path / "build.toml").write_text(BUILD_GRID)
    nightly = NightlyConfig(store=url, grids=[str(tmp_path / "grid.toml")], state_file=tmp_path / "nightly.json")
    agent = Agent(quick_config(nightly=nightly)).start()
    models = []
    for i, channels in enumerate((8, 16)):
        models.append(tmp_path / f"model{i}.onnx")
        onnx.save(small_cnn(batch=1, channels=channels, seed=i), models[-1])
    try:
        first = _wait_for_state(nightly.state_file)["version_id"]  # the agent's first run, at start
        with (
            AgentClient(AgentTarget(agent.address), timeout_s=120) as client,
            open_store(url) as search_store,
            open_store(url) as build_store,
        ):
            fp = client.info().fingerprint_hash
            searching = LatencyPredictor.for_device(search_store, client)
            searching.register(models[0])  # profiles it: the search now holds an open version
            results: dict[str, object] = {}

            def run(name, fn):
                try:
                    results[name] = fn()
                except BaseException as exc:  # asserted below
                    results[name] = exc

            keys = load_grid(tmp_path / "build.toml", ["fp32"])
            threads = [
                threading.Thread(target=run, args=("nightly", lambda: agent.nightly.run_once("during a search")[0])),
                threading.Thread(
                    target=run,
                    args=(
                        "build",
                        lambda: build_lut(build_store, fp, document(agent.info.fingerprint), keys, [client]),
                    ),
                ),
            ]
            [t.start() for t in threads]
            searching.predict(models[1])  # the search goes on meanwhile
            [t.join(300) for t in threads]
            assert build_store.version(searching.open_version.id).status == "open"  # nobody sealed it
            sealed_search = searching.close()
            nightly_report, build_report = results["nightly"], results["build"]
            assert not isinstance(nightly_report, BaseException), nightly_report
            assert not isinstance(build_report, BaseException), build_report
            assert nightly_report.sealed and nightly_report.models_measured == 1
            assert build_report.sealed and build_report.measured_ok == len(keys)
            ids = {first, nightly_report.version_id, build_report.version_id, sealed_search.id}
            assert len(ids) == 4
            newest = build_store.latest(fp)
            everything = set().union(*(_own(build_store, v) for v in ids))
            assert {e.key_hash for e in build_store.entries(newest.id)} == everything
            for model in models:  # the search's predictions stay traceable to its own version
                assert searching.predict(model).version_ids == (sealed_search.id,)
    finally:
        agent.stop(grace_s=1.0)


def _slowed(url: str, fingerprint: str, factor: float) -> int:
    """A newest sealed version of `fingerprint` with every latency `factor` times its newest one's:
    the LUT of a device that has since changed. Its id."""
    from lut_store.build import acquire

    with open_store(url) as store:
        newest = store.latest(fingerprint)
        scaled = [
            replace(e, median_ms=e.median_ms * factor, mean_ms=e.mean_ms * factor) if e.status == "ok" else e
            for e in store.entries(newest.id)
        ]
        build = acquire(store, fingerprint, "manual", "test-owner", 60.0, parent_id=newest.id)
        store.add_entries(build.version.id, scaled, owner="test-owner")
        return store.seal(build.version.id, "test-owner").id


def test_a_search_on_a_lut_the_device_has_drifted_from_profiles_afresh(agent, client, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'lut.sqlite'}"
    config = load_search_config(None, {**TINY_SEARCH, "device": {"name": agent.address}, "store": url})
    run_search(config, tmp_path / "first", progress=False)
    stale = _slowed(url, client.info().fingerprint_hash, 3.0)
    run_search(config, tmp_path / "second", progress=True)
    said = capsys.readouterr().err
    assert f"the LUT (version {stale}) predicts the FP32 model at" in said and "every kernel is profiled afresh" in said
    baseline = json.loads((tmp_path / "second" / "baseline.json").read_text())
    assert 0.5 < baseline["predicted_latency_ms"] / baseline["measured_latency"]["median_ms"] < 2.0  # was ~3x
    rows = [json.loads(line) for line in (tmp_path / "second" / "episodes.jsonl").read_text().splitlines()]
    assert all(stale not in r["lut_version_ids"] for r in rows)  # no episode read the stale version
    # Told not to (max_drift = 0), or pinned, a search uses the LUT as it is.
    stale = _slowed(url, client.info().fingerprint_hash, 3.0)
    off = replace(config, lut=replace(config.lut, max_drift=0.0)).with_search(episodes=1)
    run_search(off, tmp_path / "off", progress=True)
    assert "afresh" not in capsys.readouterr().err
    assert json.loads((tmp_path / "off" / "episodes.jsonl").read_text().splitlines()[0])["lut_version_ids"] == [stale]
    pinned = replace(config, lut=replace(config.lut, version=stale)).with_search(episodes=1)
    run_search(pinned, tmp_path / "pinned", progress=True)
    said = capsys.readouterr().err
    assert "warning: the LUT" in said and "pinned or offline, so its latencies are used as they are" in said


def test_sota_reads_its_budget_from_a_lut_checked_against_the_device(agent, client, tmp_path, monkeypatch, capsys):
    """Sota bounds every method by a fraction of the FP32 model's predicted latency: read from a
    stale LUT, that budget would be 3x off; its searches then keep the LUT it was read from."""
    from host.experiment.config import load_experiment
    from host.experiment.studies import _prepare_sota

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'lut.sqlite'}"
    experiment = load_experiment("sota", "tiny", devices=[agent.address], store=url)
    first = _prepare_sota(experiment, progress=False)  # profiles the FP32 model's kernels
    stale = _slowed(url, client.info().fingerprint_hash, 3.0)
    second = _prepare_sota(experiment, progress=True)
    said = capsys.readouterr().err
    assert f"the LUT (version {stale}) predicts the FP32 model at" in said and "every kernel is profiled afresh" in said
    assert 0.5 < second.search.search.latency_budget_ms / first.search.search.latency_budget_ms < 2.0
    assert experiment.search.lut.max_drift == 0.10 and second.search.lut.max_drift == 0.0


@pytest.mark.parametrize("value", [-0.1, 10.0])
def test_max_drift_is_a_fraction_or_0(value):
    assert load_search_config(None, {"lut": {"max_drift": 0.0}}).lut.max_drift == 0.0
    with pytest.raises(ConfigError, match=rf"max_drift = {value}: a fraction \(0.1: 10%\), or 0 to never re-profile"):
        load_search_config(None, {"lut": {"max_drift": value}})


def test_a_search_started_while_the_nightly_run_holds_its_version_does_not_die(client, tmp_path):
    model = tmp_path / "model.onnx"
    onnx.save(small_cnn(batch=1), model)
    with open_store(f"sqlite:///{tmp_path / 'lut.sqlite'}") as store:
        fp = client.info().fingerprint_hash
        store.ensure_device(fp, {})
        nightly = store.acquire_build(fp, "nightly", "device-host:4242", lease_s=600).version  # mid-run
        with LatencyPredictor.for_device(store, client) as searching:
            assert searching.predict(model).profiled_kernels > 0
        sealed = store.latest(fp)  # the search's own version, sealed as the block ended
        assert sealed.id != nightly.id and sealed.source == "search"
        untouched = store.version(nightly.id)
        assert untouched.status == "open" and untouched.lease_owner == "device-host:4242"


def test_a_predictor_keeps_its_lease_while_idle_and_releases_it_after_a_failure(client, tmp_path):
    model = tmp_path / "model.onnx"
    onnx.save(small_cnn(batch=1), model)
    with open_store(f"sqlite:///{tmp_path / 'lut.sqlite'}") as store:
        predictor = LatencyPredictor.for_device(store, client, lease_s=0.6)
        predictor.predict(model)
        held = predictor.open_version.id
        time.sleep(1.5)  # idle for more than two leases: its thread renewed it
        fp = predictor.fingerprint_hash
        other = store.acquire_build(fp, "search", "another-search", lease_s=60)
        assert not other.resumed and other.version.id != held
        predictor.release()  # what a failed search does: the version stays open, its lease let go
        after = store.acquire_build(fp, "search", "next-search", lease_s=60)
        assert after.resumed and after.version.id == held and store.version(held).entry_count > 0


def test_a_store_that_goes_away_mid_search_is_a_clear_error_and_loses_nothing_sealed(
    agent, client, tmp_path, monkeypatch
):
    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    model = tmp_path / "model.onnx"
    onnx.save(small_cnn(batch=1), model)
    with SqliteStore(tmp_path / "lut.sqlite") as backing:
        server = LutServer(backing).start()
        url = f"grpc://{server.address}"
        with open_store(url) as store, LatencyPredictor.for_device(store, client) as earlier:
            earlier.predict(model)
        fp = client.info().fingerprint_hash
        before = backing.latest(fp)
        entries_before = list(backing.entries(before.id))
        out = tmp_path / "run"
        episodes = TINY_SEARCH["search"] | {"episodes": 6}
        config = load_search_config(
            None, {**TINY_SEARCH, "search": episodes, "device": {"name": agent.address}, "store": url}
        )
        threading.Thread(target=_stop_after_first_episode, args=(server, out / "episodes.jsonl"), daemon=True).start()
        with pytest.raises(StoreError) as failure:
            run_search(config, out, progress=False)
        assert f"LUT store at {url}" in str(failure.value) and "UNAVAILABLE" in str(failure.value)
        assert "check that `hadmc lut serve` runs there" in str(failure.value)
        assert backing.integrity_check() == "ok"
        assert backing.version(before.id).status == "sealed" and list(backing.entries(before.id)) == entries_before
        [unsealed] = [v for v in backing.versions(fp) if v.status == "open"]
        assert unsealed.source == "search" and unsealed.entry_count > 0  # kept, to be resumed
        assert (out / "episodes.jsonl").read_text().strip()


def _stop_after_first_episode(server: LutServer, episodes: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (episodes.exists() and episodes.read_text().strip()):
        time.sleep(0.05)
    server.stop(grace_s=0.0)
