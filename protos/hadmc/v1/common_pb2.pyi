from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_FP32: _ClassVar[Precision]
    PRECISION_FP16: _ClassVar[Precision]
    PRECISION_INT8: _ClassVar[Precision]
    PRECISION_INT4: _ClassVar[Precision]
    PRECISION_BF16: _ClassVar[Precision]
    PRECISION_FP8: _ClassVar[Precision]

class TensorRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_ROLE_UNSPECIFIED: _ClassVar[TensorRole]
    TENSOR_ROLE_ACTIVATION: _ClassVar[TensorRole]
    TENSOR_ROLE_WEIGHT: _ClassVar[TensorRole]
    TENSOR_ROLE_CONSTANT: _ClassVar[TensorRole]

class KeyContext(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_CONTEXT_ISOLATED: _ClassVar[KeyContext]
    KEY_CONTEXT_IN_MODEL: _ClassVar[KeyContext]
PRECISION_UNSPECIFIED: Precision
PRECISION_FP32: Precision
PRECISION_FP16: Precision
PRECISION_INT8: Precision
PRECISION_INT4: Precision
PRECISION_BF16: Precision
PRECISION_FP8: Precision
TENSOR_ROLE_UNSPECIFIED: TensorRole
TENSOR_ROLE_ACTIVATION: TensorRole
TENSOR_ROLE_WEIGHT: TensorRole
TENSOR_ROLE_CONSTANT: TensorRole
KEY_CONTEXT_ISOLATED: KeyContext
KEY_CONTEXT_IN_MODEL: KeyContext

class TensorSpec(_message.Message):
    __slots__ = ("shape", "dtype", "role", "int_values", "float_values")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUES_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUES_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    role: TensorRole
    int_values: _containers.RepeatedScalarFieldContainer[int]
    float_values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., role: _Optional[_Union[TensorRole, str]] = ..., int_values: _Optional[_Iterable[int]] = ..., float_values: _Optional[_Iterable[float]] = ...) -> None: ...

class Ints(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class Floats(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Attribute(_message.Message):
    __slots__ = ("name", "i", "f", "s", "ints", "floats")
    NAME_FIELD_NUMBER: _ClassVar[int]
    I_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    INTS_FIELD_NUMBER: _ClassVar[int]
    FLOATS_FIELD_NUMBER: _ClassVar[int]
    name: str
    i: int
    f: float
    s: str
    ints: Ints
    floats: Floats
    def __init__(self, name: _Optional[str] = ..., i: _Optional[int] = ..., f: _Optional[float] = ..., s: _Optional[str] = ..., ints: _Optional[_Union[Ints, _Mapping]] = ..., floats: _Optional[_Union[Floats, _Mapping]] = ...) -> None: ...

class OpNode(_message.Message):
    __slots__ = ("op_type", "domain", "inputs", "attributes", "num_outputs")
    OP_TYPE_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    NUM_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    op_type: str
    domain: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.RepeatedCompositeFieldContainer[Attribute]
    num_outputs: int
    def __init__(self, op_type: _Optional[str] = ..., domain: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Iterable[_Union[Attribute, _Mapping]]] = ..., num_outputs: _Optional[int] = ...) -> None: ...

class OpKey(_message.Message):
    __slots__ = ("inputs", "nodes", "precision", "opset", "context", "neighbors")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    nodes: _containers.RepeatedCompositeFieldContainer[OpNode]
    precision: Precision
    opset: int
    context: KeyContext
    neighbors: str
    def __init__(self, inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[OpNode, _Mapping]]] = ..., precision: _Optional[_Union[Precision, str]] = ..., opset: _Optional[int] = ..., context: _Optional[_Union[KeyContext, str]] = ..., neighbors: _Optional[str] = ...) -> None: ...

class MeasurementSettings(_message.Message):
    __slots__ = ("warmup_runs", "min_runs", "max_runs", "max_time_s", "target_rel_ci", "max_attempts", "interference_max_cores", "min_window_s")
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    MIN_RUNS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    MAX_TIME_S_FIELD_NUMBER: _ClassVar[int]
    TARGET_REL_CI_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    INTERFERENCE_MAX_CORES_FIELD_NUMBER: _ClassVar[int]
    MIN_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    warmup_runs: int
    min_runs: int
    max_runs: int
    max_time_s: float
    target_rel_ci: float
    max_attempts: int
    interference_max_cores: float
    min_window_s: float
    def __init__(self, warmup_runs: _Optional[int] = ..., min_runs: _Optional[int] = ..., max_runs: _Optional[int] = ..., max_time_s: _Optional[float] = ..., target_rel_ci: _Optional[float] = ..., max_attempts: _Optional[int] = ..., interference_max_cores: _Optional[float] = ..., min_window_s: _Optional[float] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("median_ms", "mean_ms", "p90_ms", "p99_ms", "std_ms", "min_ms", "max_ms", "n", "rel_ci95", "stable", "attempts", "other_cpu_cores", "settings", "p10_ms", "latency_ms")
    MEDIAN_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    STD_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    REL_CI95_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    OTHER_CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    P10_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    median_ms: float
    mean_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    n: int
    rel_ci95: float
    stable: bool
    attempts: int
    other_cpu_cores: float
    settings: MeasurementSettings
    p10_ms: float
    latency_ms: float
    def __init__(self, median_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., std_ms: _Optional[float] = ..., min_ms: _Optional[float] = ..., max_ms: _Optional[float] = ..., n: _Optional[int] = ..., rel_ci95: _Optional[float] = ..., stable: _Optional[bool] = ..., attempts: _Optional[int] = ..., other_cpu_cores: _Optional[float] = ..., settings: _Optional[_Union[MeasurementSettings, _Mapping]] = ..., p10_ms: _Optional[float] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class MeasurementEnvironment(_message.Message):
    __slots__ = ("measured_at_unix_s", "cpu_freq_mhz", "cpu_governor", "cpu_temp_c", "gpu_sm_clock_mhz", "gpu_mem_clock_mhz", "gpu_temp_c", "power_mode", "throttle_reasons", "unreadable")
    MEASURED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    CPU_FREQ_MHZ_FIELD_NUMBER: _ClassVar[int]
    CPU_GOVERNOR_FIELD_NUMBER: _ClassVar[int]
    CPU_TEMP_C_FIELD_NUMBER: _ClassVar[int]
    GPU_SM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    GPU_MEM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    GPU_TEMP_C_FIELD_NUMBER: _ClassVar[int]
    POWER_MODE_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASONS_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    measured_at_unix_s: float
    cpu_freq_mhz: float
    cpu_governor: str
    cpu_temp_c: float
    gpu_sm_clock_mhz: float
    gpu_mem_clock_mhz: float
    gpu_temp_c: float
    power_mode: str
    throttle_reasons: _containers.RepeatedScalarFieldContainer[str]
    unreadable: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, measured_at_unix_s: _Optional[float] = ..., cpu_freq_mhz: _Optional[float] = ..., cpu_governor: _Optional[str] = ..., cpu_temp_c: _Optional[float] = ..., gpu_sm_clock_mhz: _Optional[float] = ..., gpu_mem_clock_mhz: _Optional[float] = ..., gpu_temp_c: _Optional[float] = ..., power_mode: _Optional[str] = ..., throttle_reasons: _Optional[_Iterable[str]] = ..., unreadable: _Optional[_Iterable[str]] = ...) -> None: ...
