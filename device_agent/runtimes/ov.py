"""OpenVINO as a backend: a device (CPU, GPU, NPU), an inference precision hint, and its per-node
performance counters.

Every model is compiled for one stream and the latency hint, with `INFERENCE_NUM_THREADS` set
to the agent's intra-op threads on a CPU. Benchmarked models have their batch axis fixed first:
OpenVINO runs static shapes faster than dynamic ones, and a deployment knows its batch.

Per-kernel profiling reads `PERF_COUNT` counters after every run (they hold the last run's node
times, whole microseconds, truncated) and the compiled model's runtime graph, whose nodes name the original
layers they fused (`originalLayersNames`): that is how each executed node finds its kernel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from device_agent.jobs import FAILED, INVALID, UNSUPPORTED, JobError, RuntimeFacts, WorkerSettings
from device_agent.runtimes import NodeTimes, unique_by_name
from lut_store.keys.graph import RuntimeNode

# What a device must list in OPTIMIZATION_CAPABILITIES to run a precision hint.
_CAPABILITY = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}
# The counters are whole microseconds, truncated: half of one, added to every executed node, is the
# unbiased estimate (bench/openvino_profile.py: it brought the node sums of 8 ResNet18/MobileNetV2
# variants from 66-94% of the run's wall time to 76-95% on our CPU; the rest is the run's own
# overhead, outside any node).
_TRUNCATION_US = 0.5
_NOT_TIMED = frozenset({"Input", "Output", "Const", "Parameter", "Result", "Constant"})
# Words in OpenVINO's messages that mean "this runtime cannot run it" rather than "bad model".
_UNSUPPORTED_WORDS = ("not supported", "unsupported", "no conversion rule", "not implemented", "cannot create")


def ov_message(exc: BaseException) -> str:
    """OpenVINO's exception text without its C++ source locations, one line."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith("Exception from ") and not ln.startswith("Check '")]
    return " ".join(kept or lines)[:500]


def _code(message: str, default: str) -> str:
    lower = message.lower()
    return UNSUPPORTED if any(w in lower for w in _UNSUPPORTED_WORDS) else default


class OpenVinoModel:
    """A compiled model as a `Loaded` one; `run` compiles the model as read (any batch) on first use."""

    def __init__(self, backend: OpenVinoBackend, source: bytes | str, compiled: Any, perf_count: bool) -> None:
        self.backend = backend
        self.source = source
        self.compiled = compiled
        self.perf_count = perf_count
        self.request: Any = None
        self._any_batch: Any = None

    def runner(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        ov = self.backend.ov
        self.request = self.compiled.create_infer_request()
        for name, arr in feeds.items():
            self.request.set_tensor(name, ov.Tensor(np.ascontiguousarray(arr)))
        return self.request.infer

    def output_names(self) -> list[str]:
        return [o.get_any_name() for o in self.compiled.outputs]

    def run(self, names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._any_batch is None:
            self._any_batch = self.backend.compile(self.backend.read(self.source), {})
        results = self._any_batch.create_infer_request().infer(dict(feeds))
        by_name = {n: results[port] for port in self._any_batch.outputs for n in port.get_names()}
        return [np.asarray(by_name[n]) for n in names]


class OpenVinoBackend:
    """OpenVINO set up for this device: its device, threads and inference precision."""

    def __init__(self, ws: WorkerSettings) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeError(
                "runtime = 'openvino' needs OpenVINO on this device: pip install 'hadmc[openvino]'"
            ) from None
        self.ov = ov
        self.core = ov.Core()
        self.nvml_handle = None
        device = ws.openvino_device
        available = list(self.core.available_devices)
        if device not in available:
            raise RuntimeError(f"OpenVINO device {device!r} is not available here (available: {', '.join(available)})")
        self.device = device
        self.label = f"OpenVINO {device}"
        self.config = self._config(ws)
        self.facts = RuntimeFacts(
            runtime="openvino",
            version=ov.get_version(),
            available=available,
            device=device,
            options={k: str(v) for k, v in self.config.items()},
            inference_precision=self._inference_precision(),
        )

    def _config(self, ws: WorkerSettings) -> dict[str, Any]:
        """The properties every model is compiled with; a hint the device cannot run is refused."""
        supported = self.core.get_property(self.device, "SUPPORTED_PROPERTIES")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if "INFERENCE_NUM_THREADS" in supported:
            config["INFERENCE_NUM_THREADS"] = ws.intra_op_threads
        if ws.inference_precision != "default":
            capabilities = list(self.core.get_property(self.device, "OPTIMIZATION_CAPABILITIES"))
            if _CAPABILITY[ws.inference_precision] not in capabilities:
                raise RuntimeError(
                    f"inference_precision = {ws.inference_precision!r}: OpenVINO's {self.device} does not run it "
                    f"(its capabilities: {', '.join(capabilities)}); use 'default' or one it lists"
                )
            config["INFERENCE_PRECISION_HINT"] = ws.inference_precision
        return config

    def _inference_precision(self) -> str:
        """What the device computes float layers in under this config, as a compiled model says."""
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        compiled = self.compile(self.read(model.SerializeToString()), {})
        try:
            return compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        except RuntimeError:  # a device without the property computes at the model's precision
            return "f32"

    def read(self, model: bytes | str) -> Any:
        try:
            return self.core.read_model(model)
        except RuntimeError as exc:
            message = ov_message(exc)
            raise JobError(_code(message, INVALID), f"OpenVINO cannot read the model: {message}") from None

    def compile(self, model: Any, extra: Mapping[str, Any]) -> Any:
        try:
            return self.core.compile_model(model, self.device, {**self.config, **extra})
        except RuntimeError as exc:
            message = ov_message(exc)
            raise JobError(_code(message, FAILED), f"OpenVINO {self.device} cannot compile it: {message}") from None

    def _fixed_batch(self, model: Any, batch: int | None) -> Any:
        """`model` with the dynamic first axis of every input set to `batch`."""
        if batch is None:
            return model
        shapes = {}
        for port in model.inputs:
            shape = port.get_partial_shape()
            if shape.rank.is_static and len(shape) > 0 and shape[0].is_dynamic:
                shape[0] = batch
                shapes[port.get_any_name()] = shape
        if shapes:
            try:
                model.reshape(shapes)
            except RuntimeError as exc:
                raise JobError(INVALID, f"OpenVINO cannot fix the batch at {batch}: {ov_message(exc)}") from None
        return model

    def load(self, model: bytes | str, batch: int | None = None, for_profile: bool = False) -> OpenVinoModel:
        """With `for_profile`, compiled with PERF_COUNT (about 0.05 us per node on our CPU): two
        compilations of one model can differ by 10-20% on a busy machine, so the profile is taken on the
        compiled model that was measured."""
        compiled = self.compile(self._fixed_batch(self.read(model), batch), {"PERF_COUNT": for_profile})
        return OpenVinoModel(self, model, compiled, for_profile)

    def executed_as(self, model: bytes, feeds: Mapping[str, np.ndarray]) -> str:
        loaded = self.load(model)
        loaded.runner(feeds)()
        layers = set()
        for op in loaded.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str)
            if kind not in _NOT_TIMED:
                layers.add(f"{kind} {info['runtimePrecision'].astype(str)}")
        return f"runs on {self.label} as: {', '.join(sorted(layers)) or 'nothing executed'}"

    def profile_nodes(
        self,
        model: bytes | str,
        loaded: OpenVinoModel | None,
        feeds: Mapping[str, np.ndarray],
        batch: int | None,
        warmup_runs: int,
        runs: int,
        cancelled: Callable[[], bool],
    ) -> NodeTimes:
        if loaded is None or not loaded.perf_count:
            loaded = self.load(model, batch, for_profile=True)
        run_once = loaded.runner(feeds)
        for _ in range(warmup_runs):
            run_once()
        nodes = unique_by_name(runtime_nodes(loaded.compiled.get_runtime_model()))
        columns = {n.name: i for i, n in enumerate(nodes)}
        rows: list[dict[int, float]] = []
        run_ms = np.zeros(runs)
        executed = self.ov.ProfilingInfo.Status.EXECUTED
        for r in range(runs):
            if cancelled():
                raise InterruptedError("cancelled")
            t0 = time.perf_counter_ns()
            run_once()
            run_ms[r] = (time.perf_counter_ns() - t0) / 1e6
            row: dict[int, float] = {}
            for info in loaded.request.get_profiling_info():
                if info.status == executed:
                    col = columns.setdefault(info.node_name, len(columns))
                    row[col] = row.get(col, 0.0) + info.real_time.total_seconds() * 1e6 + _TRUNCATION_US
            rows.append(row)
        nodes += [RuntimeNode(name, (), (), ()) for name in list(columns)[len(nodes) :]]
        table = np.zeros((len(rows), len(columns)))
        for r, row in enumerate(rows):
            for col, us in row.items():
                table[r, col] = us
        return NodeTimes(nodes, table, run_ms)


def runtime_nodes(runtime_model: Any) -> list[RuntimeNode]:
    """The executed graph's nodes: a node's origins are its own name, then the original layers it
    fused (`originalLayersNames`, its own first); edges are named producer:port."""
    nodes = []
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        name = op.get_friendly_name()
        fused = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info else []
        inputs = tuple(
            f"{i.get_source_output().get_node().get_friendly_name()}:{i.get_source_output().get_index()}"
            for i in op.inputs()
        )
        outputs = tuple(f"{name}:{k}" for k in range(op.get_output_size()))
        nodes.append(RuntimeNode(name, (name, *(n for n in fused if n and n != name)), inputs, outputs))
    return nodes
