"""The `hadmc` command as users run it: a daemon in its own process, info, bench, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import slow_matmul_chain, small_cnn

HADMC = [sys.executable, "-m", "host.cli"]
ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*HADMC, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _wait_ready(proc: subprocess.Popen, ready: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return ready.read_text().strip()
        if proc.poll() is not None:
            raise AssertionError(f"agent exited with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError("agent did not become ready")


QUICK_BENCH = "[benchmark]\nmax_time_s = 0.3\ntarget_rel_ci = 0.05\ninterference_max_cores = 64.0\n"
# 10^6 timed runs: a benchmark that runs until cancelled.
ENDLESS_BENCH = "[benchmark]\nmin_runs = 1000000\nmax_runs = 1000000\ninterference_max_cores = 64.0\n"


def _start_daemon(tmp_path: Path, benchmark_section: str):
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\nintra_op_threads = 1\nshutdown_grace_s = 3.0\n" + benchmark_section)
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [*HADMC, "agent", "serve", "--listen", "127.0.0.1:0", "--config", str(config), "--ready-file", str(ready)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, ready


@pytest.fixture()
def daemon(tmp_path):
    proc, ready = _start_daemon(tmp_path, QUICK_BENCH)
    try:
        yield proc, _wait_ready(proc, ready), ready
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_info_and_bench_against_a_daemon_then_sigterm(daemon, tmp_path):
    proc, address, ready = daemon
    assert address.startswith("127.0.0.1:") and int(address.split(":")[1]) > 0
    info = _run("agent", "info", "--device", address, "--json")
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert doc["fingerprint"]["execution_provider"] == "CPUExecutionProvider"
    assert len(doc["fingerprint_hash"]) == 64
    model = tmp_path / "m.onnx"
    model.write_bytes(small_cnn().SerializeToString())
    bench = _run("bench", "--device", address, str(model), "--batch", "2", "--json")
    assert bench.returncode == 0, bench.stderr
    result = json.loads(bench.stdout)
    assert result["batch_size"] == 2 and result["latency"]["median_ms"] > 0
    assert result["fingerprint_hash"] == doc["fingerprint_hash"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert not ready.exists()
    log_lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    rpcs = [e for e in log_lines if e.get("event") == "rpc"]
    assert {e["method"].rsplit("/", 1)[1] for e in rpcs} >= {"GetDeviceInfo", "Benchmark"}
    assert all(e["code"] == "OK" and e["duration_ms"] >= 0 for e in rpcs)


def test_sigterm_mid_job_cancels_it_and_exits_cleanly(tmp_path):
    proc, ready = _start_daemon(tmp_path, ENDLESS_BENCH)
    try:
        address = _wait_ready(proc, ready)
        model = tmp_path / "m.onnx"
        model.write_bytes(slow_matmul_chain(n=256, depth=3).SerializeToString())
        bench = subprocess.Popen(
            [*HADMC, "bench", "--device", address, str(model)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3.0)  # the benchmark is measuring
        assert bench.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 15  # grace 3 s, then the job is cancelled
        out, err = bench.communicate(timeout=30)
        assert bench.returncode == 1 and "agent at" in err, (out, err)
        assert not ready.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_non_loopback_without_token_is_refused():
    result = _run("agent", "serve", "--listen", "0.0.0.0:0")
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0:0 beyond loopback without a token" in result.stderr


def test_unknown_config_key_is_named(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\nmax_model_mb = 5\n")
    result = _run("agent", "serve", "--config", str(config))
    assert result.returncode == 1
    assert "unknown config key 'max_model_mb'; did you mean 'max_model_mib'?" in result.stderr


def test_unreachable_device_fails_fast_naming_the_address():
    t0 = time.monotonic()
    result = _run("agent", "info", "--device", "127.0.0.1:1", "--timeout", "2")
    assert result.returncode == 1
    assert "agent at 127.0.0.1:1: UNAVAILABLE" in result.stderr
    assert time.monotonic() - t0 < 30


def test_bench_missing_file():
    result = _run("bench", "--device", "127.0.0.1:1", "/nonexistent/model.onnx")
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_bench_with_an_embedded_agent(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(small_cnn(batch=1).SerializeToString())
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\nintra_op_threads = 1\n" + QUICK_BENCH)
    result = _run("bench", str(model), "--agent-config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["latency"]["n"] >= 5


def test_every_command_has_help():
    for args in (
        ["--help"],
        ["agent", "serve", "--help"],
        ["agent", "info", "--help"],
        ["bench", "--help"],
        ["demo", "--help"],
    ):
        result = _run(*args)
        assert result.returncode == 0 and "usage: hadmc" in result.stdout
