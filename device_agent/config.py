"""Agent configuration: one TOML file, command-line flags override it.

```toml
[agent]
listen = "127.0.0.1:50051"
runtime = "onnxruntime"          # onnxruntime | openvino (pip install 'hadmc[openvino]')
execution_provider = "auto"      # onnxruntime: auto | cpu | cuda | tensorrt
openvino_device = "CPU"          # openvino: CPU | GPU | NPU ...
inference_precision = "default"  # openvino: default | f32 | bf16 | f16
latency_statistic = "median"     # median | p10 (a CPU shared with other virtual machines)
intra_op_threads = 0             # 0: the number of physical cores

[profile]                        # measurement defaults of Profile (per kernel)
target_rel_ci = 0.02

[benchmark]                      # measurement defaults of Benchmark (whole models)
max_time_s = 10.0
```
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lut_store.rpc import check_exposure
from lut_store.tomlfile import ConfigError, from_mapping, read_toml

RUNTIMES = ("onnxruntime", "openvino")
LATENCY_STATISTICS = ("median", "p10")
PRECISION_HINTS = ("default", "f32", "bf16", "f16")


@dataclass(frozen=True)
class MeasurementDefaults:
    """Measurement settings used when a request leaves them unset (see common.proto)."""

    warmup_runs: int = 20
    min_runs: int = 20
    max_runs: int = 100_000
    max_time_s: float = 1.0
    target_rel_ci: float = 0.02
    max_attempts: int = 3
    interference_max_cores: float = 0.35
    min_window_s: float = 0.1

    def __post_init__(self) -> None:
        if self.min_runs < 5:
            raise ConfigError(f"min_runs = {self.min_runs}: at least 5 timed runs are needed")
        if self.max_runs < self.min_runs:
            raise ConfigError(f"max_runs = {self.max_runs} is below min_runs = {self.min_runs}")
        if not 0 < self.max_time_s <= 3600:
            raise ConfigError(f"max_time_s = {self.max_time_s} must be in (0, 3600]")
        if not 0 < self.target_rel_ci < 1:
            raise ConfigError(f"target_rel_ci = {self.target_rel_ci} must be in (0, 1)")
        if not 1 <= self.max_attempts <= 20:
            raise ConfigError(f"max_attempts = {self.max_attempts} must be in 1..20")
        if self.interference_max_cores <= 0:
            raise ConfigError("interference_max_cores must be > 0")
        if self.warmup_runs < 0:
            raise ConfigError("warmup_runs must be >= 0")
        if not 0 <= self.min_window_s <= self.max_time_s:
            raise ConfigError(f"min_window_s = {self.min_window_s} must be in [0, max_time_s]")


@dataclass(frozen=True)
class NightlyConfig:
    """Keeping this device's LUT fresh: a daily re-profile into a store (see nightly.py)."""

    # Local time of day "HH:MM"; empty disables the schedule (Reprofile still works with a store).
    at: str = ""
    store: str = ""
    store_token_file: Path | None = None
    store_tls_ca: Path | None = None
    # Grid files whose keys are kept fresh besides those of the last version.
    grids: list[str] = field(default_factory=list)
    # Where the last run is remembered (default: under $HADMC_HOME or the user data directory).
    state_file: Path | None = None
    lease_s: float = 300.0
    # Registered models are measured this many times, spread between the keys; each keeps its
    # fastest pass, the model's latency when other tenants of the machine do not slow it.
    model_passes: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.model_passes <= 20:
            raise ConfigError(f"nightly.model_passes = {self.model_passes} must be between 1 and 20")
        if self.at:
            hour, sep, minute = self.at.partition(":")
            if not (sep and hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
                raise ConfigError(f"nightly.at = {self.at!r} is not a time of day HH:MM")
            if not self.store:
                raise ConfigError("nightly.at is set but nightly.store is not: name the LUT store URL")


@dataclass(frozen=True)
class AgentConfig:
    """Everything `hadmc agent serve` needs; see the module docstring for the file layout."""

    listen: str = "127.0.0.1:50051"
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Allow listening beyond loopback without TLS (a token is still required).
    insecure: bool = False
    # What executes every measurement: "onnxruntime", or "openvino" (an optional extra).
    runtime: str = "onnxruntime"
    execution_provider: str = "auto"
    # OpenVINO only: its device, and its inference precision hint ("default": the device's own
    # choice, bf16 on CPUs with AVX-512 BF16 or AMX).
    openvino_device: str = "CPU"
    inference_precision: str = "default"
    # Which statistic of a measurement window is the latency of record: "median", or "p10" where
    # other tenants of a shared CPU slow a share of the runs unseen by the interference check (the
    # median then moves by tens of percent between minutes, the 10th percentile less).
    latency_statistic: str = "median"
    provider_options: dict[str, str] = field(default_factory=dict)
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    max_model_mib: float = 1024.0
    # Input batches uploaded with one Benchmark (for accuracy on the device), all together.
    max_inputs_mib: float = 256.0
    max_keys_per_request: int = 10000
    max_tensor_elements: int = 1 << 26
    max_queued_jobs: int = 8
    # Benchmark uploads in progress at once (more: RESOURCE_EXHAUSTED), so slow clients cannot hold
    # every RPC thread; each must finish uploading within upload_timeout_s or is cancelled.
    max_uploads: int = 4
    upload_timeout_s: float = 300.0
    # The measurement worker's resident memory beyond which its job is stopped (RESOURCE_EXHAUSTED)
    # and a fresh worker started; 0: no limit. GPU memory is not counted.
    max_worker_mib: float = 8192.0
    key_timeout_s: float = 60.0
    job_timeout_s: float = 600.0
    # How long one Profile call may keep the device; the keys it has not reached by then are left
    # to another call (DEADLINE_EXCEEDED), so one client cannot hold the device for hours.
    max_profile_s: float = 1800.0
    shutdown_grace_s: float = 10.0
    # The measurement worker (onnxruntime loaded, ~100 MB) exits after this long without jobs and
    # restarts (about a second) for the next one; 0 keeps it.
    worker_idle_exit_s: float = 60.0
    # Scratch space (uploads, profiles, optimized models): each agent works in its own run-PID-*
    # directory here, removed when it stops; at start it removes those of agents no longer running.
    # Default: hadmc-agent-UID in the system's temporary directory.
    work_dir: Path | None = None
    profile: MeasurementDefaults = MeasurementDefaults()
    benchmark: MeasurementDefaults = MeasurementDefaults(max_time_s=10.0, target_rel_ci=0.01, min_window_s=1.0)
    nightly: NightlyConfig = NightlyConfig()

    def __post_init__(self) -> None:
        self._check_runtime()
        if self.execution_provider not in ("auto", "cpu", "cuda", "tensorrt"):
            raise ConfigError(
                f"execution_provider = {self.execution_provider!r}; allowed: 'auto', 'cpu', 'cuda', 'tensorrt'"
            )
        if self.intra_op_threads < 0 or self.inter_op_threads < 1:
            raise ConfigError("intra_op_threads must be >= 0 and inter_op_threads >= 1")
        positive = ("max_model_mib", "max_inputs_mib", "key_timeout_s", "job_timeout_s", "upload_timeout_s")
        for name in (*positive, "max_profile_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.max_worker_mib < 0:
            raise ConfigError(f"max_worker_mib = {self.max_worker_mib} must be >= 0 (0: no limit)")
        if (
            self.max_queued_jobs < 0
            or self.max_keys_per_request < 1
            or self.max_tensor_elements < 1
            or self.max_uploads < 1
        ):
            raise ConfigError(
                "max_queued_jobs >= 0, max_keys_per_request >= 1, max_tensor_elements >= 1 and max_uploads >= 1 "
                "are required"
            )
        try:
            check_exposure(self.listen, self.token_file, self.tls_cert, self.tls_key, self.insecure)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _check_runtime(self) -> None:
        if self.latency_statistic not in LATENCY_STATISTICS:
            raise ConfigError(
                f"latency_statistic = {self.latency_statistic!r}; allowed: {', '.join(map(repr, LATENCY_STATISTICS))}"
            )
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime = {self.runtime!r}; allowed: {', '.join(map(repr, RUNTIMES))}")
        if self.inference_precision not in PRECISION_HINTS:
            raise ConfigError(
                f"inference_precision = {self.inference_precision!r}; allowed: {', '.join(map(repr, PRECISION_HINTS))}"
            )
        if self.runtime == "onnxruntime" and self.inference_precision not in ("default", "f32"):
            raise ConfigError(
                f"inference_precision = {self.inference_precision!r} is an OpenVINO setting; onnxruntime computes "
                "float layers at the model's own precision (set runtime = 'openvino', or leave it 'default')"
            )
        if self.runtime == "openvino" and importlib.util.find_spec("openvino") is None:
            raise ConfigError("runtime = 'openvino' needs OpenVINO on this device: pip install 'hadmc[openvino]'")

    @property
    def max_model_bytes(self) -> int:
        return int(self.max_model_mib * 1024 * 1024)

    @property
    def max_inputs_bytes(self) -> int:
        return int(self.max_inputs_mib * 1024 * 1024)


_SECTIONS = ("agent", "profile", "benchmark", "nightly")


def load_agent_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> AgentConfig:
    """Read `path` (TOML: [agent], [profile], [benchmark], [nightly]), then apply flag overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(path, "config", ConfigError)
        for section, table in raw.items():
            if section not in _SECTIONS:
                near = difflib.get_close_matches(section, list(_SECTIONS), n=1)
                hint = f"; did you mean [{near[0]}]?" if near else ""
                raise ConfigError(f"unknown config section [{section}] in {path}{hint}")
            if section == "agent":
                data.update(table)
            else:
                data[section] = table
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_mapping(AgentConfig, data)
