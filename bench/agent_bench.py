"""Device agent benchmark: prints one JSON document.

Starts a real agent (`hadmc agent serve`, default config) in its own process on 127.0.0.1 and
measures:
  - profile throughput: distinct small conv configs per minute, with the stability they reached
    (share of keys whose median CI met the target, and the CI distribution);
  - RSS of the daemon and its measurement worker while loaded, and idle RSS once the worker
    has exited (here after 4 s idle; 60 s by default);
  - upload MiB/s of a 100 MiB model (time until the agent has received, hashed and stored every
    byte: the upload declares a wrong SHA-256 on purpose so that the agent answers DATA_LOSS right
    after, with no measurement in the timed span);
  - unary round-trip p50 / p99 (GetDeviceInfo).

Usage: python bench/agent_bench.py [--configs 200] [--model-mib 100] [--unary-calls 1000]
Targets on our 2-core CPU: >= 200 configs/min at median CI <= 3%, idle RSS <= 150 MB,
upload >= 300 MiB/s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import psutil
from onnx import TensorProto, helper, numpy_helper

from host.agent_client import AgentClient, AgentTarget
from lut_store.keys import ops
from lut_store.keys.ops import NCHW, ConvSpec
from protos.hadmc.v1 import agent_pb2, agent_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
IDLE_EXIT_S = 4.0


def start_agent(tmp: Path) -> tuple[subprocess.Popen, str]:
    """The agent with its default config, but a worker that exits after IDLE_EXIT_S idle."""
    ready = tmp / "ready"
    config = tmp / "agent.toml"
    config.write_text(f"[agent]\nworker_idle_exit_s = {IDLE_EXIT_S}\n")
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
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the agent did not start")
        time.sleep(0.1)
    return proc, ready.read_text().strip()


def small_conv_configs(n: int) -> list:
    """Distinct small conv(+relu) configs: channels 8..64, sizes 8..32, kernels 1/3, strides 1/2."""
    grid = itertools.product((8, 16, 24, 32, 48, 64), (8, 12, 16, 24, 32), (1, 3), (1, 2), ((), ("relu",)))
    keys = []
    for c, size, k, stride, fuse in grid:
        keys.append(ops.conv(NCHW(1, c, size, size), ConvSpec(c, k, stride=stride), fuse=fuse))
        if len(keys) == n:
            break
    return keys


def profile_throughput(client: AgentClient, n: int) -> dict:
    keys = small_conv_configs(n)
    t0 = time.perf_counter()
    results = list(client.profile(keys, timeout_s=3600))
    elapsed = time.perf_counter() - t0
    stats = [r.stats for r in results if r.WhichOneof("outcome") == "stats"]
    cis = [s.rel_ci95 for s in stats]
    target = stats[0].settings.target_rel_ci if stats else None
    return {
        "configs": len(keys),
        "measured": len(stats),
        "errors": [r.error.message for r in results if r.WhichOneof("outcome") == "error"][:5],
        "elapsed_s": round(elapsed, 2),
        "configs_per_minute": round(len(stats) / elapsed * 60, 1),
        "target_rel_ci": target,
        "share_stable": round(sum(s.stable for s in stats) / len(stats), 3) if stats else None,
        "share_ci_within_3pct": round(sum(c <= 0.03 for c in cis) / len(cis), 3) if cis else None,
        "rel_ci95_median": round(statistics.median(cis), 4) if cis else None,
        "rel_ci95_max": round(max(cis), 4) if cis else None,
        "runs_per_key_median": statistics.median(s.n for s in stats) if stats else None,
        "interference_retries": sum(s.attempts - 1 for s in stats),
    }


def idle_rss(pid: int, settle_s: float = 2.0) -> dict:
    time.sleep(settle_s)
    daemon = psutil.Process(pid)
    children = daemon.children(recursive=True)
    return {
        "daemon_rss_mb": round(daemon.memory_info().rss / 1e6, 1),
        "worker_rss_mb": round(sum(c.memory_info().rss for c in children) / 1e6, 1),
        "worker_processes": len(children),
    }


def big_model(mib: int, path: Path) -> int:
    """A valid single-Gemm ONNX model of about `mib` MiB."""
    n = int((mib * 2**20 / 4) ** 0.5)
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path.stat().st_size


def upload_throughput(address: str, path: Path, repeats: int = 3) -> dict:
    data = path.read_bytes()
    chunk = 1024 * 1024
    rates = []
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 2**20)]) as channel:
        stub = agent_pb2_grpc.DeviceAgentStub(channel)
        for _ in range(repeats):

            def parts():
                yield agent_pb2.BenchmarkRequest(
                    header=agent_pb2.BenchmarkHeader(model_size_bytes=len(data), model_sha256="0" * 64)
                )
                view = memoryview(data)
                for off in range(0, len(data), chunk):
                    yield agent_pb2.BenchmarkRequest(model_chunk=bytes(view[off : off + chunk]))

            t0 = time.perf_counter()
            try:
                stub.Benchmark(parts(), timeout=300)
                raise RuntimeError("expected DATA_LOSS for the deliberately wrong hash")
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.DATA_LOSS:
                    raise
            rates.append(len(data) / 2**20 / (time.perf_counter() - t0))
    return {
        "model_mib": round(len(data) / 2**20, 1),
        "chunk_kib": chunk // 1024,
        "upload_mib_per_s": round(statistics.median(rates), 1),
        "runs_mib_per_s": [round(r, 1) for r in rates],
    }


def unary_latency(client: AgentClient, calls: int) -> dict:
    for _ in range(20):
        client.info()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.info()
        times.append((time.perf_counter() - t0) * 1000)
    q = np.percentile(times, [50, 99])
    return {"calls": calls, "p50_ms": round(float(q[0]), 3), "p99_ms": round(float(q[1]), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=200)
    parser.add_argument("--model-mib", type=int, default=100)
    parser.add_argument("--unary-calls", type=int, default=1000)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hadmc-bench-") as tmp:
        proc, address = start_agent(Path(tmp))
        try:
            with AgentClient(AgentTarget(address), timeout_s=60) as client:
                info = client.info()
                result = {
                    "device": {
                        "cpu": info.fingerprint.cpu.model,
                        "provider": info.fingerprint.execution_provider,
                        "intra_op_threads": info.fingerprint.intra_op_threads,
                        "fingerprint": info.fingerprint_hash[:16],
                    },
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "rss_with_worker_loaded": idle_rss(proc.pid, settle_s=1.0),
                    "idle_rss": idle_rss(proc.pid, settle_s=IDLE_EXIT_S + 2.0),
                    "unary_get_device_info": unary_latency(client, args.unary_calls),
                    "profile": profile_throughput(client, args.configs),
                }
                model = Path(tmp) / "big.onnx"
                big_model(args.model_mib, model)
                result["upload"] = upload_throughput(address, model)
                result["idle_rss_after"] = idle_rss(proc.pid, settle_s=IDLE_EXIT_S + 2.0)
        finally:
            proc.terminate()
            proc.wait(30)
    result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = {
        "configs_per_minute>=200": result["profile"]["configs_per_minute"] >= 200,
        "ci<=3%": (result["profile"]["share_ci_within_3pct"] or 0) >= 0.95,
        "idle_rss<=150MB": result["idle_rss"]["daemon_rss_mb"] + result["idle_rss"]["worker_rss_mb"] <= 150,
        "upload>=300MiB/s": result["upload"]["upload_mib_per_s"] >= 300,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
