"""A store served by `hadmc lut serve` (`grpc://host:port`), and the wire form of the store's records.

`GrpcStore` gives the same interface as a local store. Every call has a time budget of
`timeout_s`; UNAVAILABLE is retried a bounded number of times with backoff within it; a store
error raised by the server is raised here as the same class (the server names it in the
`hadmc-error` trailing metadata), any other failure as StoreError naming the address.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from lut_store.interface import LutStore
from lut_store.records import (
    ENTRY_STATUSES,
    VERSION_SOURCES,
    VERSION_STATUSES,
    Build,
    CommitOutcomeUnknown,
    CorruptExport,
    Device,
    Entry,
    FingerprintMismatch,
    LeaseLost,
    Lookup,
    ModelRegistration,
    NoSealedVersion,
    RegisteredModel,
    StoreError,
    StoreUnavailable,
    UnknownDevice,
    UnknownModel,
    UnknownVersion,
    Version,
    VersionNotOpen,
)
from lut_store.rpc import MAX_MESSAGE_BYTES
from lut_store.secrets import check_token_channel
from protos.hadmc.v1 import lut_pb2, lut_pb2_grpc

ERROR_METADATA_KEY = "hadmc-error"
BATCH_ENTRIES = 500
CHUNK_BYTES = 1024 * 1024
_ATTEMPTS = 3
_BACKOFF_S = 0.5
_ERRORS: dict[str, type[StoreError]] = {
    cls.__name__: cls
    for cls in (
        StoreError,
        UnknownDevice,
        UnknownVersion,
        NoSealedVersion,
        VersionNotOpen,
        LeaseLost,
        CorruptExport,
        FingerprintMismatch,
        UnknownModel,
        StoreUnavailable,
        CommitOutcomeUnknown,
    )
}
_HINTS = {
    grpc.StatusCode.UNAVAILABLE: "check that `hadmc lut serve` runs there, with TLS on both sides or neither",
    grpc.StatusCode.DEADLINE_EXCEEDED: "check that `hadmc lut serve` runs there, or allow a longer timeout",
    grpc.StatusCode.UNAUTHENTICATED: "pass the token the server was started with",
}
_ENTRY_OPTIONALS = ("median_ms", "mean_ms", "p90_ms", "std_ms", "min_ms", "n", "measured_in_uid")
_VERSION_OPTIONALS = ("parent_id", "sealed_at_unix_s", "lease_owner", "lease_expires_unix_s")
# Far below the interpreter's recursion limit, which json.dumps and json.loads run into: a
# document parsed here can always be stored and read back (real ones nest a few levels).
MAX_JSON_DEPTH = 64
T = TypeVar("T")


class WireError(StoreError):
    """A message field that does not decode to a store record; the message names the field."""


# --- wire form of the records --------------------------------------------------------------
def required(value: str, field: str) -> str:
    if not value:
        raise WireError(f"{field} is empty")
    return value


def _nesting(value: Any) -> int:
    """How many levels of dicts and lists `value` has (0 for a scalar), counted without recursion."""
    depth, level = 0, [value]
    while containers := [v for v in level if isinstance(v, dict | list)]:
        depth += 1
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def json_object(text: str, field: str) -> dict[str, Any]:
    """A `*_json` field as a dict ('' is {}), nested at most MAX_JSON_DEPTH levels."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError; an integer past the digit limit; deep nesting
        raise WireError(f"{field} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise WireError(f"{field} is not a JSON object but {type(value).__name__}")
    if _nesting(value) > MAX_JSON_DEPTH:
        raise WireError(f"{field} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True)


def _optional(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def _set(record: Any, names: Iterable[str]) -> dict[str, Any]:
    """The record's fields among `names` that are not None (proto3 optionals stay unset)."""
    return {n: getattr(record, n) for n in names if getattr(record, n) is not None}


def enum_value(enum: EnumTypeWrapper, prefix: str, names: tuple[str, ...], name: str, field: str) -> int:
    if name not in names:
        raise WireError(f"{field} {name!r} is not one of {names}")
    return enum.Value(prefix + name.upper())


def enum_name(enum: EnumTypeWrapper, prefix: str, names: tuple[str, ...], value: int, field: str) -> str:
    name = enum.Name(value)[len(prefix) :].lower() if value in enum.values() else ""
    if name not in names:
        raise WireError(f"{field} is unset or unknown ({value}); expected one of {names}")
    return name


def device_to_proto(d: Device) -> lut_pb2.LutDevice:
    return lut_pb2.LutDevice(
        fingerprint_hash=d.fingerprint_hash,
        fingerprint_json=_dumps(d.fingerprint),
        first_seen_unix_s=d.first_seen_unix_s,
    )


def device_from_proto(m: lut_pb2.LutDevice, field: str = "device") -> Device:
    return Device(
        required(m.fingerprint_hash, f"{field}.fingerprint_hash"),
        json_object(m.fingerprint_json, f"{field}.fingerprint_json"),
        m.first_seen_unix_s,
    )


def version_to_proto(v: Version) -> lut_pb2.LutVersion:
    return lut_pb2.LutVersion(
        id=v.id,
        uid=v.uid,
        fingerprint_hash=v.fingerprint_hash,
        status=enum_value(lut_pb2.LutVersionStatus, "LUT_VERSION_STATUS_", VERSION_STATUSES, v.status, "status"),
        source=enum_value(lut_pb2.LutVersionSource, "LUT_VERSION_SOURCE_", VERSION_SOURCES, v.source, "source"),
        created_at_unix_s=v.created_at_unix_s,
        settings_json=_dumps(v.settings),
        note=v.note,
        entry_count=v.entry_count,
        **_set(v, _VERSION_OPTIONALS),
    )


def version_from_proto(m: lut_pb2.LutVersion, field: str = "version") -> Version:
    return Version(
        id=m.id,
        uid=m.uid,
        fingerprint_hash=m.fingerprint_hash,
        status=enum_name(
            lut_pb2.LutVersionStatus, "LUT_VERSION_STATUS_", VERSION_STATUSES, m.status, f"{field}.status"
        ),
        source=enum_name(lut_pb2.LutVersionSource, "LUT_VERSION_SOURCE_", VERSION_SOURCES, m.source, f"{field}.source"),
        created_at_unix_s=m.created_at_unix_s,
        settings=json_object(m.settings_json, f"{field}.settings_json"),
        note=m.note,
        entry_count=m.entry_count,
        **{n: _optional(m, n) for n in _VERSION_OPTIONALS},
    )


def entry_to_proto(e: Entry) -> lut_pb2.LutEntry:
    return lut_pb2.LutEntry(
        key_hash=e.key_hash,
        key_json=e.key_json,
        status=enum_value(lut_pb2.LutEntryStatus, "LUT_ENTRY_STATUS_", ENTRY_STATUSES, e.status, "status"),
        measured_at_unix_s=e.measured_at_unix_s,
        settings_json=_dumps(e.settings),
        environment_json=_dumps(e.environment),
        reason=e.reason,
        **_set(e, _ENTRY_OPTIONALS),
    )


def entry_from_proto(m: lut_pb2.LutEntry, field: str = "entry") -> Entry:
    """An entry, checked as Entry checks it; WireError naming `field` when it does not hold."""
    fields = dict(
        key_hash=required(m.key_hash, f"{field}.key_hash"),
        key_json=m.key_json,
        status=enum_name(lut_pb2.LutEntryStatus, "LUT_ENTRY_STATUS_", ENTRY_STATUSES, m.status, f"{field}.status"),
        measured_at_unix_s=m.measured_at_unix_s,
        settings=json_object(m.settings_json, f"{field}.settings_json"),
        environment=json_object(m.environment_json, f"{field}.environment_json"),
        reason=m.reason,
        **{n: _optional(m, n) for n in _ENTRY_OPTIONALS},
    )
    try:
        return Entry(**fields)
    except StoreError as exc:
        raise WireError(f"{field}: {exc}") from None


def model_to_proto(m: RegisteredModel) -> lut_pb2.RegisteredModel:
    return lut_pb2.RegisteredModel(
        fingerprint_hash=m.fingerprint_hash,
        model_sha256=m.model_sha256,
        batch_size=m.batch_size,
        name=m.name,
        kernel_hashes=list(m.kernels),
        size_bytes=m.size_bytes,
        registered_at_unix_s=m.registered_at_unix_s,
        last_used_unix_s=m.last_used_unix_s,
    )


def model_from_proto(m: lut_pb2.RegisteredModel, field: str = "model") -> RegisteredModel:
    return RegisteredModel(
        fingerprint_hash=required(m.fingerprint_hash, f"{field}.fingerprint_hash"),
        model_sha256=required(m.model_sha256, f"{field}.model_sha256"),
        batch_size=m.batch_size,
        name=m.name,
        kernels=tuple(m.kernel_hashes),
        size_bytes=m.size_bytes,
        registered_at_unix_s=m.registered_at_unix_s,
        last_used_unix_s=m.last_used_unix_s,
    )


def chunks(data: bytes) -> Iterator[bytes]:
    """`data` in pieces of CHUNK_BYTES (one empty piece for no data)."""
    view = memoryview(data)
    for start in range(0, max(len(data), 1), CHUNK_BYTES):
        yield bytes(view[start : start + CHUNK_BYTES])


# --- the client ----------------------------------------------------------------------------
class GrpcStore(LutStore):
    """The LutStore interface over gRPC. Use as a context manager or call `close()`."""

    def __init__(
        self, address: str, token: str | None = None, tls_ca: bytes | None = None, timeout_s: float = 10.0
    ) -> None:
        self.address = address
        self.url = f"grpc://{address}"
        self.timeout_s = timeout_s
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        check_token_channel(address, token, tls_ca is not None)
        if tls_ca is not None:
            self._channel = grpc.secure_channel(
                address, grpc.ssl_channel_credentials(root_certificates=tls_ca), options=options
            )
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = lut_pb2_grpc.LutStoreServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            self.devices()  # fails within timeout_s when nothing serves a store there, or the token is refused
        except StoreError:
            self._channel.close()
            raise

    def _call(self, method: str, fn: Callable[[float], T]) -> T:
        """fn(timeout_s) within this store's time budget, retrying UNAVAILABLE."""
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return fn(max(deadline - time.monotonic(), 0.0))
            except grpc.RpcError as exc:
                backoff_s = _BACKOFF_S * 2 ** (attempt - 1)
                retry = (
                    exc.code() == grpc.StatusCode.UNAVAILABLE
                    and attempt < _ATTEMPTS
                    and deadline - time.monotonic() > backoff_s
                )
                if not retry:
                    raise self._error(method, exc, attempt) from None
                time.sleep(backoff_s)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _error(self, method: str, exc: grpc.RpcError, attempts: int) -> StoreError:
        name = dict(exc.trailing_metadata() or ()).get(ERROR_METADATA_KEY)
        if name in _ERRORS:
            return _ERRORS[name](exc.details() or "")
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        hint = f"; {_HINTS[exc.code()]}" if exc.code() in _HINTS else ""
        return StoreError(
            f"LUT store at {self.shown_url}: {method}: {exc.code().name}: {exc.details() or ''}{tries}{hint}"
        )

    def _unary(self, method: str, request: Any) -> Any:
        rpc = getattr(self._stub, method)
        return self._call(method, lambda timeout_s: rpc(request, timeout=timeout_s, metadata=self._metadata))

    def ensure_device(self, fingerprint_hash: str, fingerprint: Mapping[str, Any]) -> Device:
        return device_from_proto(
            self._unary(
                "EnsureDevice",
                lut_pb2.EnsureDeviceRequest(fingerprint_hash=fingerprint_hash, fingerprint_json=_dumps(fingerprint)),
            )
        )

    def devices(self) -> list[Device]:
        return [device_from_proto(d) for d in self._unary("ListDevices", lut_pb2.ListDevicesRequest()).devices]

    def acquire_build(
        self,
        fingerprint_hash: str,
        source: str,
        owner: str,
        lease_s: float,
        settings: Mapping[str, Any] | None = None,
        note: str = "",
        parent_id: int | None = None,
        take_over_from: str | None = None,
    ) -> Build:
        request = lut_pb2.AcquireBuildRequest(
            fingerprint_hash=fingerprint_hash,
            owner=owner,
            lease_s=lease_s,
            settings_json=_dumps(settings or {}),
            source=enum_value(
                lut_pb2.LutVersionSource, "LUT_VERSION_SOURCE_", VERSION_SOURCES, source, "version source"
            ),
            note=note,
            parent_id=parent_id,
            take_over_from=take_over_from,
        )
        response = self._unary("AcquireBuild", request)
        return Build(version_from_proto(response.version), response.owner, response.resumed)

    def renew_lease(self, version_id: int, owner: str, lease_s: float) -> None:
        self._unary("RenewLease", lut_pb2.RenewLeaseRequest(version_id=version_id, owner=owner, lease_s=lease_s))

    def add_entries(self, version_id: int, entries: Sequence[Entry], owner: str | None = None) -> int:
        """Write in batches of BATCH_ENTRIES, one transaction each: after a failure, earlier batches
        stay in the open version (writing them again replaces them)."""
        written = 0
        for start in range(0, len(entries), BATCH_ENTRIES):
            request = lut_pb2.AddEntriesRequest(
                version_id=version_id,
                owner=owner,
                entries=[entry_to_proto(e) for e in entries[start : start + BATCH_ENTRIES]],
            )
            written += self._unary("AddEntries", request).written_entries
        return written

    def seal(self, version_id: int, owner: str | None = None) -> Version:
        return version_from_proto(self._unary("Seal", lut_pb2.SealRequest(version_id=version_id, owner=owner)))

    def abandon(self, version_id: int) -> Version:
        return version_from_proto(self._unary("Abandon", lut_pb2.AbandonRequest(version_id=version_id)))

    def version(self, version_id: int) -> Version:
        return version_from_proto(self._unary("GetVersion", lut_pb2.GetVersionRequest(version_id=version_id)))

    def versions(self, fingerprint_hash: str | None = None) -> list[Version]:
        response = self._unary("ListVersions", lut_pb2.ListVersionsRequest(fingerprint_hash=fingerprint_hash or ""))
        return [version_from_proto(v) for v in response.versions]

    def entries(self, version_id: int) -> Iterator[Entry]:
        """All entries, read whole within the time budget (an unknown version raises here)."""
        request = lut_pb2.EntriesRequest(version_id=version_id)

        def read(timeout_s: float) -> list[Entry]:
            chunks = self._stub.Entries(request, timeout=timeout_s, metadata=self._metadata)
            return [entry_from_proto(e) for chunk in chunks for e in chunk.entries]

        return iter(self._call("Entries", read))

    def lookup(self, version_id: int, key_hashes: Iterable[str]) -> Lookup:
        keys = list(dict.fromkeys(key_hashes))
        found: dict[str, Entry] = {}
        for start in range(0, max(len(keys), 1), BATCH_ENTRIES):  # one call even for no keys: checks the id
            response = self._unary(
                "Lookup", lut_pb2.LookupRequest(version_id=version_id, key_hashes=keys[start : start + BATCH_ENTRIES])
            )
            found.update((e.key_hash, entry_from_proto(e)) for e in response.entries)
        return Lookup(version_id, found)

    def import_version(
        self, device: Device, version: Version, entries: Sequence[Entry], parent_uid: str | None
    ) -> Version:
        request = lut_pb2.ImportVersionRequest(
            device=device_to_proto(device),
            version=version_to_proto(version),
            entries=[entry_to_proto(e) for e in entries],
            parent_uid=parent_uid,
        )
        return version_from_proto(self._unary("ImportVersion", request))

    def register_model(
        self,
        fingerprint_hash: str,
        name: str,
        onnx: bytes,
        batch_size: int,
        kernels: Sequence[str],
        used_at_unix_s: float | None = None,
    ) -> ModelRegistration:
        """The bytes go in chunks of CHUNK_BYTES after a header, so models of any size fit."""
        header = lut_pb2.RegisterModelHeader(
            fingerprint_hash=fingerprint_hash,
            name=name,
            model_sha256=hashlib.sha256(onnx).hexdigest(),
            size_bytes=len(onnx),
            batch_size=batch_size,
            kernel_hashes=list(kernels),
            used_at_unix_s=used_at_unix_s,
        )

        def stream() -> Iterator[lut_pb2.RegisterModelRequest]:
            yield lut_pb2.RegisterModelRequest(header=header)
            for piece in chunks(onnx):
                yield lut_pb2.RegisterModelRequest(onnx_chunk=piece)

        response = self._call(
            "RegisterModel",
            lambda timeout_s: self._stub.RegisterModel(stream(), timeout=timeout_s, metadata=self._metadata),
        )
        return ModelRegistration(
            model_from_proto(response.model), tuple(model_from_proto(m, "evicted") for m in response.evicted)
        )

    def registered_models(self, fingerprint_hash: str) -> list[RegisteredModel]:
        response = self._unary("ListModels", lut_pb2.ListModelsRequest(fingerprint_hash=fingerprint_hash))
        return [model_from_proto(m) for m in response.models]

    def model_bytes(self, model_sha256: str) -> bytes:
        request = lut_pb2.ModelBytesRequest(model_sha256=model_sha256)

        def read(timeout_s: float) -> bytes:
            pieces = self._stub.ModelBytes(request, timeout=timeout_s, metadata=self._metadata)
            return b"".join(p.onnx_chunk for p in pieces)

        return self._call("ModelBytes", read)

    def model_limit(self) -> int:
        return self._unary("GetModelLimit", lut_pb2.GetModelLimitRequest()).limit

    def set_model_limit(self, limit: int) -> list[RegisteredModel]:
        if limit < 0:
            raise StoreError(f"model limit {limit}: keep 0 or more models per device")
        response = self._unary("SetModelLimit", lut_pb2.SetModelLimitRequest(limit=limit))
        return [model_from_proto(m, "evicted") for m in response.evicted]

    def close(self) -> None:
        self._channel.close()
