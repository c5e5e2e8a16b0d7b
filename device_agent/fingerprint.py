"""The device fingerprint: what the device is and everything that changes its latencies."""

from __future__ import annotations

import platform
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

from device_agent.jobs import RuntimeFacts
from lut_store.fingerprint import HASHED_FIELDS, document, fingerprint_hash
from protos.hadmc.v1 import agent_pb2

# Bump when the way latencies are measured changes: stored numbers stop being comparable.
PROFILER_VERSION = "1"
_CPU_FLAGS = frozenset(
    {
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
        "asimd",
        "asimdhp",
        "asimddp",
        "sve",
        "sve2",
        "i8mm",
        "bf16",
        "fphp",
    }
)


def agent_version() -> str:
    try:
        return metadata.version("hadmc")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _cpuinfo() -> dict[str, str]:
    """First occurrence of each key in /proc/cpuinfo."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                info.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return info


def cpu_info() -> agent_pb2.CpuInfo:
    info = _cpuinfo()
    model = info.get("model name") or info.get("hardware") or info.get("model") or platform.processor()
    dt_model = Path("/proc/device-tree/model")
    if not model and dt_model.exists():
        model = dt_model.read_text().strip("\x00\n ")
    flags = set((info.get("flags") or info.get("features") or "").split()) & _CPU_FLAGS
    return agent_pb2.CpuInfo(
        model=model or "unknown",
        architecture=platform.machine(),
        physical_cores=psutil.cpu_count(logical=False) or 1,
        logical_cores=psutil.cpu_count(logical=True) or 1,
        flags=sorted(flags),
    )


def read_power_mode() -> str | None:
    """A Jetson's nvpmodel mode, or None where there is no such thing."""
    tool = shutil.which("nvpmodel")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "-q"], capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return " ".join(lines) or None


def _gpus(fp: agent_pb2.Fingerprint) -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses or OSError without a driver
        fp.notes["gpus"] = f"no NVIDIA GPU readable ({type(exc).__name__}); a normal state on a CPU box"
        return
    try:
        fp.gpu_driver_version = str(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        fp.cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}"
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            fp.gpus.add(
                name=str(pynvml.nvmlDeviceGetName(h)),
                memory_total_bytes=pynvml.nvmlDeviceGetMemoryInfo(h).total,
                compute_capability=f"{major}.{minor}",
            )
    except pynvml.NVMLError as exc:
        fp.notes["gpus"] = f"NVML error: {exc}"
    finally:
        pynvml.nvmlShutdown()


def collect(
    facts: RuntimeFacts, intra_op_threads: int, inter_op_threads: int, latency_statistic: str = "median"
) -> agent_pb2.Fingerprint:
    """The fingerprint from host facts plus what the worker's probe found of its runtime."""
    fp = agent_pb2.Fingerprint(
        agent_version=agent_version(),
        profiler_version=PROFILER_VERSION,
        cpu=cpu_info(),
        memory_total_bytes=psutil.virtual_memory().total,
        runtime=facts.runtime,
        runtime_version=facts.version,
        inference_precision=facts.inference_precision,
        onnxruntime_version=facts.version if facts.runtime == "onnxruntime" else "",
        available_providers=facts.available,
        execution_provider=facts.device,
        provider_options=facts.options,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        os=f"{platform.system()} {platform.release()}".strip(),
        kernel=platform.version(),
        hostname=socket.gethostname(),
        hashed_fields=(*HASHED_FIELDS, *(("latency_statistic",) if latency_statistic != "median" else ())),
        latency_statistic=latency_statistic,
    )
    _gpus(fp)
    power = read_power_mode()
    if power:
        fp.power_mode = power
    else:
        fp.notes["power_mode"] = "not readable (no nvpmodel)"
    return fp


def hash_of(fp: agent_pb2.Fingerprint) -> str:
    return fingerprint_hash(document(fp))
