"""The gRPC front of a LUT store (`hadmc lut serve`): LutStoreService over any LutStore, with the
health service, token auth, per-RPC logging and the agent's exposure rule."""

from __future__ import annotations

import hashlib
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lut_store.grpc_store import (
    BATCH_ENTRIES,
    ERROR_METADATA_KEY,
    WireError,
    chunks,
    device_from_proto,
    device_to_proto,
    entry_from_proto,
    entry_to_proto,
    enum_name,
    json_object,
    model_to_proto,
    required,
    version_from_proto,
    version_to_proto,
)
from lut_store.interface import LutStore
from lut_store.records import (
    VERSION_SOURCES,
    CommitOutcomeUnknown,
    CorruptExport,
    LeaseLost,
    NoSealedVersion,
    StoreError,
    StoreUnavailable,
    UnknownDevice,
    UnknownModel,
    UnknownVersion,
    VersionNotOpen,
)
from lut_store.rpc import bind, check_exposure, make_server, read_token
from lut_store.secrets import redact_url
from lut_store.store import open_store
from protos.hadmc.v1 import lut_pb2, lut_pb2_grpc

log = structlog.get_logger(__name__)

SERVICE_NAME = lut_pb2.DESCRIPTOR.services_by_name["LutStoreService"].full_name
_WORKERS = 16
MAX_MODEL_BYTES = 1 << 30  # what one RegisterModel may upload (the agent's default cap too)
_STATUS: dict[type[StoreError], grpc.StatusCode] = {
    UnknownDevice: grpc.StatusCode.NOT_FOUND,
    UnknownVersion: grpc.StatusCode.NOT_FOUND,
    NoSealedVersion: grpc.StatusCode.NOT_FOUND,
    UnknownModel: grpc.StatusCode.NOT_FOUND,
    VersionNotOpen: grpc.StatusCode.FAILED_PRECONDITION,
    LeaseLost: grpc.StatusCode.ABORTED,
    CorruptExport: grpc.StatusCode.INVALID_ARGUMENT,
    WireError: grpc.StatusCode.INVALID_ARGUMENT,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,  # nothing was written: the client may retry
    CommitOutcomeUnknown: grpc.StatusCode.ABORTED,
}


class LutStoreServicer(lut_pb2_grpc.LutStoreServiceServicer):
    """One RPC per LutStore operation; store errors become status codes (see lut.proto)."""

    def __init__(self, store: LutStore) -> None:
        self._store = store

    @contextmanager
    def _store_errors(self, context: grpc.ServicerContext) -> Iterator[None]:
        """Abort the RPC on a StoreError with its status code, its class in the trailing metadata,
        and its message (the backing store's credentials redacted)."""
        try:
            yield
        except StoreError as exc:
            context.set_trailing_metadata(((ERROR_METADATA_KEY, type(exc).__name__),))
            message = str(exc).replace(self._store.url, redact_url(self._store.url))
            context.abort(_STATUS.get(type(exc), grpc.StatusCode.FAILED_PRECONDITION), message)

    def EnsureDevice(self, request: lut_pb2.EnsureDeviceRequest, context: grpc.ServicerContext) -> lut_pb2.LutDevice:
        with self._store_errors(context):
            return device_to_proto(
                self._store.ensure_device(
                    required(request.fingerprint_hash, "fingerprint_hash"),
                    json_object(request.fingerprint_json, "fingerprint_json"),
                )
            )

    def ListDevices(
        self, request: lut_pb2.ListDevicesRequest, context: grpc.ServicerContext
    ) -> lut_pb2.ListDevicesResponse:
        with self._store_errors(context):
            return lut_pb2.ListDevicesResponse(devices=[device_to_proto(d) for d in self._store.devices()])

    def AcquireBuild(
        self, request: lut_pb2.AcquireBuildRequest, context: grpc.ServicerContext
    ) -> lut_pb2.AcquireBuildResponse:
        with self._store_errors(context):
            build = self._store.acquire_build(
                required(request.fingerprint_hash, "fingerprint_hash"),
                enum_name(lut_pb2.LutVersionSource, "LUT_VERSION_SOURCE_", VERSION_SOURCES, request.source, "source"),
                required(request.owner, "owner"),
                request.lease_s,
                settings=json_object(request.settings_json, "settings_json"),
                note=request.note,
                parent_id=request.parent_id if request.HasField("parent_id") else None,
                take_over_from=request.take_over_from if request.HasField("take_over_from") else None,
            )
            return lut_pb2.AcquireBuildResponse(
                version=version_to_proto(build.version), owner=build.owner, resumed=build.resumed
            )

    def RenewLease(
        self, request: lut_pb2.RenewLeaseRequest, context: grpc.ServicerContext
    ) -> lut_pb2.RenewLeaseResponse:
        with self._store_errors(context):
            self._store.renew_lease(request.version_id, required(request.owner, "owner"), request.lease_s)
            return lut_pb2.RenewLeaseResponse()

    def AddEntries(
        self, request: lut_pb2.AddEntriesRequest, context: grpc.ServicerContext
    ) -> lut_pb2.AddEntriesResponse:
        with self._store_errors(context):
            entries = [entry_from_proto(e, f"entries[{i}]") for i, e in enumerate(request.entries)]
            owner = request.owner if request.HasField("owner") else None
            written = self._store.add_entries(request.version_id, entries, owner)
            return lut_pb2.AddEntriesResponse(written_entries=written)

    def Seal(self, request: lut_pb2.SealRequest, context: grpc.ServicerContext) -> lut_pb2.LutVersion:
        with self._store_errors(context):
            owner = request.owner if request.HasField("owner") else None
            return version_to_proto(self._store.seal(request.version_id, owner))

    def Abandon(self, request: lut_pb2.AbandonRequest, context: grpc.ServicerContext) -> lut_pb2.LutVersion:
        with self._store_errors(context):
            return version_to_proto(self._store.abandon(request.version_id))

    def GetVersion(self, request: lut_pb2.GetVersionRequest, context: grpc.ServicerContext) -> lut_pb2.LutVersion:
        with self._store_errors(context):
            return version_to_proto(self._store.version(request.version_id))

    def ListVersions(
        self, request: lut_pb2.ListVersionsRequest, context: grpc.ServicerContext
    ) -> lut_pb2.ListVersionsResponse:
        with self._store_errors(context):
            versions = self._store.versions(request.fingerprint_hash or None)
            return lut_pb2.ListVersionsResponse(versions=[version_to_proto(v) for v in versions])

    def Entries(self, request: lut_pb2.EntriesRequest, context: grpc.ServicerContext) -> Iterator[lut_pb2.EntriesChunk]:
        with self._store_errors(context):
            chunk: list[lut_pb2.LutEntry] = []
            for entry in self._store.entries(request.version_id):
                chunk.append(entry_to_proto(entry))
                if len(chunk) == BATCH_ENTRIES:
                    yield lut_pb2.EntriesChunk(entries=chunk)
                    chunk = []
            if chunk:
                yield lut_pb2.EntriesChunk(entries=chunk)

    def Lookup(self, request: lut_pb2.LookupRequest, context: grpc.ServicerContext) -> lut_pb2.LookupResponse:
        with self._store_errors(context):
            found = self._store.lookup(request.version_id, list(request.key_hashes))
            return lut_pb2.LookupResponse(
                version_id=found.version_id, entries=[entry_to_proto(e) for e in found.entries.values()]
            )

    def ImportVersion(self, request: lut_pb2.ImportVersionRequest, context: grpc.ServicerContext) -> lut_pb2.LutVersion:
        with self._store_errors(context):
            entries = [entry_from_proto(e, f"entries[{i}]") for i, e in enumerate(request.entries)]
            version = self._store.import_version(
                device_from_proto(request.device),
                version_from_proto(request.version),
                entries,
                request.parent_uid if request.HasField("parent_uid") else None,
            )
            return version_to_proto(version)

    def RegisterModel(
        self, request_iterator: Iterator[lut_pb2.RegisterModelRequest], context: grpc.ServicerContext
    ) -> lut_pb2.RegisterModelResponse:
        with self._store_errors(context):
            header, onnx = _receive_model(request_iterator)
            done = self._store.register_model(
                header.fingerprint_hash,
                header.name,
                onnx,
                header.batch_size,
                list(header.kernel_hashes),
                header.used_at_unix_s if header.HasField("used_at_unix_s") else None,
            )
            return lut_pb2.RegisterModelResponse(
                model=model_to_proto(done.model), evicted=[model_to_proto(m) for m in done.evicted]
            )

    def ListModels(
        self, request: lut_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> lut_pb2.ListModelsResponse:
        with self._store_errors(context):
            models = self._store.registered_models(required(request.fingerprint_hash, "fingerprint_hash"))
            return lut_pb2.ListModelsResponse(models=[model_to_proto(m) for m in models])

    def ModelBytes(
        self, request: lut_pb2.ModelBytesRequest, context: grpc.ServicerContext
    ) -> Iterator[lut_pb2.ModelBytesChunk]:
        with self._store_errors(context):
            onnx = self._store.model_bytes(required(request.model_sha256, "model_sha256"))
            for piece in chunks(onnx):
                yield lut_pb2.ModelBytesChunk(onnx_chunk=piece)

    def GetModelLimit(
        self, request: lut_pb2.GetModelLimitRequest, context: grpc.ServicerContext
    ) -> lut_pb2.ModelLimitResponse:
        with self._store_errors(context):
            return lut_pb2.ModelLimitResponse(limit=self._store.model_limit())

    def SetModelLimit(
        self, request: lut_pb2.SetModelLimitRequest, context: grpc.ServicerContext
    ) -> lut_pb2.ModelLimitResponse:
        with self._store_errors(context):
            evicted = self._store.set_model_limit(request.limit)
            return lut_pb2.ModelLimitResponse(limit=request.limit, evicted=[model_to_proto(m) for m in evicted])


def _receive_model(requests: Iterator[lut_pb2.RegisterModelRequest]) -> tuple[lut_pb2.RegisterModelHeader, bytes]:
    """The header and the bytes of one RegisterModel upload, checked against each other."""
    header: lut_pb2.RegisterModelHeader | None = None
    pieces: list[bytes] = []
    received = 0
    for part in requests:
        which = part.WhichOneof("part")
        if header is None:
            if which != "header":
                raise WireError(f"the first message must be a header, got {which or 'an empty message'}")
            header = part.header
            required(header.fingerprint_hash, "header.fingerprint_hash")
            required(header.name, "header.name")
            if header.size_bytes > MAX_MODEL_BYTES:
                raise WireError(f"header.size_bytes {header.size_bytes:,} is over {MAX_MODEL_BYTES:,}")
        elif which == "onnx_chunk":
            received += len(part.onnx_chunk)
            if received > header.size_bytes:
                raise WireError(f"more bytes than header.size_bytes {header.size_bytes:,}")
            pieces.append(part.onnx_chunk)
        else:
            raise WireError(f"a second {which or 'empty message'} after the header")
    if header is None:
        raise WireError("empty upload: send a header, then the model's bytes")
    onnx = b"".join(pieces)
    if len(onnx) != header.size_bytes:
        raise WireError(f"upload truncated: {len(onnx):,} of header.size_bytes {header.size_bytes:,} received")
    if hashlib.sha256(onnx).hexdigest() != header.model_sha256:
        raise WireError(f"the bytes hash to {hashlib.sha256(onnx).hexdigest()}, not header.model_sha256")
    return header, onnx


class LutServer:
    """A LutStore served over gRPC, with the standard health service.

    `LutServer(store).start()` binds (port 0 picks a free one) and serves; `.address` is where.
    Beyond loopback it needs a token, and TLS unless `insecure`. The store stays the caller's.
    """

    def __init__(
        self,
        store: LutStore,
        listen: str = "127.0.0.1:0",
        token_file: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        insecure: bool = False,
    ) -> None:
        check_exposure(listen, token_file, tls_cert, tls_key, insecure)
        self.store = store
        self.listen = listen
        self._token = read_token(token_file) if token_file is not None else None
        self._tls_cert = tls_cert
        self._tls_key = tls_key
        self.health = health.HealthServicer()
        self.server: grpc.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.listen.rpartition(':')[0]}:{self.port}"

    def start(self) -> LutServer:
        # Calls beyond twice the threads are refused (RESOURCE_EXHAUSTED), not queued without bound.
        server = make_server(_WORKERS, self._token, "lut-rpc", max_concurrent_rpcs=2 * _WORKERS)
        lut_pb2_grpc.add_LutStoreServiceServicer_to_server(LutStoreServicer(self.store), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.port = bind(server, self.listen, self._tls_cert, self._tls_key)
        server.start()
        self.server = server
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "lut.serving",
            address=self.address,
            store=redact_url(self.store.url),
            tls=self._tls_cert is not None,
            auth=self._token is not None,
        )
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting RPCs and let the current ones finish within the grace period."""
        self.health.enter_graceful_shutdown()
        if self.server is not None:
            self.server.stop(grace_s).wait()
        log.info("lut.stopped", address=self.address)


def serve_store(
    store_url: str | None,
    listen: str,
    token_file: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    insecure: bool = False,
    ready_file: Path | None = None,
) -> int:
    """Serve the store at `store_url` (None: the default) until SIGTERM or SIGINT; write the bound
    host:port to `ready_file` once serving."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with open_store(store_url) as store:
        server = LutServer(store, listen, token_file, tls_cert, tls_key, insecure).start()
        try:
            if ready_file is not None:
                tmp = Path(f"{ready_file}.tmp")
                tmp.write_text(server.address + "\n")
                tmp.replace(ready_file)
            stop.wait()
        finally:
            log.info("lut.stopping", address=server.address)
            server.stop()
            if ready_file is not None:
                Path(ready_file).unlink(missing_ok=True)
    return 0
