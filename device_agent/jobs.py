"""Records that cross the pipe between the daemon and its measurement worker.

Light on purpose: the daemon imports this module, never numpy or onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lut_store.precision import Precision
from protos.hadmc.v1 import common_pb2


@dataclass(frozen=True)
class Settings:
    """Resolved measurement settings (all fields set); mirrors common.MeasurementSettings."""

    warmup_runs: int
    min_runs: int
    max_runs: int
    max_time_s: float
    target_rel_ci: float
    max_attempts: int
    interference_max_cores: float
    min_window_s: float

    def to_proto(self) -> common_pb2.MeasurementSettings:
        return common_pb2.MeasurementSettings(**self.__dict__)


# Error codes a job can end with (mapped to KeyError codes / gRPC status codes by the server).
INVALID, UNSUPPORTED, FAILED, INTERFERENCE, CANCELLED = (
    "invalid",
    "unsupported",
    "failed",
    "interference",
    "cancelled",
)
# Set by the daemon's runner: past the hard timeout; the worker process died; it held more memory
# than the agent allows a worker.
TIMEOUT, CRASHED, EXHAUSTED = "timeout", "crashed", "exhausted"


@dataclass(frozen=True)
class WorkerSettings:
    """How the worker sets up its runtime; fixed for the worker's life."""

    execution_provider: str
    provider_options: dict[str, str]
    intra_op_threads: int
    inter_op_threads: int
    max_tensor_elements: int
    own_pids: tuple[int, ...]
    tmp_dir: str = ""  # the agent's scratch directory for the worker's temporary files ("": the system's)
    max_memory_mib: float = 0.0  # the worker's resident memory beyond which its job is stopped (0: no limit)
    runtime: str = "onnxruntime"  # or "openvino"
    openvino_device: str = "CPU"
    inference_precision: str = "default"  # OpenVINO's precision hint: default | f32 | bf16 | f16
    latency_statistic: str = "median"  # the latency of record: median | p10


@dataclass(frozen=True)
class ProbeJob:
    """Report runtime facts and which precisions run."""


@dataclass(frozen=True)
class ProfileJob:
    key_json: str
    settings: Settings


@dataclass(frozen=True)
class BenchmarkJob:
    model_path: str
    batch_size: int
    settings: Settings
    input_batches: tuple[bytes, ...] = ()
    output_names: tuple[str, ...] = ()
    per_kernel: bool = False


@dataclass(frozen=True)
class JobFailure:
    code: str
    message: str


@dataclass(frozen=True)
class RuntimeFacts:
    """What the probe reports of the runtime and the fingerprint hashes."""

    runtime: str  # "onnxruntime" | "openvino"
    version: str
    available: list[str]  # onnxruntime's execution providers, or OpenVINO's devices
    device: str  # the execution provider, or the OpenVINO device, that measures
    options: dict[str, str]  # what every session / compiled model is created with
    inference_precision: str  # what float layers compute in: "f32", "bf16", "f16"


@dataclass(frozen=True)
class ProbeResult:
    facts: RuntimeFacts
    # (precision, supported, note)
    precisions: list[tuple[Precision, bool, str]] = field(default_factory=list)
    # The widest int8 weights the int8 kernels sum exactly (8, or 7 where they saturate); None:
    # int8 does not run, or the check could not.
    int8_exact_weight_bits: int | None = None


def short(exc: BaseException) -> str:
    """An exception's text as one line of at most 500 characters, for job results."""
    return " ".join(str(exc).split())[:500]


class JobError(Exception):
    """A job that ended without a result; `code` is one of the codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
