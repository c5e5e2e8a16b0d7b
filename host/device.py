"""The host's one boundary to a device: what it can be asked (`Device`), how a run names it
(`DeviceConfig`), and the measurements every driver makes through it.

`AgentClient` implements `Device` for an agent anywhere; with no address, `open_device` starts
an embedded agent on 127.0.0.1 (host/embedded.py, the only host module that imports the agent).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from onnx import TensorProto, numpy_helper

from host.runs import Latency, Round
from lut_store.opkey import OpKey
from protos.hadmc.v1 import agent_pb2, common_pb2


class Device(Protocol):
    """A device agent as the host uses it (host.agent_client.AgentClient fits)."""

    def info(self, timeout_s: float | None = None) -> agent_pb2.DeviceInfo: ...

    def profile(
        self,
        keys: Sequence[OpKey | common_pb2.OpKey],
        settings: common_pb2.MeasurementSettings | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[agent_pb2.ProfileResult]: ...

    def benchmark(
        self,
        model: bytes | Path,
        batch_size: int = 0,
        settings: common_pb2.MeasurementSettings | None = None,
        inputs: Iterable[dict[str, bytes]] = (),
        output_names: Sequence[str] = (),
        timeout_s: float | None = None,
        per_kernel: bool = False,
    ) -> agent_pb2.BenchmarkResponse: ...


@dataclass(frozen=True)
class DeviceConfig:
    """`[device]`: the agent a run measures on, and how it measures final models."""

    address: str = ""  # HOST:PORT of an agent; empty starts an embedded agent
    threads: int = 1  # intra-op threads of an embedded agent
    benchmark_rounds: int = 3  # interleaved benchmarks of each final model and the FP32 model
    benchmark_batch: int = 1

    def __post_init__(self) -> None:
        if self.threads < 1 or self.benchmark_rounds < 1 or self.benchmark_batch < 1:
            raise ValueError(
                f"threads = {self.threads}, benchmark_rounds = {self.benchmark_rounds} and benchmark_batch = "
                f"{self.benchmark_batch} must each be at least 1"
            )


@contextmanager
def open_device(config: DeviceConfig) -> Iterator[Device]:
    """A client of the agent at `config.address`, or of an embedded one (calls time out after
    60 s, with bounded retries)."""
    from contextlib import nullcontext

    from host.agent_client import AgentClient, AgentTarget
    from host.embedded import embedded_agent_with

    context = (
        nullcontext(AgentTarget(config.address))
        if config.address
        else embedded_agent_with(intra_op_threads=config.threads)
    )
    with context as target, AgentClient(target, timeout_s=60, retries=3) as client:
        yield client


def _batches(x: np.ndarray, size: int) -> Iterator[dict[str, bytes]]:
    for start in range(0, len(x), size):
        batch = np.ascontiguousarray(x[start : start + size])
        yield {"input": numpy_helper.from_array(batch).SerializeToString()}


def device_accuracy(device: Device, model_path: Path, x: np.ndarray, y: np.ndarray, batch: int = 1) -> float:
    """Top-1 accuracy of the model as the device's runtime computes it on inputs `x`."""
    resp = device.benchmark(model_path, batch_size=batch, inputs=list(_batches(x, 64)))
    logits = np.concatenate(
        [numpy_helper.to_array(TensorProto.FromString(out.tensors[0].tensor_proto)) for out in resp.outputs]
    )
    return float((logits.argmax(axis=1) == y).mean())


@dataclass(frozen=True)
class PairedLatency:
    """A model's speedup over a reference from interleaved benchmarks on one device."""

    speedup: float  # median of the reference's medians / median of the model's medians
    model: Latency  # the model's median round
    baseline: Latency  # the reference's median round
    model_doc: dict[str, Any]  # the whole benchmark response of the model's median round
    baseline_doc: dict[str, Any]
    rounds: tuple[Round, ...]


def paired_latency(
    device: Device, model_path: Path, baseline_path: Path, rounds: int = 3, batch: int = 1
) -> PairedLatency:
    """Benchmark the model and the reference in turn, `rounds` times each. A CPU shared with other
    tenants drifts by tens of percent within minutes, unseen by the agent's interference check
    (the FP32 ResNet18 at one thread took 4.0 to 6.8 ms within one search here), so a speedup is
    a ratio of measurements taken side by side, with every round kept."""
    from host.agent_client import message_dict

    if rounds < 1:
        raise ValueError(f"rounds = {rounds}: a speedup needs at least one measurement of each model")
    model_runs, baseline_runs = [], []
    for _ in range(rounds):
        model_runs.append(device.benchmark(model_path, batch_size=batch))
        baseline_runs.append(device.benchmark(baseline_path, batch_size=batch))

    def middle(runs: list[agent_pb2.BenchmarkResponse]) -> agent_pb2.BenchmarkResponse:
        return sorted(runs, key=lambda r: r.latency.median_ms)[(len(runs) - 1) // 2]

    model, baseline = middle(model_runs), middle(baseline_runs)
    return PairedLatency(
        baseline.latency.median_ms / model.latency.median_ms,
        Latency.of(model.latency),
        Latency.of(baseline.latency),
        message_dict(model),
        message_dict(baseline),
        tuple(Round(m.latency.median_ms, b.latency.median_ms) for m, b in zip(model_runs, baseline_runs, strict=True)),
    )
