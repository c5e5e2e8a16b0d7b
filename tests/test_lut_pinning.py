"""`[lut] version` and `offline` (flags --lut-version, --offline) in a search against a real agent."""

from __future__ import annotations

import json

import pytest

from host.latency import LatencyError
from host.search.run import load_search_config, run_search
from lut_store.records import StoreError
from lut_store.store import open_store

TINY = {
    "model": "mlp",
    "data": {"name": "breast-cancer"},
    "search": {"controllers": ["random"], "episodes": 2, "episode_samples": 64},
    "baseline": {"epochs": 2},
    "final_distill": {"epochs": 1},
    "device": {"benchmark_rounds": 1},
}


def _config(agent, store: str, **lut):
    device = {**TINY["device"], "name": agent.address}
    return load_search_config(None, {**TINY, "device": device, "store": store, "lut": lut})


def test_an_offline_search_stops_at_the_first_miss_naming_kernels_and_stores_nothing(agent, tmp_path, monkeypatch):
    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    store = f"sqlite:///{tmp_path / 'lut.sqlite'}"
    with pytest.raises(LatencyError, match=r"kernel\(s\) are not in the store .*\(offline\): \S+ \("):
        run_search(_config(agent, store, offline=True), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "episodes.jsonl").exists()
    with open_store(store) as lut:
        assert lut.versions() == []


def test_a_pinned_offline_search_reads_only_its_version(agent, tmp_path, monkeypatch):
    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    store = f"sqlite:///{tmp_path / 'lut.sqlite'}"
    online = run_search(_config(agent, store), tmp_path / "online", progress=False)
    sealed = max(online.lut_version_ids)  # the version this search profiled into and sealed
    # The same seed proposes the same policies: every kernel is in the sealed version.
    again = run_search(_config(agent, store, version=sealed, offline=True), tmp_path / "offline", progress=False)
    assert again.lut_version_ids == (sealed,)
    rows = [json.loads(line) for line in (tmp_path / "offline" / "episodes.jsonl").read_text().splitlines()]
    assert all(r["lut_version_ids"] == [sealed] and r["profiled_kernels"] == 0 for r in rows)
    recorded = json.loads((tmp_path / "offline" / "config.json").read_text())["lut"]
    assert recorded == {"version": sealed, "offline": True, "max_drift": 0.1, "token_file": "", "tls_ca": ""}
    with pytest.raises(StoreError, match="999"):
        run_search(_config(agent, store, version=999), tmp_path / "absent", progress=False)


def test_lut_flags_reach_the_config(tmp_path):
    from host.cli import build_parser
    from host.cli_common import lut_table

    argv = ["search", "--out", str(tmp_path), "--lut-version", "3", "--offline", "--store-tls-ca", "ca.pem"]
    args = build_parser().parse_args(argv)
    assert lut_table(args) == {"version": 3, "offline": True, "token_file": None, "tls_ca": "ca.pem"}
    assert load_search_config(None, {"lut": lut_table(args)}).lut.version == 3
    with pytest.raises(ValueError, match="version = 0"):
        load_search_config(None, {"lut": {"version": 0}})
