"""`hadmc lut build` and friends against real agents, including crashes of the builder and the agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host.agent_client import AgentClient, AgentTarget
from host.fleet import FleetError, resolve
from lut_store.build import build_lut
from lut_store.keys.grid import GridError, expand_grid, load_grid
from lut_store.store import open_store
from tests.test_cli import _wait_ready

ROOT = Path(__file__).resolve().parent.parent
GRID = """
precisions = ["fp32", "int8"]
[[conv]]
batch = 1
in_channels = [8, 16]
size = 8
kernel = [1, 3]
fuse = [[], ["relu"]]
[[gemm]]
batch = 1
in_features = 64
out_features = [6, 10]
"""  # 16 conv + 4 gemm = 20 keys
QUICK_PROFILE = "[profile]\nmin_window_s = 0.0\nmax_time_s = 0.2\ninterference_max_cores = 64.0\n"


def hadmc(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


@pytest.fixture()
def env(tmp_path):
    return {**os.environ, "HADMC_HOME": str(tmp_path / "home")}


@pytest.fixture()
def grid(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    return path


def start_agent(tmp_path: Path, port: int = 0, profile: str = QUICK_PROFILE, name: str = "agent"):
    config = tmp_path / f"{name}.toml"
    config.write_text("[agent]\nintra_op_threads = 1\n" + profile)
    ready = tmp_path / f"{name}.ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "host.cli",
            "agent",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--config",
            str(config),
            "--ready-file",
            str(ready),
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return proc, _wait_ready(proc, ready)


def test_grid_expansion_and_errors(grid):
    keys = load_grid(grid, ["fp32"])
    assert len(keys) == 20 and {k.precision for k in keys} == {"fp32", "int8"}
    assert len(expand_grid({"conv": [{"batch": 1, "in_channels": 8, "size": 8, "kernel": 3}]}, ["fp32", "fp16"])) == 2
    with pytest.raises(GridError, match=r"did you mean \[\[conv\]\]"):
        expand_grid({"convs": [{}]}, ["fp32"])
    with pytest.raises(GridError, match="unexpected keyword argument 'channels'"):
        expand_grid({"conv": [{"batch": 1, "channels": 8, "size": 8, "kernel": 3}]}, ["fp32"])
    with pytest.raises(GridError, match="unknown precisions"):
        expand_grid({"precisions": ["int2"], "conv": [{}]}, ["fp32"])
    with pytest.raises(GridError, match="does not fit"):
        expand_grid({"conv": [{"batch": 1, "in_channels": 8, "size": 2, "kernel": 7, "padding": 0}]}, ["fp32"])
    # Whatever a grid file holds, the answer is a GridError naming the entry, never a raw exception.
    odd = [
        ({"conv": [3]}, r"\[\[conv\]\] #1 is 3: each entry is a table"),
        ({"precisions": "fp32", "conv": [{}]}, "give a list"),
        ({"conv": [{"batch": 1, "in_channels": 8, "size": 8, "kernel": 3, "stride": 0}]}, r"\[\[conv\]\] #1"),
        ({"conv": [{"batch": 1, "in_channels": "eight", "size": 8, "kernel": 3}]}, r"\[\[conv\]\] #1"),
        ({"conv": [{"batch": -1, "in_channels": 8, "size": 8, "kernel": 3}]}, r"\[\[conv\]\] #1"),
    ]
    for doc, message in odd:
        with pytest.raises(GridError, match=message):
            expand_grid(doc, ["fp32"])


def test_build_list_show_diff_export_import(tmp_path, env, grid, agent):
    first = hadmc("lut", "build", "--device", agent.address, "--grid", str(grid), "--json", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["sealed"] and report["keys_total"] == 20 and report["measured_ok"] == 20 and not report["missing"]
    second = json.loads(hadmc("lut", "build", "--device", agent.address, "--grid", str(grid), "--json", env=env).stdout)
    versions = json.loads(hadmc("lut", "list", "--json", env=env).stdout)
    assert [v["id"] for v in versions] == [second["version_id"], report["version_id"]]
    assert versions[0]["parent_id"] == report["version_id"] and versions[0]["entry_count"] == 20
    shown = json.loads(hadmc("lut", "show", str(report["version_id"]), "--json", env=env).stdout)
    assert len(shown["entries"]) == 20 and all(e["median_ms"] > 0 and e["n"] >= 2 for e in shown["entries"])
    diff = json.loads(hadmc("lut", "diff", "1", "2", "--json", env=env).stdout)
    assert diff["common"] == 20 and 0.2 < diff["median_ratio"] < 5 and len(diff["most_changed"]) == 10
    out = tmp_path / "lut.jsonl"
    assert hadmc("lut", "export", "1", "-o", str(out), env=env).returncode == 0
    other = f"sqlite:///{tmp_path / 'site-b.sqlite'}"
    imported = json.loads(hadmc("lut", "import", str(out), "--store", other, "--json", env=env).stdout)
    assert imported["status"] == "sealed" and imported["entry_count"] == 20
    out.write_text(out.read_text()[:-40])
    bad = hadmc("lut", "import", str(out), "--store", f"sqlite:///{tmp_path / 'site-c.sqlite'}", env=env)
    assert bad.returncode == 1 and "truncated" in bad.stderr
    missing = hadmc("lut", "show", "99", env=env)
    assert missing.returncode == 1 and "no LUT version 99" in missing.stderr


def test_two_devices_of_one_fingerprint_split_the_keys(tmp_path, grid):
    (a, addr_a), (b, addr_b) = start_agent(tmp_path, name="a"), start_agent(tmp_path, name="b")
    try:
        with (
            AgentClient(AgentTarget(addr_a)) as ca,
            AgentClient(AgentTarget(addr_b)) as cb,
            open_store(f"sqlite:///{tmp_path / 'lut.sqlite'}") as store,
        ):
            info = ca.info()
            assert info.fingerprint_hash == cb.info().fingerprint_hash
            calls = {"a": 0, "b": 0}

            class Counting:
                def __init__(self, client, name):
                    self.client, self.name = client, name

                def profile(self, keys, settings=None, timeout_s=None):
                    calls[self.name] += len(keys)
                    return self.client.profile(keys, settings=settings, timeout_s=timeout_s)

            from lut_store.fingerprint import document

            report = build_lut(
                store,
                info.fingerprint_hash,
                document(info.fingerprint),
                load_grid(grid, ["fp32"]),
                [Counting(ca, "a"), Counting(cb, "b")],
            )
            assert report.sealed and report.measured_ok == 20
            assert calls == {"a": 10, "b": 10}
            assert store.version(report.version_id).entry_count == 20
    finally:
        for p in (a, b):
            p.terminate()
            p.wait(30)


@pytest.fixture(params=["sqlite", "postgresql"])
def build_store(request, env):
    """Where `hadmc lut build` writes: the default SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{Path(env['HADMC_HOME']) / 'lut.sqlite'}"
    return request.getfixturevalue("postgres_server").new_database()


def _entry_count(url: str) -> int:
    try:
        with open_store(url) as store:
            return sum(v.entry_count for v in store.versions())
    except Exception:  # the builder may not have created the store yet
        return 0


def test_kill_9_of_the_builder_leaves_no_sealed_partial_and_a_rerun_completes(tmp_path, env, grid, build_store):
    slow = "[profile]\nmin_window_s = 0.4\nmax_time_s = 1.0\ninterference_max_cores = 64.0\n"
    proc, address = start_agent(tmp_path, profile=slow)
    try:
        builder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "host.cli",
                "lut",
                "build",
                "--device",
                address,
                "--grid",
                str(grid),
                "--store",
                build_store,
            ],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while _entry_count(build_store) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        builder.send_signal(signal.SIGKILL)
        builder.wait(10)
        with open_store(build_store) as store:
            if build_store.startswith("sqlite"):
                assert store.integrity_check() == "ok"
            (version,) = store.versions()
            assert version.status == "open" and 3 <= version.entry_count < 20
        rerun = hadmc(
            "lut", "build", "--device", address, "--grid", str(grid), "--store", build_store, "--json", env=env
        )
        assert rerun.returncode == 0, rerun.stderr
        report = json.loads(rerun.stdout)
        assert report["resumed"] and report["version_id"] == version.id and report["sealed"]
        assert report["already_stored"] >= 3 and report["already_stored"] + report["measured_ok"] == 20
    finally:
        proc.terminate()
        proc.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kill_9_of_the_agent_reports_missing_keys_and_a_rerun_retries_them(tmp_path, env, grid, build_store):
    port = _free_port()
    slow = "[profile]\nmin_window_s = 0.3\nmax_time_s = 1.0\ninterference_max_cores = 64.0\n"
    proc, address = start_agent(tmp_path, port=port, profile=slow)
    builder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "host.cli",
            "lut",
            "build",
            "--device",
            address,
            "--grid",
            str(grid),
            "--retries",
            "0",
            "--store",
            build_store,
            "--json",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    out, err = builder.communicate(timeout=120)
    assert builder.returncode == 3, err
    report = json.loads(out)
    assert not report["sealed"] and report["missing"]
    assert all("device error" in m["reason"] for m in report["missing"])
    proc, address = start_agent(tmp_path, port=port, profile=slow)
    try:
        rerun = hadmc(
            "lut", "build", "--device", address, "--grid", str(grid), "--store", build_store, "--json", env=env
        )
        assert rerun.returncode == 0, rerun.stderr
        again = json.loads(rerun.stdout)
        assert again["resumed"] and again["version_id"] == report["version_id"] and again["sealed"]
        assert again["measured_ok"] == len(report["missing"])
    finally:
        proc.terminate()
        proc.wait(30)


def test_an_agent_that_comes_back_within_the_retries(tmp_path, env, grid):
    port = _free_port()
    slow = "[profile]\nmin_window_s = 0.3\nmax_time_s = 1.0\ninterference_max_cores = 64.0\n"
    proc, address = start_agent(tmp_path, port=port, profile=slow)
    builder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "host.cli",
            "lut",
            "build",
            "--device",
            address,
            "--grid",
            str(grid),
            "--retries",
            "5",
            "--retry-wait",
            "3",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc, _ = start_agent(tmp_path, port=port, profile=slow)
    try:
        out, err = builder.communicate(timeout=300)
        assert builder.returncode == 0, err
        report = json.loads(out)
        assert report["sealed"] and report["measured_ok"] == 20
        assert "lut.build.retry" in err  # the failed keys were reported, then retried
    finally:
        proc.terminate()
        proc.wait(30)


def test_two_builds_of_one_fingerprint_never_mix(tmp_path, agent, grid):
    """A build never waits for another one of its fingerprint, nor writes into its version."""
    with open_store(f"sqlite:///{tmp_path / 'lut.sqlite'}") as store:
        store.ensure_device("f" * 64, {})
        other = store.acquire_build("f" * 64, "manual", "otherhost:1", lease_s=600)
        with AgentClient(AgentTarget(agent.address)) as client:
            report = build_lut(store, "f" * 64, {}, load_grid(grid, ["fp32"]), [client])
        assert report.sealed and not report.resumed and report.version_id != other.version.id
        untouched = store.version(other.version.id)
        assert untouched.status == "open" and untouched.entry_count == 0 and untouched.lease_owner == "otherhost:1"


def test_devices_file_resolves_names(tmp_path):
    path = tmp_path / "devices.toml"
    path.write_text(
        '[devices.box]\naddress = "127.0.0.1:5000"\n[devices.gpu]\naddress = "127.0.0.1:5001"\n'
        'tls_server_name = "gpu"\n'
    )
    assert resolve("box", path).address == "127.0.0.1:5000"
    assert resolve("127.0.0.1:7", path).address == "127.0.0.1:7"
    with pytest.raises(FleetError, match="did you mean 'box'"):
        resolve("bx", path)
    path.write_text('[devices.box]\naddres = "x"\n')
    with pytest.raises(FleetError, match="did you mean 'address'"):
        resolve("box", path)


def test_devices_list_reports_health_and_fingerprints(tmp_path, env, agent):
    path = tmp_path / "devices.toml"
    path.write_text(f'[devices.here]\naddress = "{agent.address}"\n[devices.gone]\naddress = "127.0.0.1:1"\n')
    result = hadmc("devices", "list", "--devices-file", str(path), "--timeout", "2", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["here"]["health"] == "SERVING" and len(rows["here"]["fingerprint_hash"]) == 64
    assert rows["gone"]["health"] == "UNREACHABLE" and "127.0.0.1:1" in rows["gone"]["error"]
    info = hadmc("agent", "info", "--device", "here", "--devices-file", str(path), "--json", env=env)
    assert json.loads(info.stdout)["fingerprint_hash"] == rows["here"]["fingerprint_hash"]


def test_lut_serve_then_a_grpc_store_url_from_the_cli(tmp_path, env, grid, agent):
    ready = tmp_path / "store.ready"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "host.cli",
            "lut",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            f"sqlite:///{tmp_path / 'served.sqlite'}",
            "--ready-file",
            str(ready),
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = "grpc://" + _wait_ready(server, ready)
        built = hadmc("lut", "build", "--device", agent.address, "--grid", str(grid), "--store", url, "--json", env=env)
        assert built.returncode == 0, built.stderr
        assert json.loads(built.stdout)["sealed"]
        listed = json.loads(hadmc("lut", "list", "--store", url, "--json", env=env).stdout)
        assert [v["entry_count"] for v in listed] == [20]
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0 and not ready.exists()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    with open_store(f"sqlite:///{tmp_path / 'served.sqlite'}") as store:
        assert store.versions()[0].entry_count == 20


def test_model_keys_sweep_channel_widths_as_the_runtime_fuses():
    import collections

    from host.lut_models import model_keys

    keys = model_keys("resnet18", ["fp32", "int8"])
    kinds = collections.Counter(k.kind for k in keys)
    assert set(kinds) == {"conv+relu", "conv+add+relu", "conv", "maxpool", "globalaveragepool", "gemm"}
    assert len(keys) == 2 * 240 and len({k.hash for k in keys}) == len(keys)
    stem = [k for k in keys if len(k.inputs) > 1 and k.inputs[1].shape[2:] == (7, 7)]
    assert {k.inputs[0].shape for k in stem} == {(1, 3, 64, 64)}  # the image input is never pruned
    widths = {k.inputs[1].shape[0] for k in keys if k.kind == "conv+add+relu"}
    assert {16, 32, 48, 64, 128, 256, 384, 512} <= widths
    with pytest.raises(ValueError, match="choices: resnet18"):
        model_keys("vgg", ["fp32"])
