from protos.hadmc.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetDeviceInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CpuInfo(_message.Message):
    __slots__ = ("model", "architecture", "physical_cores", "logical_cores", "flags")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_CORES_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_CORES_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    architecture: str
    physical_cores: int
    logical_cores: int
    flags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., architecture: _Optional[str] = ..., physical_cores: _Optional[int] = ..., logical_cores: _Optional[int] = ..., flags: _Optional[_Iterable[str]] = ...) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("name", "memory_total_bytes", "compute_capability")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    memory_total_bytes: int
    compute_capability: str
    def __init__(self, name: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., compute_capability: _Optional[str] = ...) -> None: ...

class Fingerprint(_message.Message):
    __slots__ = ("agent_version", "profiler_version", "cpu", "memory_total_bytes", "gpus", "gpu_driver_version", "cuda_version", "onnxruntime_version", "available_providers", "execution_provider", "provider_options", "intra_op_threads", "inter_op_threads", "os", "kernel", "power_mode", "hostname", "hashed_fields", "notes", "runtime", "runtime_version", "inference_precision", "latency_statistic")
    class ProviderOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NotesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUDA_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    INTER_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    POWER_MODE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    HASHED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_STATISTIC_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    profiler_version: str
    cpu: CpuInfo
    memory_total_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    gpu_driver_version: str
    cuda_version: str
    onnxruntime_version: str
    available_providers: _containers.RepeatedScalarFieldContainer[str]
    execution_provider: str
    provider_options: _containers.ScalarMap[str, str]
    intra_op_threads: int
    inter_op_threads: int
    os: str
    kernel: str
    power_mode: str
    hostname: str
    hashed_fields: _containers.RepeatedScalarFieldContainer[str]
    notes: _containers.ScalarMap[str, str]
    runtime: str
    runtime_version: str
    inference_precision: str
    latency_statistic: str
    def __init__(self, agent_version: _Optional[str] = ..., profiler_version: _Optional[str] = ..., cpu: _Optional[_Union[CpuInfo, _Mapping]] = ..., memory_total_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., gpu_driver_version: _Optional[str] = ..., cuda_version: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., available_providers: _Optional[_Iterable[str]] = ..., execution_provider: _Optional[str] = ..., provider_options: _Optional[_Mapping[str, str]] = ..., intra_op_threads: _Optional[int] = ..., inter_op_threads: _Optional[int] = ..., os: _Optional[str] = ..., kernel: _Optional[str] = ..., power_mode: _Optional[str] = ..., hostname: _Optional[str] = ..., hashed_fields: _Optional[_Iterable[str]] = ..., notes: _Optional[_Mapping[str, str]] = ..., runtime: _Optional[str] = ..., runtime_version: _Optional[str] = ..., inference_precision: _Optional[str] = ..., latency_statistic: _Optional[str] = ...) -> None: ...

class PrecisionSupport(_message.Message):
    __slots__ = ("precision", "supported", "note", "exact_weight_bits")
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    EXACT_WEIGHT_BITS_FIELD_NUMBER: _ClassVar[int]
    precision: _common_pb2.Precision
    supported: bool
    note: str
    exact_weight_bits: int
    def __init__(self, precision: _Optional[_Union[_common_pb2.Precision, str]] = ..., supported: _Optional[bool] = ..., note: _Optional[str] = ..., exact_weight_bits: _Optional[int] = ...) -> None: ...

class AgentLimits(_message.Message):
    __slots__ = ("max_model_bytes", "max_keys_per_request", "max_tensor_elements", "max_queued_jobs", "job_timeout_s")
    MAX_MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_KEYS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_TENSOR_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    JOB_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    max_model_bytes: int
    max_keys_per_request: int
    max_tensor_elements: int
    max_queued_jobs: int
    job_timeout_s: float
    def __init__(self, max_model_bytes: _Optional[int] = ..., max_keys_per_request: _Optional[int] = ..., max_tensor_elements: _Optional[int] = ..., max_queued_jobs: _Optional[int] = ..., job_timeout_s: _Optional[float] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("fingerprint", "fingerprint_hash", "precisions", "limits", "default_settings")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_HASH_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    fingerprint: Fingerprint
    fingerprint_hash: str
    precisions: _containers.RepeatedCompositeFieldContainer[PrecisionSupport]
    limits: AgentLimits
    default_settings: _common_pb2.MeasurementSettings
    def __init__(self, fingerprint: _Optional[_Union[Fingerprint, _Mapping]] = ..., fingerprint_hash: _Optional[str] = ..., precisions: _Optional[_Iterable[_Union[PrecisionSupport, _Mapping]]] = ..., limits: _Optional[_Union[AgentLimits, _Mapping]] = ..., default_settings: _Optional[_Union[_common_pb2.MeasurementSettings, _Mapping]] = ...) -> None: ...

class ProfileRequest(_message.Message):
    __slots__ = ("keys", "settings")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[_common_pb2.OpKey]
    settings: _common_pb2.MeasurementSettings
    def __init__(self, keys: _Optional[_Iterable[_Union[_common_pb2.OpKey, _Mapping]]] = ..., settings: _Optional[_Union[_common_pb2.MeasurementSettings, _Mapping]] = ...) -> None: ...

class KeyError(_message.Message):
    __slots__ = ("code", "message")
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CODE_UNSPECIFIED: _ClassVar[KeyError.Code]
        CODE_INVALID: _ClassVar[KeyError.Code]
        CODE_UNSUPPORTED: _ClassVar[KeyError.Code]
        CODE_FAILED: _ClassVar[KeyError.Code]
        CODE_TIMEOUT: _ClassVar[KeyError.Code]
        CODE_INTERFERENCE: _ClassVar[KeyError.Code]
    CODE_UNSPECIFIED: KeyError.Code
    CODE_INVALID: KeyError.Code
    CODE_UNSUPPORTED: KeyError.Code
    CODE_FAILED: KeyError.Code
    CODE_TIMEOUT: KeyError.Code
    CODE_INTERFERENCE: KeyError.Code
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: KeyError.Code
    message: str
    def __init__(self, code: _Optional[_Union[KeyError.Code, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ProfileResult(_message.Message):
    __slots__ = ("index", "key_hash", "stats", "error", "environment")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    index: int
    key_hash: str
    stats: _common_pb2.LatencyStats
    error: KeyError
    environment: _common_pb2.MeasurementEnvironment
    def __init__(self, index: _Optional[int] = ..., key_hash: _Optional[str] = ..., stats: _Optional[_Union[_common_pb2.LatencyStats, _Mapping]] = ..., error: _Optional[_Union[KeyError, _Mapping]] = ..., environment: _Optional[_Union[_common_pb2.MeasurementEnvironment, _Mapping]] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor_proto")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_PROTO_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor_proto: bytes
    def __init__(self, name: _Optional[str] = ..., tensor_proto: _Optional[bytes] = ...) -> None: ...

class InputBatch(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class BenchmarkHeader(_message.Message):
    __slots__ = ("model_size_bytes", "model_sha256", "batch_size", "settings", "output_names", "per_kernel")
    MODEL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    PER_KERNEL_FIELD_NUMBER: _ClassVar[int]
    model_size_bytes: int
    model_sha256: str
    batch_size: int
    settings: _common_pb2.MeasurementSettings
    output_names: _containers.RepeatedScalarFieldContainer[str]
    per_kernel: bool
    def __init__(self, model_size_bytes: _Optional[int] = ..., model_sha256: _Optional[str] = ..., batch_size: _Optional[int] = ..., settings: _Optional[_Union[_common_pb2.MeasurementSettings, _Mapping]] = ..., output_names: _Optional[_Iterable[str]] = ..., per_kernel: _Optional[bool] = ...) -> None: ...

class BenchmarkRequest(_message.Message):
    __slots__ = ("header", "model_chunk", "inputs")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHUNK_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    header: BenchmarkHeader
    model_chunk: bytes
    inputs: InputBatch
    def __init__(self, header: _Optional[_Union[BenchmarkHeader, _Mapping]] = ..., model_chunk: _Optional[bytes] = ..., inputs: _Optional[_Union[InputBatch, _Mapping]] = ...) -> None: ...

class MemoryUsage(_message.Message):
    __slots__ = ("peak_rss_bytes", "baseline_rss_bytes", "gpu_used_bytes", "unreadable")
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    peak_rss_bytes: int
    baseline_rss_bytes: int
    gpu_used_bytes: int
    unreadable: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, peak_rss_bytes: _Optional[int] = ..., baseline_rss_bytes: _Optional[int] = ..., gpu_used_bytes: _Optional[int] = ..., unreadable: _Optional[_Iterable[str]] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("size_bytes", "sha256", "opsets", "node_count", "inputs", "outputs")
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OPSETS_FIELD_NUMBER: _ClassVar[int]
    NODE_COUNT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    size_bytes: int
    sha256: str
    opsets: _containers.RepeatedScalarFieldContainer[int]
    node_count: int
    inputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    def __init__(self, size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., opsets: _Optional[_Iterable[int]] = ..., node_count: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ...) -> None: ...

class OutputBatch(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class BenchmarkResponse(_message.Message):
    __slots__ = ("latency", "throughput_per_s", "session_load_ms", "memory", "model", "batch_size", "outputs", "environment", "fingerprint_hash", "execution_provider", "kernel_profile")
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    SESSION_LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_HASH_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KERNEL_PROFILE_FIELD_NUMBER: _ClassVar[int]
    latency: _common_pb2.LatencyStats
    throughput_per_s: float
    session_load_ms: float
    memory: MemoryUsage
    model: ModelSummary
    batch_size: int
    outputs: _containers.RepeatedCompositeFieldContainer[OutputBatch]
    environment: _common_pb2.MeasurementEnvironment
    fingerprint_hash: str
    execution_provider: str
    kernel_profile: KernelProfile
    def __init__(self, latency: _Optional[_Union[_common_pb2.LatencyStats, _Mapping]] = ..., throughput_per_s: _Optional[float] = ..., session_load_ms: _Optional[float] = ..., memory: _Optional[_Union[MemoryUsage, _Mapping]] = ..., model: _Optional[_Union[ModelSummary, _Mapping]] = ..., batch_size: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[OutputBatch, _Mapping]]] = ..., environment: _Optional[_Union[_common_pb2.MeasurementEnvironment, _Mapping]] = ..., fingerprint_hash: _Optional[str] = ..., execution_provider: _Optional[str] = ..., kernel_profile: _Optional[_Union[KernelProfile, _Mapping]] = ...) -> None: ...

class KernelLatency(_message.Message):
    __slots__ = ("name", "key", "latency", "runtime_nodes", "below_resolution")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_NODES_FIELD_NUMBER: _ClassVar[int]
    BELOW_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    key: _common_pb2.OpKey
    latency: _common_pb2.LatencyStats
    runtime_nodes: _containers.RepeatedScalarFieldContainer[str]
    below_resolution: bool
    def __init__(self, name: _Optional[str] = ..., key: _Optional[_Union[_common_pb2.OpKey, _Mapping]] = ..., latency: _Optional[_Union[_common_pb2.LatencyStats, _Mapping]] = ..., runtime_nodes: _Optional[_Iterable[str]] = ..., below_resolution: _Optional[bool] = ...) -> None: ...

class KernelProfile(_message.Message):
    __slots__ = ("kernels", "runs", "profiled_sum_ms", "scale", "node_overhead_ms", "unattributed_nodes", "unattributed_ms", "profiled_run_ms", "attributed_ms")
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    PROFILED_SUM_MS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    NODE_OVERHEAD_MS_FIELD_NUMBER: _ClassVar[int]
    UNATTRIBUTED_NODES_FIELD_NUMBER: _ClassVar[int]
    UNATTRIBUTED_MS_FIELD_NUMBER: _ClassVar[int]
    PROFILED_RUN_MS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTED_MS_FIELD_NUMBER: _ClassVar[int]
    kernels: _containers.RepeatedCompositeFieldContainer[KernelLatency]
    runs: int
    profiled_sum_ms: float
    scale: float
    node_overhead_ms: float
    unattributed_nodes: _containers.RepeatedScalarFieldContainer[str]
    unattributed_ms: float
    profiled_run_ms: float
    attributed_ms: float
    def __init__(self, kernels: _Optional[_Iterable[_Union[KernelLatency, _Mapping]]] = ..., runs: _Optional[int] = ..., profiled_sum_ms: _Optional[float] = ..., scale: _Optional[float] = ..., node_overhead_ms: _Optional[float] = ..., unattributed_nodes: _Optional[_Iterable[str]] = ..., unattributed_ms: _Optional[float] = ..., profiled_run_ms: _Optional[float] = ..., attributed_ms: _Optional[float] = ...) -> None: ...

class ReprofileRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ReprofileResponse(_message.Message):
    __slots__ = ("version_id", "parent_version_id", "sealed", "keys_total", "measured_ok", "unsupported", "failed", "missing", "drift_median_ratio", "drift_p5_ratio", "drift_p95_ratio", "store_url", "reason", "models_measured", "in_model_keys", "skipped_models", "model_drift", "carried_forward")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    KEYS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEASURED_OK_FIELD_NUMBER: _ClassVar[int]
    UNSUPPORTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    DRIFT_MEDIAN_RATIO_FIELD_NUMBER: _ClassVar[int]
    DRIFT_P5_RATIO_FIELD_NUMBER: _ClassVar[int]
    DRIFT_P95_RATIO_FIELD_NUMBER: _ClassVar[int]
    STORE_URL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODELS_MEASURED_FIELD_NUMBER: _ClassVar[int]
    IN_MODEL_KEYS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_MODELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_DRIFT_FIELD_NUMBER: _ClassVar[int]
    CARRIED_FORWARD_FIELD_NUMBER: _ClassVar[int]
    version_id: int
    parent_version_id: int
    sealed: bool
    keys_total: int
    measured_ok: int
    unsupported: int
    failed: int
    missing: int
    drift_median_ratio: float
    drift_p5_ratio: float
    drift_p95_ratio: float
    store_url: str
    reason: str
    models_measured: int
    in_model_keys: int
    skipped_models: _containers.RepeatedCompositeFieldContainer[SkippedModel]
    model_drift: _containers.RepeatedCompositeFieldContainer[ModelDrift]
    carried_forward: int
    def __init__(self, version_id: _Optional[int] = ..., parent_version_id: _Optional[int] = ..., sealed: _Optional[bool] = ..., keys_total: _Optional[int] = ..., measured_ok: _Optional[int] = ..., unsupported: _Optional[int] = ..., failed: _Optional[int] = ..., missing: _Optional[int] = ..., drift_median_ratio: _Optional[float] = ..., drift_p5_ratio: _Optional[float] = ..., drift_p95_ratio: _Optional[float] = ..., store_url: _Optional[str] = ..., reason: _Optional[str] = ..., models_measured: _Optional[int] = ..., in_model_keys: _Optional[int] = ..., skipped_models: _Optional[_Iterable[_Union[SkippedModel, _Mapping]]] = ..., model_drift: _Optional[_Iterable[_Union[ModelDrift, _Mapping]]] = ..., carried_forward: _Optional[int] = ...) -> None: ...

class SkippedModel(_message.Message):
    __slots__ = ("name", "model_sha256", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_sha256: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., model_sha256: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ModelDrift(_message.Message):
    __slots__ = ("name", "model_sha256", "parent_ms", "new_ms", "ratio")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    PARENT_MS_FIELD_NUMBER: _ClassVar[int]
    NEW_MS_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_sha256: str
    parent_ms: float
    new_ms: float
    ratio: float
    def __init__(self, name: _Optional[str] = ..., model_sha256: _Optional[str] = ..., parent_ms: _Optional[float] = ..., new_ms: _Optional[float] = ..., ratio: _Optional[float] = ...) -> None: ...
