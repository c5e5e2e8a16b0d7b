"""Small real ONNX models and worker targets for the tests."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import time
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lut_store.precision import Precision
from lut_store.records import Entry

# What onnxruntime's CPU provider runs: every precision but bf16 (it has no bfloat16 Conv).
ORT_CPU = tuple(p for p in Precision if p is not Precision.BF16)


def small_cnn(
    batch: int | str = "batch", channels: int = 8, size: int = 16, classes: int = 4, seed: int = 0
) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, with a (by default) dynamic batch."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")
    fw = numpy_helper.from_array(rng.standard_normal((classes, channels)).astype(np.float32), "fw")
    fb = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "fb")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])],
        [w, b, fw, fb],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def slow_matmul_chain(n: int = 2048, depth: int = 8) -> onnx.ModelProto:
    """A model whose single run takes a noticeable fraction of a second on one core."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(depth):
        inits.append(numpy_helper.from_array((rng.standard_normal((n, n)) * 0.01).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        prev = f"m{i}"
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [n, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def crash_on_benchmark(conn: Any, cancelled: Any, ws: Any) -> None:
    """A worker that behaves like the real one, but dies by SIGSEGV on any Benchmark job:
    stands in for a model that crashes the runtime."""
    from device_agent.jobs import BenchmarkJob, JobError, JobFailure
    from device_agent.worker import Worker

    worker = Worker(ws, cancelled)
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        cancelled.clear()
        if isinstance(job, BenchmarkJob):
            os.kill(os.getpid(), signal.SIGSEGV)
        try:
            conn.send(worker.handle(job))
        except JobError as exc:
            conn.send(JobFailure(exc.code, str(exc)))


def leave_temp_files_and_die(conn: Any, cancelled: Any, ws: Any) -> None:
    """The real worker, except that a Benchmark job leaves a profile in its temporary directory
    and the worker is killed (SIGKILL) before it can remove it."""
    import tempfile
    from pathlib import Path

    from device_agent import worker
    from device_agent.jobs import BenchmarkJob

    real = worker.Worker.handle

    def handle(self: Any, job: Any) -> Any:
        if isinstance(job, BenchmarkJob):
            Path(tempfile.mkdtemp(prefix="hadmc-kprof-"), "profile.json").write_text("{}")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, job)

    worker.Worker.handle = handle
    worker.worker_main(conn, cancelled, ws)


class LogRecorder:
    """Stands in for a module's structlog logger (monkeypatch `module.log`): records every call as
    (level, event, fields), whatever structlog's global configuration caches."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def record(event: str, **fields: Any) -> None:
            self.entries.append((level, event, fields))

        return record


def memory_hog(elements: int = 1 << 24) -> onnx.ModelProto:
    """A small model whose run holds several large tensors at once: x (1, elements) scaled four
    ways and concatenated (1 << 24 elements: 64 MiB in, 256 MiB out, over 400 MiB resident)."""
    scales = [numpy_helper.from_array(np.array([s], np.float32), f"s{s}") for s in (1, 2, 3, 4)]
    nodes = [helper.make_node("Mul", ["x", f"s{s}"], [f"m{s}"]) for s in (1, 2, 3, 4)]
    nodes.append(helper.make_node("Concat", [f"m{s}" for s in (1, 2, 3, 4)], ["y"], axis=1))
    graph = helper.make_graph(
        nodes,
        "hog",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, elements])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4 * elements])],
        scales,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def synthetic_entries(prefix: str, n: int, pad: int = 0) -> list[Entry]:
    """`n` entries whose keys are named by `prefix` (their key hashes are true, as imports check)."""
    keys = [json.dumps({"k": f"{prefix}-{i}", "pad": "x" * pad}) for i in range(n)]
    return [
        Entry(
            key_hash=hashlib.sha256(key.encode()).hexdigest(),
            key_json=key,
            status="ok",
            measured_at_unix_s=time.time(),
            median_ms=1.0 + i,
            mean_ms=1.0 + i,
            p90_ms=1.1 + i,
            std_ms=0.1,
            min_ms=0.9,
            n=10,
        )
        for i, key in enumerate(keys)
    ]


@functools.cache
def ort_int8_saturates() -> bool:
    """Whether onnxruntime's u8s8 int8 kernels on this CPU saturate pairs of products at int16
    (x86 without VNNI: vpmaddubsw), measured on one QLinearConv: 64 products of 255 x 127 sum to
    207 x 10,000 exactly, to 105 x 10,000 when each pair is clipped to 32,767."""
    import onnxruntime as ort

    k = 64
    consts = {
        "xs": np.array(1.0, np.float32),
        "xz": np.array(0, np.uint8),
        "w": np.full((8, k, 1, 1), 127, np.int8),
        "ws": np.array(1.0, np.float32),
        "wz": np.array(0, np.int8),
        "ys": np.array(10_000.0, np.float32),
        "yz": np.array(0, np.uint8),
    }
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    graph = helper.make_graph(
        [node],
        "saturation",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, k, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 8, 1, 1])],
        [numpy_helper.from_array(v, n) for n, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = int(session.run(None, {"x": np.full((1, k, 1, 1), 255, np.uint8)})[0].ravel()[0])
    return got != round(k * 255 * 127 / 10_000)


def exact_int8_weight_bits() -> int:
    """The int8 weight bits onnxruntime's int8 kernels compute exactly on this CPU: 7 where pairs
    of products saturate (measured here independently of the agent's probe), else 8."""
    return 7 if ort_int8_saturates() else 8


class SlowedMoments:
    """A real agent whose per-kernel benchmarks are reported `factor` times slower (the next of
    `factors`, one per benchmark): moments when other tenants slowed the device, made
    deterministic. `responses`: what each benchmark returned, slowed."""

    def __init__(self, client: Any, factors: list[float]) -> None:
        self.client, self.factors, self.responses = client, factors, []

    def info(self, timeout_s: float | None = None) -> Any:
        return self.client.info()

    def profile(self, keys: Any, settings: Any = None, timeout_s: float | None = None) -> Any:
        return self.client.profile(keys, settings, timeout_s)

    def benchmark(self, model: Any, batch_size: int = 1, per_kernel: bool = False) -> Any:
        resp = self.client.benchmark(model, batch_size=batch_size, per_kernel=per_kernel)
        factor = self.factors.pop(0)
        measured = [k.latency for k in resp.kernel_profile.kernels if k.HasField("latency")]  # not the elided
        for stats in (resp.latency, *measured):
            for name in ("latency_ms", "median_ms", "mean_ms", "p10_ms"):
                setattr(stats, name, getattr(stats, name) * factor)
        self.responses.append(resp)
        return resp
