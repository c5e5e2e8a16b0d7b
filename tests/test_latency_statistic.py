"""The latency of record: the median by default, the 10th percentile on an agent set to it, used
alike by the agent's kernel profiles, the LUT and the host's paired speedups."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.config import AgentConfig
from device_agent.measure import measure
from device_agent.server import Agent
from host.agent_client import AgentClient, AgentTarget
from host.device import paired_latency
from host.latency.predict import LatencyPredictor
from lut_store.build import in_model_entries
from lut_store.fingerprint import differences, fingerprint_hash
from lut_store.store import open_store
from lut_store.tomlfile import ConfigError
from tests.conftest import quick_config
from tests.helpers import small_cnn
from tests.test_measure import settings


def _two_speeds() -> object:
    """A run that takes 1 ms three times in four and 4 ms otherwise: median 1 ms, mean 1.75 ms."""
    count = iter(range(10**9))
    return lambda: time.sleep(0.004 if next(count) % 4 == 3 else 0.001)


@pytest.mark.parametrize("statistic", ["median", "p10"])
def test_the_window_reports_its_latency_of_record(statistic):
    stats = measure(_two_speeds(), settings(target_rel_ci=0.5), (), lambda: False, statistic)
    assert stats.p10_ms <= stats.median_ms < stats.mean_ms
    assert stats.latency_ms == (stats.p10_ms if statistic == "p10" else stats.median_ms)


def test_a_latency_statistic_the_agent_does_not_know_is_refused():
    with pytest.raises(ConfigError, match="latency_statistic = 'p50'; allowed: 'median', 'p10'"):
        AgentConfig(latency_statistic="p50")


def test_devices_measured_before_the_field_keep_their_hash_and_p10_gets_its_own():
    doc = {"profiler_version": "1", "cpu": {"model": "X"}, "intra_op_threads": 1}
    median = {**doc, "latency_statistic": "median"}
    p10 = {**doc, "latency_statistic": "p10"}
    assert fingerprint_hash(doc) == fingerprint_hash(median) == fingerprint_hash({**doc, "latency_statistic": ""})
    assert fingerprint_hash(p10) != fingerprint_hash(doc)
    assert differences(doc, p10) == {"latency_statistic": ("median", "p10")}
    assert differences(doc, median) == {}


@pytest.fixture(scope="module")
def p10_agent() -> Iterator[Agent]:
    running = Agent(quick_config(latency_statistic="p10")).start()
    try:
        yield running
    finally:
        running.stop(grace_s=1.0)


def test_a_p10_agent_profiles_measures_and_pairs_at_its_10th_percentile(p10_agent, agent, tmp_path: Path):
    small, large = tmp_path / "small.onnx", tmp_path / "large.onnx"
    small.write_bytes(small_cnn(batch=1, channels=8).SerializeToString())
    large.write_bytes(small_cnn(batch=1, channels=32).SerializeToString())
    with AgentClient(AgentTarget(p10_agent.address)) as client, AgentClient(AgentTarget(agent.address)) as median:
        info = client.info()
        assert info.fingerprint.latency_statistic == "p10"
        assert "latency_statistic" in info.fingerprint.hashed_fields
        # Its own LUT: the same machine and runtime measured at the median is another device.
        assert info.fingerprint_hash != median.info().fingerprint_hash
        resp = client.benchmark(large, batch_size=1, per_kernel=True)
        assert resp.latency.latency_ms == resp.latency.p10_ms <= resp.latency.median_ms
        assert resp.throughput_per_s == pytest.approx(1000.0 / resp.latency.p10_ms)
        kernels = [k.latency.latency_ms for k in resp.kernel_profile.kernels if k.runtime_nodes]
        attributed = sum(kernels) + resp.kernel_profile.unattributed_ms
        assert attributed == pytest.approx(resp.latency.p10_ms, rel=1e-6)
        paired = paired_latency(client, small, large, rounds=3)
        assert paired.model.record_ms == paired.model.p10_ms and paired.baseline.record_ms == paired.baseline.p10_ms
        assert paired.speedup == pytest.approx(paired.baseline.record_ms / paired.model.record_ms)
        assert [r.model_ms for r in paired.rounds].count(paired.model.record_ms) >= 1
        # What the LUT stores of that profile: the kernels' shares of the 10th percentile.
        profile = in_model_entries(resp)
        stored = sum(profile.entries[h].mean_ms or 0.0 for h in profile.kernels)
        assert stored + resp.kernel_profile.unattributed_ms == pytest.approx(resp.latency.p10_ms, rel=1e-6)
        assert all(e.settings["latency_ms"] == e.mean_ms for e in profile.entries.values() if e.status == "ok")
        with open_store(f"sqlite:///{tmp_path / 'lut.sqlite'}") as store:
            predictor = LatencyPredictor.for_device(store, client)
            pred = predictor.predict(large)
            predictor.close()
        # Its own profile's kernels, never more than the 10th percentile it measured.
        assert pred.measured_ms is not None and 0 < pred.latency_ms <= pred.measured_ms * (1 + 1e-9)
