from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LutVersionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LUT_VERSION_STATUS_UNSPECIFIED: _ClassVar[LutVersionStatus]
    LUT_VERSION_STATUS_OPEN: _ClassVar[LutVersionStatus]
    LUT_VERSION_STATUS_SEALED: _ClassVar[LutVersionStatus]
    LUT_VERSION_STATUS_ABANDONED: _ClassVar[LutVersionStatus]

class LutVersionSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LUT_VERSION_SOURCE_UNSPECIFIED: _ClassVar[LutVersionSource]
    LUT_VERSION_SOURCE_MANUAL: _ClassVar[LutVersionSource]
    LUT_VERSION_SOURCE_NIGHTLY: _ClassVar[LutVersionSource]
    LUT_VERSION_SOURCE_SEARCH: _ClassVar[LutVersionSource]
    LUT_VERSION_SOURCE_IMPORT: _ClassVar[LutVersionSource]

class LutEntryStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LUT_ENTRY_STATUS_UNSPECIFIED: _ClassVar[LutEntryStatus]
    LUT_ENTRY_STATUS_OK: _ClassVar[LutEntryStatus]
    LUT_ENTRY_STATUS_UNSUPPORTED: _ClassVar[LutEntryStatus]
    LUT_ENTRY_STATUS_FAILED: _ClassVar[LutEntryStatus]
    LUT_ENTRY_STATUS_ELIDED: _ClassVar[LutEntryStatus]
LUT_VERSION_STATUS_UNSPECIFIED: LutVersionStatus
LUT_VERSION_STATUS_OPEN: LutVersionStatus
LUT_VERSION_STATUS_SEALED: LutVersionStatus
LUT_VERSION_STATUS_ABANDONED: LutVersionStatus
LUT_VERSION_SOURCE_UNSPECIFIED: LutVersionSource
LUT_VERSION_SOURCE_MANUAL: LutVersionSource
LUT_VERSION_SOURCE_NIGHTLY: LutVersionSource
LUT_VERSION_SOURCE_SEARCH: LutVersionSource
LUT_VERSION_SOURCE_IMPORT: LutVersionSource
LUT_ENTRY_STATUS_UNSPECIFIED: LutEntryStatus
LUT_ENTRY_STATUS_OK: LutEntryStatus
LUT_ENTRY_STATUS_UNSUPPORTED: LutEntryStatus
LUT_ENTRY_STATUS_FAILED: LutEntryStatus
LUT_ENTRY_STATUS_ELIDED: LutEntryStatus

class LutDevice(_message.Message):
    __slots__ = ("fingerprint_hash", "fingerprint_json", "first_seen_unix_s")
    FINGERPRINT_HASH_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_JSON_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    fingerprint_hash: str
    fingerprint_json: str
    first_seen_unix_s: float
    def __init__(self, fingerprint_hash: _Optional[str] = ..., fingerprint_json: _Optional[str] = ..., first_seen_unix_s: _Optional[float] = ...) -> None: ...

class LutVersion(_message.Message):
    __slots__ = ("id", "uid", "fingerprint_hash", "parent_id", "status", "source", "created_at_unix_s", "sealed_at_unix_s", "settings_json", "note", "lease_owner", "lease_expires_unix_s", "entry_count")
    ID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_HASH_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    SEALED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    id: int
    uid: str
    fingerprint_hash: str
    parent_id: int
    status: LutVersionStatus
    source: LutVersionSource
    created_at_unix_s: float
    sealed_at_unix_s: float
    settings_json: str
    note: str
    lease_owner: str
    lease_expires_unix_s: float
    entry_count: int
    def __init__(self, id: _Optional[int] = ..., uid: _Optional[str] = ..., fingerprint_hash: _Optional[str] = ..., parent_id: _Optional[int] = ..., status: _Optional[_Union[LutVersionStatus, str]] = ..., source: _Optional[_Union[LutVersionSource, str]] = ..., created_at_unix_s: _Optional[float] = ..., sealed_at_unix_s: _Optional[float] = ..., settings_json: _Optional[str] = ..., note: _Optional[str] = ..., lease_owner: _Optional[str] = ..., lease_expires_unix_s: _Optional[float] = ..., entry_count: _Optional[int] = ...) -> None: ...

class LutEntry(_message.Message):
    __slots__ = ("key_hash", "key_json", "status", "measured_at_unix_s", "median_ms", "mean_ms", "p90_ms", "std_ms", "min_ms", "n", "settings_json", "environment_json", "reason", "measured_in_uid")
    KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    KEY_JSON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    STD_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_MS_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MEASURED_IN_UID_FIELD_NUMBER: _ClassVar[int]
    key_hash: str
    key_json: str
    status: LutEntryStatus
    measured_at_unix_s: float
    median_ms: float
    mean_ms: float
    p90_ms: float
    std_ms: float
    min_ms: float
    n: int
    settings_json: str
    environment_json: str
    reason: str
    measured_in_uid: str
    def __init__(self, key_hash: _Optional[str] = ..., key_json: _Optional[str] = ..., status: _Optional[_Union[LutEntryStatus, str]] = ..., measured_at_unix_s: _Optional[float] = ..., median_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., std_ms: _Optional[float] = ..., min_ms: _Optional[float] = ..., n: _Optional[int] = ..., settings_json: _Optional[str] = ..., environment_json: _Optional[str] = ..., reason: _Optional[str] = ..., measured_in_uid: _Optional[str] = ...) -> None: ...

class EnsureDeviceRequest(_message.Message):
    __slots__ = ("fingerprint_hash", "fingerprint_json")
    FINGERPRINT_HASH_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_JSON_FIELD_NUMBER: _ClassVar[int]
    fingerprint_hash: str
    fingerprint_json: str
    def __init__(self, fingerprint_hash: _Optional[str] = ..., fingerprint_json: _Optional[str] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[LutDevice]
    def __init__(self, devices: _Optional[_Iterable[_Union[LutDevice, _Mapping]]] = ...) -> None: ...

class AcquireBuildRequest(_message.Message):
    __slots__ = ("fingerprint_hash", "source", "owner", "lease_s", "settings_json", "note", "parent_id", "take_over_from")
    FINGERPRINT_HASH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    TAKE_OVER_FROM_FIELD_NUMBER: _ClassVar[int]
    fingerprint_hash: str
    source: LutVersionSource
    owner: str
    lease_s: float
    settings_json: str
    note: str
    parent_id: int
    take_over_from: str
    def __init__(self, fingerprint_hash: _Optional[str] = ..., source: _Optional[_Union[LutVersionSource, str]] = ..., owner: _Optional[str] = ..., lease_s: _Optional[float] = ..., settings_json: _Optional[str] = ..., note: _Optional[str] = ..., parent_id: _Optional[int] = ..., take_over_from: _Optional[str] = ...) -> None: ...

class AcquireBuildResponse(_message.Message):
    __slots__ = ("version", "owner", "resumed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    version: LutVersion
    owner: str
    resumed: bool
    def __init__(self, version: _Optional[_Union[LutVersion, _Mapping]] = ..., owner: _Optional[str] = ..., resumed: _Optional[bool] = ...) -> None: ...

class RenewLeaseRequest(_message.Message):
    __slots__ = ("version_id", "owner", "lease_s")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    version_id: int
    owner: str
    lease_s: float
    def __init__(self, version_id: _Optional[int] = ..., owner: _Optional[str] = ..., lease_s: _Optional[float] = ...) -> None: ...

class RenewLeaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AddEntriesRequest(_message.Message):
    __slots__ = ("version_id", "entries", "owner")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    version_id: int
    entries: _containers.RepeatedCompositeFieldContainer[LutEntry]
    owner: str
    def __init__(self, version_id: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[LutEntry, _Mapping]]] = ..., owner: _Optional[str] = ...) -> None: ...

class AddEntriesResponse(_message.Message):
    __slots__ = ("written_entries",)
    WRITTEN_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    written_entries: int
    def __init__(self, written_entries: _Optional[int] = ...) -> None: ...

class SealRequest(_message.Message):
    __slots__ = ("version_id", "owner")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    version_id: int
    owner: str
    def __init__(self, version_id: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class AbandonRequest(_message.Message):
    __slots__ = ("version_id",)
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    version_id: int
    def __init__(self, version_id: _Optional[int] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("version_id",)
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    version_id: int
    def __init__(self, version_id: _Optional[int] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("fingerprint_hash",)
    FINGERPRINT_HASH_FIELD_NUMBER: _ClassVar[int]
    fingerprint_hash: str
    def __init__(self, fingerprint_hash: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[LutVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[LutVersion, _Mapping]]] = ...) -> None: ...

class EntriesRequest(_message.Message):
    __slots__ = ("version_id",)
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    version_id: int
    def __init__(self, version_id: _Optional[int] = ...) -> None: ...

class EntriesChunk(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LutEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[LutEntry, _Mapping]]] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("version_id", "key_hashes")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_HASHES_FIELD_NUMBER: _ClassVar[int]
    version_id: int
    key_hashes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version_id: _Optional[int] = ..., key_hashes: _Optional[_Iterable[str]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("version_id", "entries")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    version_id: int
    entries: _containers.RepeatedCompositeFieldContainer[LutEntry]
    def __init__(self, version_id: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[LutEntry, _Mapping]]] = ...) -> None: ...

class ImportVersionRequest(_message.Message):
    __slots__ = ("device", "version", "entries", "parent_uid")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PARENT_UID_FIELD_NUMBER: _ClassVar[int]
    device: LutDevice
    version: LutVersion
    entries: _containers.RepeatedCompositeFieldContainer[LutEntry]
    parent_uid: str
    def __init__(self, device: _Optional[_Union[LutDevice, _Mapping]] = ..., version: _Optional[_Union[LutVersion, _Mapping]] = ..., entries: _Optional[_Iterable[_Union[LutEntry, _Mapping]]] = ..., parent_uid: _Optional[str] = ...) -> None: ...

class RegisteredModel(_message.Message):
    __slots__ = ("fingerprint_hash", "model_sha256", "batch_size", "name", "kernel_hashes", "size_bytes", "registered_at_unix_s", "last_used_unix_s")
    FINGERPRINT_HASH_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KERNEL_HASHES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    fingerprint_hash: str
    model_sha256: str
    batch_size: int
    name: str
    kernel_hashes: _containers.RepeatedScalarFieldContainer[str]
    size_bytes: int
    registered_at_unix_s: float
    last_used_unix_s: float
    def __init__(self, fingerprint_hash: _Optional[str] = ..., model_sha256: _Optional[str] = ..., batch_size: _Optional[int] = ..., name: _Optional[str] = ..., kernel_hashes: _Optional[_Iterable[str]] = ..., size_bytes: _Optional[int] = ..., registered_at_unix_s: _Optional[float] = ..., last_used_unix_s: _Optional[float] = ...) -> None: ...

class RegisterModelHeader(_message.Message):
    __slots__ = ("fingerprint_hash", "name", "model_sha256", "size_bytes", "batch_size", "kernel_hashes", "used_at_unix_s")
    FINGERPRINT_HASH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_HASHES_FIELD_NUMBER: _ClassVar[int]
    USED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    fingerprint_hash: str
    name: str
    model_sha256: str
    size_bytes: int
    batch_size: int
    kernel_hashes: _containers.RepeatedScalarFieldContainer[str]
    used_at_unix_s: float
    def __init__(self, fingerprint_hash: _Optional[str] = ..., name: _Optional[str] = ..., model_sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., batch_size: _Optional[int] = ..., kernel_hashes: _Optional[_Iterable[str]] = ..., used_at_unix_s: _Optional[float] = ...) -> None: ...

class RegisterModelRequest(_message.Message):
    __slots__ = ("header", "onnx_chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ONNX_CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: RegisterModelHeader
    onnx_chunk: bytes
    def __init__(self, header: _Optional[_Union[RegisterModelHeader, _Mapping]] = ..., onnx_chunk: _Optional[bytes] = ...) -> None: ...

class RegisterModelResponse(_message.Message):
    __slots__ = ("model", "evicted")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    model: RegisteredModel
    evicted: _containers.RepeatedCompositeFieldContainer[RegisteredModel]
    def __init__(self, model: _Optional[_Union[RegisteredModel, _Mapping]] = ..., evicted: _Optional[_Iterable[_Union[RegisteredModel, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("fingerprint_hash",)
    FINGERPRINT_HASH_FIELD_NUMBER: _ClassVar[int]
    fingerprint_hash: str
    def __init__(self, fingerprint_hash: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[RegisteredModel]
    def __init__(self, models: _Optional[_Iterable[_Union[RegisteredModel, _Mapping]]] = ...) -> None: ...

class ModelBytesRequest(_message.Message):
    __slots__ = ("model_sha256",)
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    def __init__(self, model_sha256: _Optional[str] = ...) -> None: ...

class ModelBytesChunk(_message.Message):
    __slots__ = ("onnx_chunk",)
    ONNX_CHUNK_FIELD_NUMBER: _ClassVar[int]
    onnx_chunk: bytes
    def __init__(self, onnx_chunk: _Optional[bytes] = ...) -> None: ...

class GetModelLimitRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetModelLimitRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ModelLimitResponse(_message.Message):
    __slots__ = ("limit", "evicted")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    limit: int
    evicted: _containers.RepeatedCompositeFieldContainer[RegisteredModel]
    def __init__(self, limit: _Optional[int] = ..., evicted: _Optional[_Iterable[_Union[RegisteredModel, _Mapping]]] = ...) -> None: ...
