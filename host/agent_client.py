"""Client of a device agent: every call has a timeout and bounded retries (a number of attempts,
and optionally a time within which an agent that went away may come back)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lut_store.opkey import OpKey
from lut_store.rpc import MAX_MESSAGE_BYTES
from lut_store.secrets import check_token_channel
from protos.hadmc.v1 import agent_pb2, agent_pb2_grpc, common_pb2

CHUNK_BYTES = 1024 * 1024
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
T = TypeVar("T")


class AgentError(RuntimeError):
    """An RPC that failed; names the agent, the status code and the agent's last message."""

    def __init__(
        self, address: str, code: grpc.StatusCode, details: str, attempts: int = 1, waited_s: float = 0.0
    ) -> None:
        over = f" over {waited_s:.0f} s" if waited_s >= 1 else ""
        tries = f" (after {attempts} attempts{over})" if attempts > 1 else ""
        super().__init__(f"agent at {address}: {code.name}: {details}{tries}")
        self.address = address
        self.code = code
        self.details = details


@dataclass(frozen=True)
class AgentTarget:
    """Where an agent listens and how to authenticate to it."""

    address: str
    token: str | None = None
    tls_ca: bytes | None = None
    # Name the TLS certificate is checked against, when it differs from the address host.
    tls_server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        address: str,
        token_file: Path | None = None,
        tls_ca_file: Path | None = None,
        tls_server_name: str | None = None,
    ) -> AgentTarget:
        token = Path(token_file).read_text().strip() if token_file else None
        ca = Path(tls_ca_file).read_bytes() if tls_ca_file else None
        return cls(address, token, ca, tls_server_name)


@dataclass(frozen=True)
class Endpoint:
    """Where an agent is and how it is reached, as a run records it: paths, never the token."""

    name: str  # as the run named it: a devices-file name, HOST:PORT, or "embedded"
    address: str  # the HOST:PORT connected to
    token: bool  # whether calls carry a token
    tls: bool
    tls_server_name: str | None = None
    devices_file: str | None = None  # the file the name was found in
    token_file: str | None = None
    tls_ca: str | None = None

    @classmethod
    def of(cls, target: AgentTarget, name: str | None = None) -> Endpoint:
        """What a bare target tells (no files)."""
        return cls(
            name or target.address,
            target.address,
            target.token is not None,
            target.tls_ca is not None,
            target.tls_server_name,
        )

    @property
    def label(self) -> str:
        """How errors name the agent: its name and address."""
        return self.address if self.name == self.address else f"{self.name} ({self.address})"


class AgentClient:
    """Typed calls to one agent. Use as a context manager or call `close()`.

    A call that finds the agent UNAVAILABLE is tried `retries` times with doubling backoff, and
    besides for as long as `patience_s` after its first failure (backoff at most 5 s), so that a
    long run bridges an agent restart or a dropped link; the error then names the last failure."""

    def __init__(
        self,
        target: AgentTarget,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        patience_s: float = 0.0,
        endpoint: Endpoint | None = None,
    ) -> None:
        self.target = target
        self.endpoint = endpoint or Endpoint.of(target)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.patience_s = patience_s
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Reconnect soon after an agent or link comes back (gRPC's default backoff grows to 2 min).
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        check_token_channel(target.address, target.token, target.tls_ca is not None)
        if target.tls_ca is not None:
            if target.tls_server_name:
                options.append(("grpc.ssl_target_name_override", target.tls_server_name))
            creds = grpc.ssl_channel_credentials(root_certificates=target.tls_ca)
            self._channel = grpc.secure_channel(target.address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target.address, options=options)
        self._stub = agent_pb2_grpc.DeviceAgentStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (("authorization", f"Bearer {target.token}"),) if target.token else ()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, fn: Callable[[], T]) -> T:
        first_failure: float | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except grpc.RpcError as exc:
                now = time.monotonic()
                first_failure = first_failure if first_failure is not None else now
                waited = now - first_failure
                if exc.code() not in _RETRYABLE or (attempt >= self.retries and waited >= self.patience_s):
                    raise AgentError(self.endpoint.label, exc.code(), exc.details() or "", attempt, waited) from None
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), 5.0))

    def health(self, timeout_s: float | None = None) -> str:
        """'SERVING', 'NOT_SERVING', ... of the agent's service."""
        req = health_pb2.HealthCheckRequest(service="hadmc.v1.DeviceAgent")
        resp = self._call(lambda: self._health.Check(req, timeout=timeout_s or self.timeout_s))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def info(self, timeout_s: float | None = None) -> agent_pb2.DeviceInfo:
        return self._call(
            lambda: self._stub.GetDeviceInfo(
                agent_pb2.GetDeviceInfoRequest(), timeout=timeout_s or self.timeout_s, metadata=self._metadata
            )
        )

    def reprofile(self, reason: str = "manual", timeout_s: float | None = None) -> agent_pb2.ReprofileResponse:
        """Ask the agent to re-profile its LUT into a new version now (may take minutes)."""
        req = agent_pb2.ReprofileRequest(reason=reason)
        return self._call(
            lambda: self._stub.Reprofile(req, timeout=timeout_s or max(self.timeout_s, 3600.0), metadata=self._metadata)
        )

    def profile(
        self,
        keys: Sequence[OpKey | common_pb2.OpKey],
        settings: common_pb2.MeasurementSettings | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[agent_pb2.ProfileResult]:
        """Stream one result per key, in order. Not retried once results have arrived."""
        req = agent_pb2.ProfileRequest(
            keys=[k.to_proto() if isinstance(k, OpKey) else k for k in keys], settings=settings
        )
        call = self._stub.Profile(req, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise AgentError(self.endpoint.label, exc.code(), exc.details() or "") from None
        finally:
            call.cancel()

    def benchmark(
        self,
        model: bytes | Path,
        batch_size: int = 0,
        settings: common_pb2.MeasurementSettings | None = None,
        inputs: Iterable[dict[str, bytes]] = (),
        output_names: Sequence[str] = (),
        timeout_s: float | None = None,
        per_kernel: bool = False,
    ) -> agent_pb2.BenchmarkResponse:
        """Upload a model, time it at `batch_size` (0: the model's own), return latency stats.

        `inputs`: batches mapping input names to serialized onnx.TensorProto bytes; the response
        then carries the outputs for each batch. `per_kernel`: also split the latency over the
        model's kernels (response.kernel_profile).
        """
        data = Path(model).read_bytes() if isinstance(model, Path) else bytes(model)
        batches = [
            agent_pb2.InputBatch(tensors=[agent_pb2.NamedTensor(name=n, tensor_proto=t) for n, t in b.items()])
            for b in inputs
        ]
        header = agent_pb2.BenchmarkHeader(
            model_size_bytes=len(data),
            model_sha256=hashlib.sha256(data).hexdigest(),
            batch_size=batch_size,
            settings=settings,
            output_names=list(output_names),
            per_kernel=per_kernel,
        )

        def stream() -> Iterator[agent_pb2.BenchmarkRequest]:
            yield agent_pb2.BenchmarkRequest(header=header)
            view = memoryview(data)
            for offset in range(0, len(data), CHUNK_BYTES):
                yield agent_pb2.BenchmarkRequest(model_chunk=bytes(view[offset : offset + CHUNK_BYTES]))
            for batch in batches:
                yield agent_pb2.BenchmarkRequest(inputs=batch)

        return self._call(
            lambda: self._stub.Benchmark(
                stream(), timeout=timeout_s or max(self.timeout_s, 900.0), metadata=self._metadata
            )
        )


def message_dict(msg: Any, drop: Sequence[str] = ()) -> dict[str, Any]:
    """A response message as a plain dict for JSON output, every field present."""
    from google.protobuf import json_format

    doc = json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    for name in drop:
        doc.pop(name, None)
    return doc
