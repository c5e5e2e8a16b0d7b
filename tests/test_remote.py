"""The main job against a remote device: an agent with a token and TLS in its own network
namespace, named in a devices file, reached over a veth pair (and over a slow, dropping link).

Link shaping: `tc netem` (80 ms delay, 1% loss) where the kernel has it; otherwise (no netem in
the kernel, as on the CI machines) a delaying TCP relay on the host adds 80 ms each way to every
chunk it forwards. The test prints which one ran.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from host.agent_client import AgentError
from host.cli import main
from host.device import DeviceConfig, open_device
from host.search.run import load_search_config, run_search
from lut_store.store import open_store
from tests.remote import ROOT, AgentProcess, DelayRelay, Namespace, make_pki, netns_unavailable

TOKEN = "remote-device-token-0123456789"
SERVER_NAME = "hadmc-dev"
TINY = (
    'model = "mlp"\n[data]\nname = "breast-cancer"\n[baseline]\nepochs = 2\n'
    "[device]\nreconnect_s = 3.0\nbenchmark_rounds = 1\n"
)
SEARCH = TINY + '[search]\ncontrollers = ["random"]\nepisodes = 4\nepisode_samples = 64\n[final_distill]\nepochs = 1\n'
COMPRESS = TINY + "[distill]\nepochs = 1\n"

pytestmark = pytest.mark.skipif(bool(netns_unavailable()), reason=netns_unavailable() or "")


class Remote:
    """The namespace, its certificates and token, one agent in it, and the devices file."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.home = directory / "home"
        self.token_file = directory / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.pki = make_pki(directory / "pki", SERVER_NAME)
        self.ns = Namespace().create()
        self.agents: list[AgentProcess] = []
        self.relays: list[DelayRelay] = []
        self.devices_file = directory / "devices.toml"
        self.agent = self.start_agent("agent")
        self.entries: dict[str, dict[str, str]] = {}
        self.name("dev", self.agent.address)

    def start_agent(self, label: str) -> AgentProcess:
        agent = AgentProcess(self.ns, self.dir / label, self.token_file, self.pki, self.home)
        self.agents.append(agent)
        return agent

    def relay(self, delay_s: float) -> DelayRelay:
        relay = DelayRelay(self.agent.address, delay_s)
        self.relays.append(relay)
        return relay

    def name(self, name: str, address: str, **fields: str) -> None:
        """Add (or replace) a devices-file entry: the agent's token and CA unless `fields` say otherwise."""
        entry = {
            "address": address,
            "token_file": str(self.token_file),
            "tls_ca": str(self.pki.ca),
            "tls_server_name": SERVER_NAME,
        }
        entry.update(fields)
        self.entries[name] = {k: v for k, v in entry.items() if v}
        self.devices_file.write_text(
            "".join(
                f"[devices.{n}]\n{''.join(f'{k} = {json.dumps(v)}' + chr(10) for k, v in e.items())}"
                for n, e in self.entries.items()
            )
        )

    def close(self) -> None:
        for relay in self.relays:
            relay.close()
        for agent in self.agents:
            agent.kill()
        self.ns.delete()


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    made = Remote(tmp_path_factory.mktemp("remote"))
    try:
        yield made
    finally:
        made.close()


def _files_text(directory: Path) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in directory.rglob("*") if p.is_file())


def _lose_agent_mid_search(remote: Remote, agent: AgentProcess, argv: list[str], episodes: Path) -> str:
    """Start the search, kill its agent after the first episode; the search's stderr once it stopped."""
    env = {**os.environ, "HADMC_HOME": str(remote.home)}
    search = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and search.poll() is None:
        if episodes.exists() and episodes.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert search.poll() is None, "the search ended before its agent could be taken away"
    agent.kill()
    t0 = time.monotonic()
    _, err = search.communicate(timeout=120)
    assert search.returncode == 1 and time.monotonic() - t0 < 60, err[-2000:]
    return err


def test_search_and_compress_by_name_on_a_secured_agent_in_a_namespace(remote, tmp_path, monkeypatch, capsys):
    """By devices-file name over the veth pair with token and TLS: a search whose agent goes away
    mid-search stops with a clear error, `--resume` finishes it once the agent is back (at a new
    port the devices file now names), then a compress, and a compress pinned to the sealed LUT
    version offline."""
    agent = remote.start_agent("agent-a")
    remote.name("dev-a", agent.address)
    config, store = tmp_path / "search.toml", f"sqlite:///{tmp_path / 'lut.sqlite'}"
    config.write_text(SEARCH)
    out = tmp_path / "run"
    device = ("--device", "dev-a", "--devices-file", str(remote.devices_file), "--store", store)
    argv = [sys.executable, "-m", "host.cli", "search", "--config", str(config), *device, "--out", str(out)]
    err = _lose_agent_mid_search(remote, agent, argv, out / "episodes.jsonl")
    assert "hadmc: error: " in err and f"dev-a ({agent.address})" in err and "UNAVAILABLE" in err, err[-2000:]
    assert "attempts over" in err, err[-2000:]  # waited [device] reconnect_s, then said so

    back = remote.start_agent("agent-a2")
    remote.name("dev-a", back.address)
    monkeypatch.setenv("HADMC_HOME", str(remote.home))  # the rest runs in this process
    assert main(["search", *device, "--out", str(out), "--resume", "--json"]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["episode"] for r in rows) == [0, 1, 2, 3]
    recorded = json.loads((out / "device.json").read_text())["endpoint"]
    assert recorded == {
        "name": "dev-a",
        "address": back.address,
        "token": True,
        "tls": True,
        "tls_server_name": SERVER_NAME,
        "devices_file": str(remote.devices_file),
        "token_file": str(remote.token_file),
        "tls_ca": str(remote.pki.ca),
    }
    assert json.loads((out / "config.json").read_text())["device"]["name"] == "dev-a"
    assert TOKEN not in _files_text(out)

    compress = tmp_path / "compress.toml"
    compress.write_text(COMPRESS)
    policy = tmp_path / "policy.json"
    assert main(["policy", "init", "--model", "mlp", "--classes", "2", "--input-shape", "30", "-o", str(policy)]) == 0
    compress_args = ("compress", "--config", str(compress), "--policy", str(policy), *device)
    assert main([*compress_args, "--out", str(tmp_path / "c")]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["device"]["name"] == "dev-a" and summary["compressed"]["measured_latency"]["median_ms"] > 0
    assert TOKEN not in _files_text(tmp_path / "c")

    # Pinned and offline: every kernel of this policy is in the newest sealed version now.
    with open_store(store) as lut:
        newest = max(v.id for v in lut.versions() if v.status == "sealed")
    offline_out = tmp_path / "c-offline"
    pinned = ("--lut-version", str(newest), "--offline")
    assert main([*compress_args, *pinned, "--out", str(offline_out)]) == 0, capsys.readouterr().err
    assert json.loads((offline_out / "config.json").read_text())["lut"] == {
        "version": newest,
        "offline": True,
        "max_drift": 0.1,
        "token_file": "",
        "tls_ca": "",
    }
    assert json.loads((offline_out / "summary.json").read_text())["compressed"]["predicted_latency_ms"] > 0


def _search_wall_s(remote: Remote, name: str, out: Path, store: str) -> tuple[float, dict]:
    config = load_search_config(
        None,
        {
            "model": "mlp",
            "data": {"name": "breast-cancer"},
            "baseline": {"epochs": 2},
            "search": {"controllers": ["random"], "episodes": 2, "episode_samples": 64},
            "final_distill": {"epochs": 1},
            "device": {"name": name, "devices_file": str(remote.devices_file), "benchmark_rounds": 1},
            "store": store,
        },
    )
    t0 = time.monotonic()
    run_search(config, out, progress=False)
    return time.monotonic() - t0, json.loads((out / "baseline.json").read_text())


def test_a_shaped_link_slows_the_search_but_not_what_the_device_measures(remote, tmp_path, monkeypatch):
    monkeypatch.setenv("HADMC_HOME", str(remote.home))
    # A store each: both searches profile their kernels on the device, over their own route.
    plain_s, _ = _search_wall_s(remote, "dev", tmp_path / "plain", f"sqlite:///{tmp_path / 'plain.sqlite'}")
    relay = None
    if remote.ns.netem(80, 1.0):
        how, shaped_name = "tc netem: 80 ms delay and 1% loss each way on the veth pair", "dev"
    else:
        relay = remote.relay(0.080)
        remote.name("dev-slow", relay.address)
        how, shaped_name = (
            "no netem in this kernel: a relay delaying every forwarded chunk by 80 ms each way",
            "dev-slow",
        )
    try:
        shaped_s, shaped = _search_wall_s(remote, shaped_name, tmp_path / "shaped", f"sqlite:///{tmp_path / 's.db'}")
    finally:
        remote.ns.unshape()
    assert relay is None or relay.chunks > 0
    # The same FP32 model benchmarked now over the unshaped route: the device's latency does not
    # include the link's, so the two agree within the noise of a shared CPU.
    with open_device(DeviceConfig(name="dev", devices_file=str(remote.devices_file))) as device:
        direct = device.benchmark(tmp_path / "shaped" / "final" / "baseline_fp32.onnx", batch_size=1)
    ratio = shaped["measured_latency"]["median_ms"] / direct.latency.median_ms
    print(
        f"\nshaped link: {how}; search wall {shaped_s:.1f} s shaped vs {plain_s:.1f} s unshaped; FP32 median "
        f"{shaped['measured_latency']['median_ms']:.4f} ms recorded over the shaped link vs "
        f"{direct.latency.median_ms:.4f} ms over the unshaped route (ratio {ratio:.2f})"
    )
    assert 0.2 < ratio < 5.0, (how, ratio)  # the link alone adds 160 ms, thousands of times the model's


@pytest.fixture()
def relay(remote):
    made = remote.relay(0.0)
    remote.name("dev-relay", made.address)
    return made


def test_calls_wait_for_a_dropped_link_within_reconnect_s_then_say_why(remote, relay):
    config = DeviceConfig(name="dev-relay", devices_file=str(remote.devices_file), reconnect_s=20.0)
    with open_device(config) as device:
        relay.down()
        threading.Timer(3.0, relay.up).start()
        t0 = time.monotonic()
        assert device.info().fingerprint_hash  # bridged
        assert time.monotonic() - t0 >= 2.0
    with open_device(DeviceConfig(name="dev-relay", devices_file=str(remote.devices_file), reconnect_s=1.0)) as device:
        relay.down()
        try:
            with pytest.raises(
                AgentError, match=r"dev-relay \(127\.0\.0\.1:\d+\): UNAVAILABLE: .*attempts over"
            ) as exc:
                device.info()
        finally:
            relay.up()
        assert exc.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow
def test_a_search_bridges_a_30_s_link_drop(remote, relay, tmp_path):
    config = tmp_path / "search.toml"
    config.write_text(SEARCH.replace("reconnect_s = 3.0", "reconnect_s = 90.0"))
    out = tmp_path / "run"
    argv = [*("search", "--config", str(config), "--device", "dev-relay", "--devices-file", str(remote.devices_file))]
    env = {**os.environ, "HADMC_HOME": str(remote.home)}
    store = ("--store", f"sqlite:///{tmp_path / 'lut.sqlite'}", "--out", str(out))
    search = subprocess.Popen(
        [sys.executable, "-m", "host.cli", *argv, *store], cwd=ROOT, env=env, text=True, stderr=subprocess.PIPE
    )
    while search.poll() is None and not ((out / "episodes.jsonl").exists() and (out / "episodes.jsonl").read_text()):
        time.sleep(0.05)
    relay.down()
    time.sleep(30)
    relay.up()
    _, err = search.communicate(timeout=300)
    assert search.returncode == 0, err[-2000:]
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"token_file": ""}, "UNAUTHENTICATED: missing 'authorization"),
        ({"token_file": "wrong.token"}, "UNAUTHENTICATED: invalid token"),
        ({"token_file": "absent.token"}, r"device bad: cannot read .*absent\.token: No such file"),
        ({"tls_ca": "absent-ca.pem"}, r"device bad: cannot read .*absent-ca\.pem: No such file"),
        ({"tls_server_name": "not-hadmc-dev"}, "UNAVAILABLE: .*Hostname Verification Check failed"),
        ({"tls_ca": "other-ca.pem"}, "UNAVAILABLE: .*Tls handshake failed.*certificate"),
    ],
    ids=["no-token", "wrong-token", "unreadable-token-file", "unreadable-ca", "tls-name-mismatch", "untrusted-ca"],
)
def test_bad_credentials_are_clear_errors_and_the_agent_keeps_serving(remote, fields, message, capsys):
    (remote.dir / "wrong.token").write_text("not-the-token-0123456789")
    if not (remote.dir / "other-ca.pem").exists():
        make_pki(remote.dir / "other", SERVER_NAME).ca.rename(remote.dir / "other-ca.pem")
    fields = {k: str(remote.dir / v) if v and k in ("token_file", "tls_ca") else v for k, v in fields.items()}
    remote.name("bad", remote.agent.address, **fields)
    assert main(["agent", "info", "--device", "bad", "--devices-file", str(remote.devices_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hadmc: error: ") and re.search(message, err), err
    assert main(["agent", "info", "--device", "dev", "--devices-file", str(remote.devices_file), "--json"]) == 0


def test_a_search_with_a_wrong_token_stops_before_any_work(remote, tmp_path, monkeypatch):
    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    (remote.dir / "wrong.token").write_text("not-the-token-0123456789")
    remote.name("bad-token", remote.agent.address, token_file=str(remote.dir / "wrong.token"))
    config = load_search_config(
        None, {"model": "mlp", "device": {"name": "bad-token", "devices_file": str(remote.devices_file)}}
    )
    with pytest.raises(AgentError, match=r"bad-token \(10\.[\d.]+:\d+\): UNAUTHENTICATED: invalid token"):
        run_search(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "home" / "baselines").exists()
