"""onnxruntime as a backend: an execution provider (CPU, CUDA, TensorRT), its thread settings, and
its per-node profiler."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from device_agent.jobs import FAILED, INVALID, UNSUPPORTED, JobError, RuntimeFacts, WorkerSettings, short
from device_agent.runtimes import NodeTimes, unique_by_name
from lut_store.keys.graph import RuntimeNode, UnsupportedModel, onnx_runtime_nodes

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def nvml_handle(index: int) -> Any | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # no NVML library, no driver, no GPU: all normal on a CPU box
        return None


class OrtSession:
    """An onnxruntime session as a `Loaded` model."""

    def __init__(self, backend: OrtBackend, sess: Any) -> None:
        self.backend = backend
        self.sess = sess

    def runner(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """Inputs bound once on the device (IOBinding); on a GPU the closure waits for the outputs."""
        ort, rt = self.backend.ort, self.backend
        io = self.sess.io_binding()
        for name, arr in feeds.items():
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, rt.device_type, rt.device_id))
        for out in self.sess.get_outputs():
            io.bind_output(out.name, rt.device_type, rt.device_id)
        sess = self.sess
        if rt.device_type == "cpu":
            return lambda: sess.run_with_iobinding(io)

        def run_and_sync() -> None:
            sess.run_with_iobinding(io)
            io.synchronize_outputs()

        return run_and_sync

    def output_names(self) -> list[str]:
        return [o.name for o in self.sess.get_outputs()]

    def run(self, names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(v) for v in self.sess.run(names, dict(feeds))]


class OrtBackend:
    """onnxruntime set up for this device: provider, threads, IOBinding device."""

    def __init__(self, ws: WorkerSettings) -> None:
        import onnxruntime as ort

        ort.set_default_logger_severity(4)
        self.ort = ort
        self.ws = ws
        available = ort.get_available_providers()
        choice = ws.execution_provider
        if choice == "auto":
            choice = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        provider = _PROVIDERS[choice]
        if provider not in available:
            raise RuntimeError(
                f"execution provider {provider} is not available in this onnxruntime "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or choose 'cpu'"
            )
        self.label = provider
        self.device_type = "cpu" if provider == "CPUExecutionProvider" else "cuda"
        self.device_id = int(ws.provider_options.get("device_id", 0))
        self.providers: list[Any] = [(provider, dict(ws.provider_options))]
        if provider != "CPUExecutionProvider":
            self.providers.append("CPUExecutionProvider")
        self.nvml_handle = nvml_handle(self.device_id)
        fp16 = str(ws.provider_options.get("trt_fp16_enable", "")).lower() in ("1", "true")
        self.facts = RuntimeFacts(
            runtime="onnxruntime",
            version=ort.__version__,
            available=list(available),
            device=provider,
            options={k: str(v) for k, v in ws.provider_options.items()},
            inference_precision="f16" if fp16 else "f32",
        )

    def session_options(self, optimized_path: Path | None = None, profile_prefix: Path | None = None) -> Any:
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.ws.intra_op_threads
        so.inter_op_num_threads = self.ws.inter_op_threads
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 4  # failures are reported in results, not on the daemon's stderr
        if optimized_path is not None:
            so.optimized_model_filepath = str(optimized_path)
        if profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = str(profile_prefix)
        return so

    def session(self, model: bytes | str, options: Any = None) -> Any:
        """Create a session (default options: `session_options()`); runtime errors become
        JobErrors with the right code."""
        from onnxruntime.capi import onnxruntime_pybind11_state as st

        try:
            return self.ort.InferenceSession(model, options or self.session_options(), providers=self.providers)
        except (st.NotImplemented, st.EPFail) as exc:
            raise JobError(UNSUPPORTED, f"{self.label} cannot run it: {short(exc)}") from None
        except (st.InvalidGraph, st.InvalidArgument, st.InvalidProtobuf, st.NoModel) as exc:
            raise JobError(INVALID, f"onnxruntime rejects the graph: {short(exc)}") from None
        except (st.Fail, st.RuntimeException) as exc:
            raise JobError(FAILED, f"onnxruntime could not load it: {short(exc)}") from None

    def load(self, model: bytes | str, batch: int | None = None, for_profile: bool = False) -> OrtSession:
        """onnxruntime runs symbolic batch axes as they are, and profiles in a second session (its
        profiler adds about 2 us to every node): `batch` and `for_profile` change nothing."""
        return OrtSession(self, self.session(model))

    def executed_as(self, model: bytes, feeds: Mapping[str, np.ndarray]) -> str:
        with tempfile.TemporaryDirectory(prefix="hadmc-probe-") as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            sess = self.session(model, self.session_options(optimized))
            sess.run(None, dict(feeds))
            ops = sorted({n.op_type for n in onnx.load(optimized).graph.node}) if optimized.exists() else []
        return f"runs on {self.label} as: {', '.join(ops) or 'unknown (no optimized graph)'}"

    def profile_nodes(
        self,
        model: bytes | str,
        loaded: OrtSession | None,
        feeds: Mapping[str, np.ndarray],
        batch: int | None,
        warmup_runs: int,
        runs: int,
        cancelled: Callable[[], bool],
    ) -> NodeTimes:
        """onnxruntime's profiler, in a session of its own: the nodes of its optimized graph, each
        run's `*_kernel_time` events by node."""
        with tempfile.TemporaryDirectory(prefix="hadmc-kprof-") as tmp_name:
            tmp = Path(tmp_name)
            sess = self.session(model, self.session_options(tmp / "optimized.onnx", tmp / "profile"))
            run_once = OrtSession(self, sess).runner(feeds)
            run_ms = np.zeros(warmup_runs + runs)
            for r in range(warmup_runs + runs):
                if cancelled():
                    sess.end_profiling()
                    raise InterruptedError("cancelled")
                t0 = time.perf_counter_ns()
                run_once()
                run_ms[r] = (time.perf_counter_ns() - t0) / 1e6
            events = json.loads(Path(sess.end_profiling()).read_text())
            nodes = unique_by_name(onnx_runtime_nodes(onnx.load(tmp / "optimized.onnx", load_external_data=False)))
        table, extra = _runs(events, {n.name: i for i, n in enumerate(nodes)}, skip=warmup_runs)
        return NodeTimes(nodes + [RuntimeNode(name, (), (), ()) for name in extra], table, run_ms[warmup_runs:])


def _runs(events: list[dict[str, Any]], node_index: dict[str, int], skip: int) -> tuple[np.ndarray, list[str]]:
    """Microseconds per (run, runtime node) from the profiler's events, warm-up runs skipped; nodes
    the optimized graph lacks get columns of their own after its nodes (their names returned), so
    no recorded time is dropped."""
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[skip:]
    if not runs:
        raise UnsupportedModel("the runtime's profiler recorded no model runs")
    starts = np.array([r[0] for r in runs])
    columns = dict(node_index)
    cells: list[tuple[int, int, float]] = []
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        run = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if run >= 0 and e["ts"] <= runs[run][1]:
            node = columns.setdefault(name[: -len("_kernel_time")], len(columns))
            cells.append((run, node, e["dur"]))
    table = np.zeros((len(runs), len(columns)))
    for run, node, dur in cells:
        table[run, node] += dur
    return table, list(columns)[len(node_index) :]
