"""The host's one boundary to a device: what it can be asked (`Device`), how a run names it
(`DeviceConfig`), and the measurements every driver makes through it.

`open_device` is the one place a device is resolved and connected: a name from the devices file
(host/fleet.py) or HOST:PORT, with its token, TLS CA and server name, gives an `AgentClient`;
no name starts an embedded agent on 127.0.0.1 (host/embedded.py, the only host module that
imports the agent).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from onnx import TensorProto, numpy_helper

from host.agent_client import Endpoint
from host.runs import Latency, Round
from lut_store.opkey import OpKey
from protos.hadmc.v1 import agent_pb2, common_pb2


class Device(Protocol):
    """A device agent as the host uses it (host.agent_client.AgentClient fits)."""

    endpoint: Endpoint  # where it is and how it is reached, as runs record it

    def info(self, timeout_s: float | None = None) -> agent_pb2.DeviceInfo: ...

    def reprofile(self, reason: str = "manual", timeout_s: float | None = None) -> agent_pb2.ReprofileResponse: ...

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
    """`[device]`: the agent a run measures on, how to reach it, and how it measures final models."""

    name: str = ""  # a name in the devices file, or HOST:PORT; empty starts an embedded agent
    devices_file: str = ""  # empty: $HADMC_HOME/devices.toml
    # For a HOST:PORT name (a devices-file entry names its own): the agent's token and TLS CA files.
    token_file: str = ""
    tls_ca: str = ""
    tls_server_name: str = ""  # the name the agent's certificate carries, when not the address's host
    # How long a call waits for an agent that went away (restart, dropped link) before the run
    # stops with the last error; `--resume` continues it.
    reconnect_s: float = 60.0
    timeout_s: float = 60.0  # per call (a benchmark may take up to 15 min, a re-profile an hour)
    agent_config: str = ""  # agent TOML of an embedded agent (empty: the defaults)
    threads: int = 1  # intra-op threads of an embedded agent (0: as agent_config says; default all cores)
    # The runtime of an embedded agent, "onnxruntime" or "openvino" (empty: as agent_config says); a
    # named device runs what its agent was started with.
    runtime: str = ""
    benchmark_rounds: int = 3  # interleaved benchmarks of each final model and the FP32 model
    benchmark_batch: int = 1

    def __post_init__(self) -> None:
        if self.threads < 0 or self.benchmark_rounds < 1 or self.benchmark_batch < 1:
            raise ValueError(
                f"threads = {self.threads} must be at least 0, benchmark_rounds = {self.benchmark_rounds} and "
                f"benchmark_batch = {self.benchmark_batch} at least 1"
            )
        if self.runtime and self.name:
            raise ValueError(
                f"runtime = {self.runtime!r} is for an embedded agent; device {self.name!r} runs what its agent "
                "was started with (hadmc agent serve --runtime ...)"
            )
        if self.reconnect_s < 0 or self.timeout_s <= 0:
            raise ValueError(
                f"reconnect_s = {self.reconnect_s} must be at least 0 and timeout_s = {self.timeout_s} positive"
            )

    def describe(self) -> str:
        """The device in a sentence, for messages."""
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return self.name or f"embedded {self.runtime or 'onnxruntime'} agent, {threads}"


@contextmanager
def open_device(config: DeviceConfig) -> Iterator[Device]:
    """A client of the device `config` names, resolved through the devices file, or of an
    embedded agent. The device answers (token and TLS checked) before this returns, failing fast
    when it is not there; later calls wait up to `reconnect_s` for it to come back."""
    from host.agent_client import AgentClient
    from host.embedded import embedded_agent_with
    from host.fleet import resolve

    if not config.name:
        agent_config = Path(config.agent_config) if config.agent_config else None
        with embedded_agent_with(agent_config, config.threads or None, config.runtime or None) as target:
            endpoint = Endpoint("embedded", target.address, False, False)
            with AgentClient(target, timeout_s=config.timeout_s, endpoint=endpoint) as client:
                yield client
        return
    entry = resolve(
        config.name,
        Path(config.devices_file) if config.devices_file else None,
        Path(config.token_file) if config.token_file else None,
        Path(config.tls_ca) if config.tls_ca else None,
        config.tls_server_name or None,
    )
    with AgentClient(entry.target(), timeout_s=config.timeout_s, endpoint=entry.endpoint()) as client:
        client.info()
        client.patience_s = config.reconnect_s
        yield client


def _batches(x: np.ndarray, size: int) -> Iterator[dict[str, bytes]]:
    for start in range(0, len(x), size):
        batch = np.ascontiguousarray(x[start : start + size])
        yield {"input": numpy_helper.from_array(batch).SerializeToString()}


def device_classes(device: Device, model_path: Path, x: np.ndarray, batch: int = 1) -> np.ndarray:
    """The model's top-1 class for each of the inputs `x`, as the device's runtime computes it."""
    resp = device.benchmark(model_path, batch_size=batch, inputs=list(_batches(x, 64)))
    logits = np.concatenate(
        [numpy_helper.to_array(TensorProto.FromString(out.tensors[0].tensor_proto)) for out in resp.outputs]
    )
    return logits.argmax(axis=1)


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
    device: Device,
    model_path: Path,
    baseline_path: Path,
    rounds: int = 3,
    batch: int = 1,
    baseline_device: Device | None = None,
) -> PairedLatency:
    """Benchmark the model and the reference in turn, `rounds` times each. A CPU shared with other
    tenants drifts by tens of percent within minutes, unseen by the agent's interference check
    (the FP32 ResNet18 at one thread took 4.0 to 6.8 ms within one search here), so a speedup is
    a ratio of measurements taken side by side, with every round kept. The reference runs on
    `baseline_device` when given (another runtime on the same machine), else on `device`."""
    return paired_latencies(device, [model_path], baseline_path, rounds, batch, baseline_device)[0]


def paired_latencies(
    device: Device,
    model_paths: Sequence[Path],
    baseline_path: Path,
    rounds: int = 3,
    batch: int = 1,
    baseline_device: Device | None = None,
) -> list[PairedLatency]:
    """`paired_latency` for several models in the same rounds: each round benchmarks every model,
    then the reference once. Models compared with one another are then measured side by side,
    and the reference's runs are shared (one per round instead of one per model and round)."""
    from host.agent_client import message_dict

    if rounds < 1:
        raise ValueError(f"rounds = {rounds}: a speedup needs at least one measurement of each model")
    model_runs: list[list[agent_pb2.BenchmarkResponse]] = [[] for _ in model_paths]
    baseline_runs = []
    for _ in range(rounds):
        for runs, path in zip(model_runs, model_paths, strict=True):
            runs.append(device.benchmark(path, batch_size=batch))
        baseline_runs.append((baseline_device or device).benchmark(baseline_path, batch_size=batch))

    def ms(run: agent_pb2.BenchmarkResponse) -> float:
        return Latency.of(run.latency).record_ms

    def middle(runs: list[agent_pb2.BenchmarkResponse]) -> agent_pb2.BenchmarkResponse:
        return sorted(runs, key=ms)[(len(runs) - 1) // 2]

    baseline = middle(baseline_runs)
    paired = []
    for runs in model_runs:
        model = middle(runs)
        paired.append(
            PairedLatency(
                ms(baseline) / ms(model),
                Latency.of(model.latency),
                Latency.of(baseline.latency),
                message_dict(model),
                message_dict(baseline),
                tuple(Round(ms(m), ms(b)) for m, b in zip(runs, baseline_runs, strict=True)),
            )
        )
    return paired
