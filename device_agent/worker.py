"""The measurement worker: a child process that owns the runtime (onnxruntime or OpenVINO, see
device_agent/runtimes) and runs one job at a time.

The daemon never imports a runtime itself; a model that crashes the runtime kills only this
process, and the daemon starts a fresh one (see runner.py). Jobs and replies are small typed
records sent over a pipe; measurement results travel as serialized protobuf messages.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from device_agent.jobs import (
    CANCELLED,
    FAILED,
    INTERFERENCE,
    INVALID,
    UNSUPPORTED,
    BenchmarkJob,
    JobError,
    JobFailure,
    ProbeJob,
    ProbeResult,
    ProfileJob,
    Settings,
    WorkerSettings,
    short,
)


class PeakRss:
    """Peak resident memory of this process over a span (Linux: VmHWM after clear_refs)."""

    def __init__(self) -> None:
        self.baseline: int | None = None
        self.readable = True
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.baseline = self._status("VmRSS")
        except OSError:
            self.readable = False

    @staticmethod
    def _status(field_name: str) -> int | None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
        return None

    def peak(self) -> int | None:
        return self._status("VmHWM") if self.readable else None


def open_backend(ws: WorkerSettings) -> Any:
    """The runtime backend `ws.runtime` names, set up for this device (device_agent/runtimes)."""
    if ws.runtime == "openvino":
        from device_agent.runtimes.ov import OpenVinoBackend

        return OpenVinoBackend(ws)
    from device_agent.runtimes.ort import OrtBackend

    return OrtBackend(ws)


class Worker:
    def __init__(self, ws: WorkerSettings, cancelled: Callable[[], bool]) -> None:
        from device_agent.fingerprint import read_power_mode
        from device_agent.measure import EnvironmentReader

        self.ws = ws
        self.rt = open_backend(ws)
        self.cancelled = cancelled
        self.env = EnvironmentReader(self.rt.nvml_handle, read_power_mode())
        self._node_overhead_ms: float | None = None  # the profiler's cost per node, measured on first use

    def handle(self, job: Any) -> Any:
        if isinstance(job, ProbeJob):
            return self.probe()
        if isinstance(job, ProfileJob):
            return self.profile(job)
        if isinstance(job, BenchmarkJob):
            return self.benchmark(job)
        raise JobError(INVALID, f"unknown job {type(job).__name__}")

    def _measure(self, run_once: Callable[[], None], settings: Settings) -> Any:
        from device_agent.measure import (
            InterferenceError,
            MeasurementCancelled,
            measure,
        )

        try:
            return measure(
                run_once, settings, (*self.ws.own_pids, os.getpid()), self.cancelled, self.ws.latency_statistic
            )
        except MeasurementCancelled:
            raise JobError(CANCELLED, "cancelled") from None
        except InterferenceError as exc:
            raise JobError(INTERFERENCE, str(exc)) from None

    @staticmethod
    def _first_run(loaded: Any, feeds: dict[str, Any], what: str) -> Callable[[], None]:
        """Bind the inputs and run once; a failure here is the job's, reported as FAILED."""
        try:
            run_once = loaded.runner(feeds)
            run_once()
        except Exception as exc:  # runtimes raise their own exception types at run time
            raise JobError(FAILED, f"{what} failed to run: {short(exc)}") from None
        return run_once

    def profile(self, job: ProfileJob) -> tuple[bytes, bytes]:
        import numpy as np

        from device_agent.opgraph import (
            KeyInvalid,
            KeyUnsupported,
            activation_feeds,
            build_model,
        )
        from lut_store.opkey import OpKey, OpKeyError

        try:
            key = OpKey.from_json(job.key_json)
            model = build_model(key, self.ws.max_tensor_elements)
        except (KeyInvalid, OpKeyError) as exc:
            raise JobError(INVALID, str(exc)) from None
        except KeyUnsupported as exc:
            raise JobError(UNSUPPORTED, str(exc)) from None
        loaded = self.rt.load(model.SerializeToString())
        run_once = self._first_run(loaded, activation_feeds(model, np.random.default_rng(1)), "the kernel")
        stats = self._measure(run_once, job.settings)
        return stats.SerializeToString(), self.env.read().SerializeToString()

    def probe(self) -> ProbeResult:
        from lut_store.keys.ops import NCHW, ConvSpec, conv
        from lut_store.precision import Precision

        precisions = []
        weight_bits = None
        for precision in Precision:
            key = conv(NCHW(1, 16, 8, 8), ConvSpec(16, 3), fuse=("relu",), precision=precision)
            supported, note = self._probe_precision(key)
            if precision is Precision.INT8 and supported:
                weight_bits, said = self._int8_exact_weight_bits()
                note += said
            precisions.append((precision, supported, note))
        return ProbeResult(facts=self.rt.facts, precisions=precisions, int8_exact_weight_bits=weight_bits)

    def _int8_exact_weight_bits(self) -> tuple[int | None, str]:
        """8 where the int8 kernels sum the products of 8-bit weights exactly, 7 where they do not
        (`opgraph.int8_saturation_check`), None where the check cannot run; and what to add to the
        int8 note."""
        from device_agent.opgraph import int8_saturation_check

        model, feeds, exact = int8_saturation_check()
        try:
            loaded = self.rt.load(model.SerializeToString())
            got = loaded.run(loaded.output_names(), feeds)[0]
        except Exception as exc:  # runtimes raise their own exception types
            return None, f"; the int8 exactness check failed to run: {short(exc)}"
        if bool((got == exact).all()):
            return 8, ""
        return 7, "; exact only with 7-bit weights (pairs of u8 x s8 products saturate at int16)"

    def _probe_precision(self, key: Any) -> tuple[bool, str]:
        """Run a small conv at the key's precision; say what the runtime made of it."""
        import numpy as np

        from device_agent.opgraph import (
            KeyInvalid,
            KeyUnsupported,
            activation_feeds,
            build_model,
        )

        try:
            model = build_model(key, self.ws.max_tensor_elements)
        except (KeyUnsupported, KeyInvalid) as exc:
            return False, str(exc)
        try:
            feeds = activation_feeds(model, np.random.default_rng(0))
            return True, self.rt.executed_as(model.SerializeToString(), feeds)
        except JobError as exc:
            return False, str(exc)
        except Exception as exc:  # a run-time failure means the precision does not run
            return False, f"fails to run: {short(exc)}"

    def benchmark(self, job: BenchmarkJob) -> bytes:
        import numpy as np

        from device_agent import modelcheck
        from device_agent.opgraph import KeyInvalid, activation_feeds
        from protos.hadmc.v1 import agent_pb2

        path = Path(job.model_path)
        data = path.read_bytes()
        try:
            model = modelcheck.load_checked(data)
            batch = modelcheck.resolve_batch(model, job.batch_size)
            batches = self._decode_inputs(model, job.input_batches)
            feeds = activation_feeds(model, np.random.default_rng(0), batch, self.ws.max_tensor_elements)
        except (modelcheck.ModelInvalid, KeyInvalid) as exc:
            raise JobError(INVALID, str(exc)) from None
        kernels = None
        if job.per_kernel:
            from lut_store.keys.graph import UnsupportedModel, model_kernels

            try:
                kernels = model_kernels(model, batch)
            except UnsupportedModel as exc:
                raise JobError(UNSUPPORTED, str(exc)) from None
        summary = modelcheck.summary(model, data)
        del model, data
        rss = PeakRss()
        t0 = time.perf_counter()
        loaded = self.rt.load(str(path), batch, for_profile=job.per_kernel)
        load_ms = (time.perf_counter() - t0) * 1000
        run_once = self._first_run(loaded, feeds, f"the model at batch {batch}")
        stats = self._measure(run_once, job.settings)
        response = agent_pb2.BenchmarkResponse(
            latency=stats,
            throughput_per_s=batch * 1000.0 / stats.latency_ms,
            session_load_ms=load_ms,
            model=summary,
            batch_size=batch,
            environment=self.env.read(),
            execution_provider=self.rt.label,
        )
        self._record_memory(response.memory, rss)
        if kernels is not None:
            response.kernel_profile.CopyFrom(
                self._kernel_profile(kernels, str(path), loaded, feeds, stats, job.settings)
            )
        self._add_outputs(response, loaded, list(job.output_names), batches)
        return response.SerializeToString()

    def _record_memory(self, memory: Any, rss: PeakRss) -> None:
        """Peak RSS over the span and GPU memory in use, or the names of those unreadable here."""
        peak = rss.peak()
        if peak is not None and rss.baseline is not None:
            memory.peak_rss_bytes = peak
            memory.baseline_rss_bytes = rss.baseline
        else:
            memory.unreadable.extend(["peak_rss_bytes", "baseline_rss_bytes"])
        gpu = self._gpu_used_bytes()
        if gpu is not None:
            memory.gpu_used_bytes = gpu
        else:
            memory.unreadable.append("gpu_used_bytes")

    @staticmethod
    def _add_outputs(response: Any, loaded: Any, names: list[str], batches: list[dict[str, Any]]) -> None:
        """Run each uploaded input batch; add the outputs named (default: all) to `response`."""
        import numpy as np
        from onnx import numpy_helper

        known = loaded.output_names()
        names = names or known
        unknown = [n for n in names if n not in known]
        if unknown:
            raise JobError(INVALID, f"unknown output names {unknown}; the model has {sorted(known)}")
        for feeds_k in batches:
            try:
                values = loaded.run(names, feeds_k)
            except JobError:
                raise
            except Exception as exc:  # runtimes raise their own exception types at run time
                raise JobError(INVALID, f"running an uploaded input batch failed: {short(exc)}") from None
            out = response.outputs.add()
            for name, value in zip(names, values, strict=True):
                out.tensors.add(
                    name=name, tensor_proto=numpy_helper.from_array(np.asarray(value), name).SerializeToString()
                )

    def _kernel_profile(
        self, kernels: Any, model_path: str, loaded: Any, feeds: dict[str, Any], whole: Any, settings: Settings
    ) -> Any:
        from device_agent.kernelprofile import MAX_PROFILED_RUNS, node_overhead_ms, profile_kernels
        from lut_store.keys.graph import UnsupportedModel

        try:
            if self._node_overhead_ms is None:
                self._node_overhead_ms = node_overhead_ms(
                    self.rt, lambda run_once: self._measure(run_once, settings).median_ms, self.cancelled
                )
            runs = int(min(max(whole.n, 20), MAX_PROFILED_RUNS))
            times = self.rt.profile_nodes(
                model_path, loaded, feeds, kernels.batch_size, settings.warmup_runs, runs, self.cancelled
            )
            return profile_kernels(kernels, times, whole, self._node_overhead_ms, self.ws.latency_statistic)
        except InterruptedError:
            raise JobError(CANCELLED, "cancelled") from None
        except UnsupportedModel as exc:
            raise JobError(UNSUPPORTED, str(exc)) from None

    @staticmethod
    def _decode_inputs(model: Any, raw_batches: tuple[bytes, ...]) -> list[dict[str, Any]]:
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper

        from device_agent import modelcheck
        from protos.hadmc.v1 import agent_pb2

        expected = {vi.name: vi.type.tensor_type for vi in modelcheck.graph_inputs(model)}
        batches = []
        for k, raw in enumerate(raw_batches):
            batch = agent_pb2.InputBatch.FromString(raw)
            feeds = {}
            for nt in batch.tensors:
                if nt.name not in expected:
                    raise modelcheck.ModelInvalid(
                        f"input batch {k}: the model has no input {nt.name!r} (inputs: {sorted(expected)})"
                    )
                try:
                    arr = numpy_helper.to_array(TensorProto.FromString(nt.tensor_proto))
                except Exception as exc:  # protobuf/onnx raise several types on bad bytes
                    raise modelcheck.ModelInvalid(
                        f"input batch {k}: tensor {nt.name!r} is not a serialized TensorProto ({exc})"
                    ) from None
                tt = expected[nt.name]
                want = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
                if arr.dtype != want:
                    raise modelcheck.ModelInvalid(
                        f"input batch {k}: {nt.name!r} is {arr.dtype}, the model wants {want}"
                    )
                dims = list(tt.shape.dim)
                bad_rank = arr.ndim != len(dims)
                bad_dim = any(
                    d.HasField("dim_value") and d.dim_value > 0 and a != 0 and arr.shape[a] != d.dim_value
                    for a, d in enumerate(dims[: arr.ndim])
                )
                if bad_rank or bad_dim:
                    want_shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
                    raise modelcheck.ModelInvalid(
                        f"input batch {k}: {nt.name!r} has shape {list(arr.shape)}, the model wants {want_shape}"
                    )
                feeds[nt.name] = arr
            missing = sorted(set(expected) - set(feeds))
            if missing:
                raise modelcheck.ModelInvalid(f"input batch {k} lacks inputs {missing}")
            batches.append(feeds)
        return batches

    def _gpu_used_bytes(self) -> int | None:
        if self.rt.nvml_handle is None:
            return None
        import pynvml

        try:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(self.rt.nvml_handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    return int(proc.usedGpuMemory)
        except pynvml.NVMLError:
            return None
        return None


class CancelFlag:
    """Set by SIGUSR1 from the daemon, or when the daemon is gone; cleared for each job."""

    def __init__(self) -> None:
        self._set = False
        self._parent = os.getppid()
        signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    def __call__(self) -> bool:
        return self._set or os.getppid() != self._parent


def worker_main(conn: Connection, cancelled: CancelFlag, ws: WorkerSettings) -> None:
    """Serve jobs from `conn` until it closes."""
    if ws.tmp_dir:  # profiles and optimized models land in the agent's scratch, removed even after a kill
        tempfile.tempdir = ws.tmp_dir
        os.environ["TMPDIR"] = ws.tmp_dir
    try:
        worker = Worker(ws, cancelled)
    except Exception as exc:  # report any set-up failure to the daemon, then exit
        conn.send(JobFailure(FAILED, f"worker set-up failed: {exc}"))
        return
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        cancelled.clear()
        try:
            reply: Any = worker.handle(job)
        except JobError as exc:
            reply = JobFailure(exc.code, str(exc))
        except Exception as exc:  # any other failure ends this job, not the worker
            reply = JobFailure(FAILED, f"{type(exc).__name__}: {short(exc)}")
        conn.send(reply)


def main() -> None:
    """`python -m device_agent.worker MODULE:FUNCTION FD`: the process the runner starts.

    Reads WorkerSettings from the connection on FD, then hands over to the named function
    (device_agent.worker:worker_main, or a stand-in in tests).
    """
    import importlib
    import logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle
    # onnxruntime's quantizer advises on the root logger at WARNING; its advice is not for users.
    logging.getLogger().setLevel(logging.ERROR)
    target, fd = sys.argv[1], int(sys.argv[2])
    module, _, function = target.partition(":")
    entry = getattr(importlib.import_module(module), function)
    conn = Connection(fd)
    ws = conn.recv()
    entry(conn, CancelFlag(), ws)


if __name__ == "__main__":
    main()
