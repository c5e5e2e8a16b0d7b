"""The gRPC daemon: DeviceAgent service, health service, token auth, per-RPC logging."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from device_agent import fingerprint
from device_agent.config import AgentConfig
from device_agent.jobs import (
    CANCELLED,
    CRASHED,
    EXHAUSTED,
    FAILED,
    INTERFERENCE,
    INVALID,
    TIMEOUT,
    UNSUPPORTED,
    BenchmarkJob,
    JobError,
    ProbeJob,
    ProbeResult,
    WorkerSettings,
)
from device_agent.nightly import Nightly
from device_agent.profiling import BadRequest, profile_one, resolve_settings
from device_agent.runner import MeasurementRunner, QueueFull, RunnerClosed
from lut_store.precision import Precision
from lut_store.records import LeaseLost, StoreError
from lut_store.rpc import bind, make_server, read_token
from lut_store.tomlfile import ConfigError
from protos.hadmc.v1 import agent_pb2, agent_pb2_grpc, common_pb2

log = structlog.get_logger(__name__)

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["DeviceAgent"].full_name
_STATUS = {
    INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    UNSUPPORTED: grpc.StatusCode.FAILED_PRECONDITION,
    FAILED: grpc.StatusCode.FAILED_PRECONDITION,
    CRASHED: grpc.StatusCode.INTERNAL,
    EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    INTERFERENCE: grpc.StatusCode.UNAVAILABLE,
    CANCELLED: grpc.StatusCode.CANCELLED,
}


class DeviceAgentService(agent_pb2_grpc.DeviceAgentServicer):
    def __init__(
        self,
        config: AgentConfig,
        runner: MeasurementRunner,
        info: agent_pb2.DeviceInfo,
        work_dir: Path,
        nightly: Nightly,
    ) -> None:
        self._config = config
        self._runner = runner
        self._info = info
        self._work_dir = work_dir
        self._nightly = nightly
        self._uploads = threading.BoundedSemaphore(config.max_uploads)

    def Reprofile(
        self, request: agent_pb2.ReprofileRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReprofileResponse:
        try:
            _, response = self._nightly.run_once(request.reason or "manual")
        except QueueFull as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except LeaseLost as exc:
            context.abort(grpc.StatusCode.ABORTED, str(exc))
        except (StoreError, OSError, ValueError) as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return response

    def GetDeviceInfo(
        self, request: agent_pb2.GetDeviceInfoRequest, context: grpc.ServicerContext
    ) -> agent_pb2.DeviceInfo:
        return self._info

    def _abort_job_error(self, context: grpc.ServicerContext, exc: JobError) -> None:
        context.abort(_STATUS.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))

    def Profile(
        self, request: agent_pb2.ProfileRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.ProfileResult]:
        limit = self._config.max_keys_per_request
        if not request.keys:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no keys: a ProfileRequest needs at least one OpKey")
        if len(request.keys) > limit:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(request.keys)} keys is over the agent's max_keys_per_request of {limit}; split the batch",
            )
        try:
            settings = resolve_settings(request.settings, self._config.profile)
        except BadRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            with self._runner.slot(context.is_active):
                deadline = time.monotonic() + self._config.max_profile_s
                for index, msg in enumerate(request.keys):
                    if not context.is_active():
                        return
                    if time.monotonic() > deadline:
                        context.abort(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"this call has held the device for the agent's max_profile_s of "
                            f"{self._config.max_profile_s:g} s; "
                            f"keys {index}..{len(request.keys) - 1} were not measured: send them in another call",
                        )
                    yield profile_one(self._runner, index, msg, settings, self._config.key_timeout_s, context.is_active)
        except QueueFull as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except RunnerClosed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the agent is shutting down")
        except JobError as exc:
            if exc.code != CANCELLED:
                raise
            return

    def Benchmark(
        self, request_iterator: Iterator[agent_pb2.BenchmarkRequest], context: grpc.ServicerContext
    ) -> agent_pb2.BenchmarkResponse:
        cap = self._config.max_model_bytes
        fd, path = tempfile.mkstemp(prefix="upload-", suffix=".onnx", dir=self._work_dir)
        try:
            with os.fdopen(fd, "wb") as sink:
                header, batches = self._bounded_receive(request_iterator, context, sink, cap)
            if header is None:
                return agent_pb2.BenchmarkResponse()  # the client left; nobody reads this
            try:
                settings = resolve_settings(header.settings, self._config.benchmark)
            except BadRequest as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            job = BenchmarkJob(
                path, header.batch_size, settings, tuple(batches), tuple(header.output_names), header.per_kernel
            )
            try:
                with self._runner.slot(context.is_active):
                    reply = self._runner.call(job, self._config.job_timeout_s, context.is_active)
            except QueueFull as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except RunnerClosed:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the agent is shutting down")
            except JobError as exc:
                self._abort_job_error(context, exc)
            response = agent_pb2.BenchmarkResponse.FromString(reply)
            response.fingerprint_hash = self._info.fingerprint_hash
            return response
        finally:
            Path(path).unlink(missing_ok=True)

    def _bounded_receive(
        self, requests: Iterator[agent_pb2.BenchmarkRequest], context: grpc.ServicerContext, sink: Any, cap: int
    ) -> tuple[agent_pb2.BenchmarkHeader | None, list[bytes]]:
        """`_receive` as one of at most `max_uploads` uploads at once, cancelled when it has not
        arrived within `upload_timeout_s` (stalled or not): slow uploads cannot take every RPC thread."""
        if not self._uploads.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._config.max_uploads} uploads are in progress (the agent's max_uploads); try again later",
            )
        stall = threading.Timer(self._config.upload_timeout_s, context.cancel)
        stall.daemon = True
        stall.start()
        try:
            return self._receive(requests, context, sink, cap)
        finally:
            stall.cancel()
            self._uploads.release()

    def _receive(
        self, requests: Iterator[agent_pb2.BenchmarkRequest], context: grpc.ServicerContext, sink: Any, cap: int
    ) -> tuple[agent_pb2.BenchmarkHeader | None, list[bytes]]:
        """Stream the upload to `sink`; abort with a precise status on any bad part.

        Returns (None, []) when the client went away mid-upload.
        """
        upload = _Upload(context, sink, cap, self._config.max_inputs_bytes)
        try:
            for part in requests:
                upload.add(part)
        except grpc.RpcError:
            return None, []
        if not context.is_active():
            return None, []
        return upload.finish(), upload.batches


class _Upload:
    """One Benchmark upload as it streams in: a header, the model bytes (written to `sink`,
    checked against the header's size, at most `cap`, and hash), then input batches. A bad part
    aborts the call with a status that says what was wrong."""

    def __init__(self, context: grpc.ServicerContext, sink: Any, cap: int, inputs_cap: int) -> None:
        self.context, self.sink, self.cap, self.inputs_cap = context, sink, cap, inputs_cap
        self.header: agent_pb2.BenchmarkHeader | None = None
        self.received = 0
        self.input_bytes = 0
        self.digest = hashlib.sha256()
        self.batches: list[bytes] = []

    def add(self, part: agent_pb2.BenchmarkRequest) -> None:
        which = part.WhichOneof("part")
        if self.header is None:
            self._start(part, which)
        elif which == "header":
            self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a second header in one upload")
        elif which == "model_chunk":
            self._model_bytes(part.model_chunk)
        elif which == "inputs":
            data = part.inputs.SerializeToString()
            self.input_bytes += len(data)
            if self.input_bytes > self.inputs_cap:  # refused before it is held: one client cannot fill memory
                self.context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"input batches of over {self.inputs_cap / 2**20:.1f} MiB in one upload: over the agent's "
                    "max_inputs_mib; send fewer or smaller batches per call",
                )
            self.batches.append(data)

    def _start(self, part: agent_pb2.BenchmarkRequest, which: str | None) -> None:
        if which != "header":
            self.context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first message must be a header, got {which or 'an empty message'}",
            )
        header = part.header
        if header.model_size_bytes == 0:
            self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "header.model_size_bytes is 0: no model to benchmark")
        if header.model_size_bytes > self.cap:
            self.context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"model of {header.model_size_bytes / 2**20:.1f} MiB is over the agent's cap of "
                f"{self.cap / 2**20:.1f} MiB (max_model_mib)",
            )
        self.header = header

    def _model_bytes(self, chunk: bytes) -> None:
        if self.batches:
            self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model bytes after input batches")
        self.received += len(chunk)
        if self.received > self.header.model_size_bytes:
            self.context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"received more model bytes ({self.received:,}) than the header declared "
                f"({self.header.model_size_bytes:,})",
            )
        self.digest.update(chunk)
        self.sink.write(chunk)

    def finish(self) -> agent_pb2.BenchmarkHeader:
        """The header of a complete upload whose bytes match it."""
        header = self.header
        if header is None:
            self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty upload: send a header, then the model bytes")
        if self.received < header.model_size_bytes:
            self.context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"upload truncated: received {self.received:,} of {header.model_size_bytes:,} declared bytes",
            )
        if header.model_sha256 and not hmac.compare_digest(header.model_sha256.lower(), self.digest.hexdigest()):
            self.context.abort(
                grpc.StatusCode.DATA_LOSS,
                f"the model bytes hash to {self.digest.hexdigest()}, not the declared {header.model_sha256}",
            )
        return header


def _device_info(config: AgentConfig, probe: ProbeResult, threads: int) -> agent_pb2.DeviceInfo:
    fp = fingerprint.collect(probe.facts, threads, config.inter_op_threads, config.latency_statistic)
    info = agent_pb2.DeviceInfo(fingerprint=fp, fingerprint_hash=fingerprint.hash_of(fp))
    for precision, supported, note in probe.precisions:
        entry = info.precisions.add(precision=precision.proto, supported=supported, note=note)
        if precision is Precision.INT8 and probe.int8_exact_weight_bits is not None:
            entry.exact_weight_bits = probe.int8_exact_weight_bits
    info.limits.CopyFrom(
        agent_pb2.AgentLimits(
            max_model_bytes=config.max_model_bytes,
            max_keys_per_request=config.max_keys_per_request,
            max_tensor_elements=config.max_tensor_elements,
            max_queued_jobs=config.max_queued_jobs,
            job_timeout_s=config.job_timeout_s,
        )
    )
    info.default_settings.CopyFrom(resolve_settings(common_pb2.MeasurementSettings(), config.profile).to_proto())
    return info


def scratch_directory(work_dir: Path | None) -> tempfile.TemporaryDirectory:
    """This agent's run-PID-* directory under `work_dir`, after removing those whose agent is no
    longer running (killed with its worker, they would otherwise fill the disk over time)."""
    base = Path(work_dir) if work_dir else Path(tempfile.gettempdir()) / f"hadmc-agent-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for child in base.glob("run-*-*"):
        pid = child.name.split("-")[1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(child, ignore_errors=True)
            log.info("agent.scratch_removed", directory=str(child))
    return tempfile.TemporaryDirectory(prefix=f"run-{os.getpid()}-", dir=base)


class Agent:
    """A running agent: gRPC server, health service and measurement worker.

    `Agent(config).start()` binds, probes the device and serves; `.port` is the bound port.
    """

    def __init__(self, config: AgentConfig, worker_target: str | None = None) -> None:
        self.config = config
        self._token = read_token(config.token_file) if config.token_file is not None else None
        threads = config.intra_op_threads or psutil.cpu_count(logical=False) or 1
        self.intra_op_threads = threads
        self._work_dir = scratch_directory(config.work_dir)
        ws = WorkerSettings(
            execution_provider=config.execution_provider,
            provider_options=dict(config.provider_options),
            intra_op_threads=threads,
            inter_op_threads=config.inter_op_threads,
            max_tensor_elements=config.max_tensor_elements,
            own_pids=(os.getpid(),),
            tmp_dir=self._work_dir.name,
            max_memory_mib=config.max_worker_mib,
            runtime=config.runtime,
            openvino_device=config.openvino_device,
            inference_precision=config.inference_precision,
            latency_statistic=config.latency_statistic,
        )
        kwargs = {"target": worker_target} if worker_target is not None else {}
        self.runner = MeasurementRunner(ws, config.max_queued_jobs, idle_exit_s=config.worker_idle_exit_s, **kwargs)
        self.health = health.HealthServicer()
        self.server: grpc.Server | None = None
        self.port = 0
        self.info: agent_pb2.DeviceInfo | None = None
        self.nightly: Nightly | None = None

    @property
    def address(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    def start(self) -> Agent:
        try:
            return self._start()
        except BaseException:
            self.runner.close()
            self._work_dir.cleanup()
            raise

    def _start(self) -> Agent:
        try:
            probe = self.runner.call(ProbeJob(), self.config.job_timeout_s, lambda: True)
        except JobError as exc:  # the runtime the config names cannot be set up on this device
            raise ConfigError(f"the agent cannot start: {exc}") from None
        self.info = _device_info(self.config, probe, self.intra_op_threads)
        self.runner.schedule_idle_exit()
        self.nightly = Nightly(self.config, self.runner, self.info)
        # Threads: the queue, the running job, the uploads, and headroom for info/health calls.
        workers = self.config.max_queued_jobs + self.config.max_uploads + 4
        server = make_server(workers, self._token, "rpc", max_concurrent_rpcs=workers)
        agent_pb2_grpc.add_DeviceAgentServicer_to_server(
            DeviceAgentService(self.config, self.runner, self.info, Path(self._work_dir.name), self.nightly), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.port = bind(server, self.config.listen, self.config.tls_cert, self.config.tls_key)
        server.start()
        self.server = server
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.nightly.start()
        log.info(
            "agent.serving",
            address=self.address,
            fingerprint=self.info.fingerprint_hash[:16],
            runtime=self.info.fingerprint.runtime,
            provider=self.info.fingerprint.execution_provider,
            inference_precision=self.info.fingerprint.inference_precision,
            threads=self.intra_op_threads,
            tls=self.config.tls_cert is not None,
            auth=self.config.token_file is not None,
        )
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting RPCs, let the current ones finish within the grace period, stop the worker."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        self.health.enter_graceful_shutdown()
        if self.nightly is not None:
            self.nightly.stop()
        if self.server is not None:
            self.server.stop(grace).wait()
        self.runner.close()
        self._work_dir.cleanup()
        log.info("agent.stopped")


def serve(config: AgentConfig, ready_file: Path | None = None) -> int:
    """Run the agent until SIGTERM or SIGINT; write the bound host:port to `ready_file`."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent = Agent(config).start()
    if ready_file is not None:
        tmp = Path(f"{ready_file}.tmp")
        tmp.write_text(agent.address + "\n")
        tmp.replace(ready_file)
    try:
        stop.wait()
    finally:
        log.info("agent.stopping")
        agent.stop()
        if ready_file is not None:
            Path(ready_file).unlink(missing_ok=True)
    return 0
