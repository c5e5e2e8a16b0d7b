"""Checks on an uploaded ONNX model before the runtime sees it (run in the worker process)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from protos.hadmc.v1 import agent_pb2

# Domains onnxruntime implements itself; anything else would need a custom-op library.
BUILTIN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"})


class ModelInvalid(ValueError):
    """The upload is not a model the agent will run; the message says why."""


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors


def _check_external_data(model: onnx.ModelProto) -> None:
    for graph in _graphs(model.graph):
        for t in _tensors(graph):
            if t.data_location != TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in t.external_data if e.key == "location"), "")
            p = Path(location)
            if p.is_absolute() or ".." in p.parts:
                raise ModelInvalid(
                    f"tensor {t.name!r} points its external data at {location!r}, outside the model: refused"
                )
            raise ModelInvalid(
                f"tensor {t.name!r} keeps its data in an external file {location!r}; upload a "
                "single-file model (onnx.save(..., save_as_external_data=False))"
            )


def _check_domains(model: onnx.ModelProto) -> None:
    local = {f.domain for f in model.functions}
    allowed = BUILTIN_DOMAINS | local
    for opset in model.opset_import:
        if opset.domain not in allowed:
            raise ModelInvalid(
                f"the model imports custom-op domain {opset.domain!r}; the agent loads no custom-op libraries"
            )
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.domain not in allowed:
                raise ModelInvalid(
                    f"node {node.name or node.op_type!r} uses custom-op domain {node.domain!r}; "
                    "the agent loads no custom-op libraries"
                )


def load_checked(data: bytes) -> onnx.ModelProto:
    """Parse and check an uploaded model; ModelInvalid names the problem."""
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelInvalid(f"not an ONNX model: the bytes do not parse as ModelProto ({exc})") from None
    if model.ir_version <= 0 or not model.opset_import or not model.graph.node:
        raise ModelInvalid(
            "not an ONNX model: no IR version, opset import or graph nodes "
            f"({len(data):,} bytes parsed as an empty ModelProto)"
        )
    _check_external_data(model)
    _check_domains(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelInvalid(f"the ONNX checker rejects the model: {str(exc).strip().splitlines()[0]}") from None
    return model


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    init_names = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in init_names]


def resolve_batch(model: onnx.ModelProto, requested: int) -> int:
    """The batch to benchmark: the requested one (0: the model's own, else 1)."""
    fixed: set[int] = set()
    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            static = d.HasField("dim_value") and d.dim_value > 0
            if axis == 0:
                if static:
                    fixed.add(d.dim_value)
            elif not static:
                name = d.dim_param or "?"
                raise ModelInvalid(
                    f"input {vi.name!r} has a dynamic dimension {name!r} at axis {axis}; only "
                    "the batch axis (0) may be dynamic: export with fixed sizes"
                )
    if requested == 0:
        return fixed.pop() if len(fixed) == 1 else 1
    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value not in (0, requested):
            raise ModelInvalid(
                f"input {vi.name!r} has a fixed batch of {dims[0].dim_value}; export with a "
                f"dynamic batch axis to benchmark batch {requested}"
            )
    return requested


def summary(model: onnx.ModelProto, data: bytes) -> agent_pb2.ModelSummary:
    def info(vi: onnx.ValueInfoProto) -> agent_pb2.TensorInfo:
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim]
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name if tt.elem_type else ""
        return agent_pb2.TensorInfo(name=vi.name, dtype=dtype, shape=shape)

    return agent_pb2.ModelSummary(
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        opsets=[o.version for o in model.opset_import if o.domain in ("", "ai.onnx")],
        node_count=len(model.graph.node),
        inputs=[info(vi) for vi in graph_inputs(model)],
        outputs=[info(vi) for vi in model.graph.output],
    )
