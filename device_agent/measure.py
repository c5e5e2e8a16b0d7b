"""Measurement discipline: warm up, repeat until the median is stable or a cap hits, discard
windows that other processes disturbed, and record the device's state with the numbers.

Runs inside the measurement worker process.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from device_agent.jobs import Settings
from protos.hadmc.v1 import common_pb2

# CPU times are counted in clock ticks (10 ms at the usual 100 Hz): a few ticks of rounding
# between the system-wide and the per-process counters are not another process's work.
_ACCOUNTING_SLACK_S = 2.0 / os.sysconf("SC_CLK_TCK")
_TEMP_SENSORS = ("coretemp", "k10temp", "cpu_thermal", "cpu-thermal", "soc_thermal", "acpitz")


class MeasurementCancelled(Exception):
    """The job was cancelled (client gone, deadline, shutdown) between runs."""


class InterferenceError(Exception):
    """Every measurement window was disturbed by other processes."""


def median_rel_ci95(sorted_ms: np.ndarray) -> float:
    """Half-width of the distribution-free 95% CI of the median, relative to the median.

    Uses order statistics: ranks n/2 -+ 1.96 * sqrt(n) / 2 (binomial normal approximation).
    """
    n = len(sorted_ms)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)) - 1)
    hi = min(n - 1, int(math.ceil(n / 2 + half)) - 1)
    median = float(np.median(sorted_ms))
    if median <= 0:
        return math.inf
    return float(sorted_ms[hi] - sorted_ms[lo]) / (2 * median)


class CpuMonitor:
    """CPU time used by processes other than ours over a window, in cores."""

    def __init__(self, own_pids: tuple[int, ...]) -> None:
        self._procs = []
        for pid in own_pids:
            try:
                self._procs.append(psutil.Process(pid))
            except psutil.Error:
                continue

    def _own_cpu_s(self) -> float:
        total = 0.0
        for p in self._procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total

    @staticmethod
    def _busy_s() -> float:
        t = psutil.cpu_times()
        busy = ("user", "nice", "system", "irq", "softirq", "steal")
        return sum(getattr(t, name, 0.0) for name in busy)

    def start(self) -> tuple[float, float, float]:
        return time.monotonic(), self._busy_s(), self._own_cpu_s()

    def other_cores(self, started: tuple[float, float, float]) -> float:
        """Average cores other processes used since `started`, less the accounting slack."""
        t0, busy0, own0 = started
        wall = time.monotonic() - t0
        if wall <= 0:
            return 0.0
        other = (self._busy_s() - busy0) - (self._own_cpu_s() - own0)
        return max(0.0, other - _ACCOUNTING_SLACK_S) / wall


@dataclass(frozen=True)
class Window:
    samples_ms: np.ndarray
    rel_ci95: float
    stable: bool
    other_cores: float


def _window(run_once: Callable[[], None], s: Settings, monitor: CpuMonitor, cancelled: Callable[[], bool]) -> Window:
    """Timed runs until the median's CI meets the target (after min_runs and min_window_s), or
    max_time_s / max_runs once min_runs are done. Cancellation is checked after every run
    (outside the timed span)."""
    samples: list[float] = []
    started = monitor.start()
    start_ns = time.perf_counter_ns()
    deadline_ns = start_ns + int(s.max_time_s * 1e9)
    window_ns = start_ns + int(s.min_window_s * 1e9)
    next_check = s.min_runs
    rel_ci, stable = math.inf, False
    while True:
        t0 = time.perf_counter_ns()
        run_once()
        t1 = time.perf_counter_ns()
        samples.append((t1 - t0) / 1e6)
        if cancelled():
            raise MeasurementCancelled()
        n = len(samples)
        capped = n >= s.max_runs or (n >= s.min_runs and t1 >= deadline_ns)
        if n >= next_check or capped:
            arr = np.sort(np.asarray(samples))
            rel_ci = median_rel_ci95(arr)
            stable = rel_ci <= s.target_rel_ci
            if (stable and t1 >= window_ns) or capped:
                break
            # Check again after a quarter more runs: CI checks stay cheap as n grows.
            next_check = n + max(s.min_runs // 2, n // 4, 1)
    return Window(arr, rel_ci, stable, monitor.other_cores(started))


def measure(
    run_once: Callable[[], None],
    s: Settings,
    own_pids: tuple[int, ...],
    cancelled: Callable[[], bool],
    statistic: str = "median",
) -> common_pb2.LatencyStats:
    """Warm up, then measure windows until one is undisturbed; return its statistics, with
    `statistic` ("median" or "p10") of the window as the latency of record.

    Raises InterferenceError when every window (s.max_attempts) was disturbed.
    """
    for _ in range(s.warmup_runs):
        run_once()
    if cancelled():
        raise MeasurementCancelled()
    monitor = CpuMonitor(own_pids)
    disturbed: list[float] = []
    for attempt in range(1, s.max_attempts + 1):
        w = _window(run_once, s, monitor, cancelled)
        if w.other_cores <= s.interference_max_cores:
            x = w.samples_ms
            median_ms, p10_ms = float(np.median(x)), float(np.percentile(x, 10))
            return common_pb2.LatencyStats(
                latency_ms=p10_ms if statistic == "p10" else median_ms,
                median_ms=median_ms,
                mean_ms=float(x.mean()),
                p10_ms=p10_ms,
                p90_ms=float(np.percentile(x, 90)),
                p99_ms=float(np.percentile(x, 99)),
                std_ms=float(x.std(ddof=1)),
                min_ms=float(x[0]),
                max_ms=float(x[-1]),
                n=len(x),
                rel_ci95=w.rel_ci95,
                stable=w.stable,
                attempts=attempt,
                other_cpu_cores=w.other_cores,
                settings=s.to_proto(),
            )
        disturbed.append(w.other_cores)
        time.sleep(min(0.2 * attempt, 1.0))
    raise InterferenceError(
        "other processes kept the device busy in all "
        f"{s.max_attempts} measurement windows (using "
        + ", ".join(f"{c:.2f}" for c in disturbed)
        + f" cores; limit {s.interference_max_cores}); measure again when the device is quiet"
    )


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


class EnvironmentReader:
    """Reads the device state that explains latency drift; unreadable fields are named."""

    def __init__(self, nvml_handle: object | None, power_mode: str | None) -> None:
        self._nvml = nvml_handle
        self._power_mode = power_mode
        self._throttle_counts = self._cpu_throttle_counts()

    @staticmethod
    def _cpu_throttle_counts() -> dict[str, int]:
        counts = {}
        for cpu in range(os.cpu_count() or 1):
            text = _read_text(f"/sys/devices/system/cpu/cpu{cpu}/thermal_throttle/core_throttle_count")
            if text is not None and text.isdigit():
                counts[str(cpu)] = int(text)
        return counts

    def read(self) -> common_pb2.MeasurementEnvironment:
        env = common_pb2.MeasurementEnvironment(measured_at_unix_s=time.time())
        freq = psutil.cpu_freq() if hasattr(psutil, "cpu_freq") else None
        if freq is not None and freq.current > 0:
            env.cpu_freq_mhz = float(freq.current)
        else:
            env.unreadable.append("cpu_freq_mhz")
        governor = _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
        if governor:
            env.cpu_governor = governor
        else:
            env.unreadable.append("cpu_governor")
        temp = self._cpu_temp_c()
        if temp is not None:
            env.cpu_temp_c = temp
        else:
            env.unreadable.append("cpu_temp_c")
        if self._power_mode:
            env.power_mode = self._power_mode
        else:
            env.unreadable.append("power_mode")
        counts = self._cpu_throttle_counts()
        if any(counts.get(c, 0) > n for c, n in self._throttle_counts.items()):
            env.throttle_reasons.append("cpu_thermal_throttle")
        self._throttle_counts = counts
        self._read_gpu(env)
        return env

    @staticmethod
    def _cpu_temp_c() -> float | None:
        try:
            sensors = psutil.sensors_temperatures()
        except (AttributeError, OSError):
            return None
        for name in _TEMP_SENSORS:
            readings = sensors.get(name)
            if readings:
                return float(max(r.current for r in readings))
        return None

    def _read_gpu(self, env: common_pb2.MeasurementEnvironment) -> None:
        if self._nvml is None:
            env.unreadable.extend(["gpu_sm_clock_mhz", "gpu_mem_clock_mhz", "gpu_temp_c"])
            return
        import pynvml

        h = self._nvml
        try:
            env.gpu_sm_clock_mhz = float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM))
            env.gpu_mem_clock_mhz = float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM))
            env.gpu_temp_c = float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))
            reasons = pynvml.nvmlDeviceGetCurrentClocksEventReasons(h)
            for name in dir(pynvml):
                if name.startswith("nvmlClocksEventReason") and name != "nvmlClocksEventReasonNone":
                    bit = getattr(pynvml, name)
                    if isinstance(bit, int) and bit and reasons & bit and "All" not in name:
                        env.throttle_reasons.append(name.removeprefix("nvmlClocksEventReason"))
        except pynvml.NVMLError as exc:
            env.unreadable.append(f"gpu ({exc})")
