"""Canonical op keys: one kernel as the runtime runs it, hashable, identical on host and agent.

A key is data, never code: input tensors (activations, random weights, given constants), a short
chain of ONNX operators, a precision and the opset the attributes follow. Every `OpKey` is
canonical from construction on (attributes sorted, float attributes rounded through float32,
the implicit defaults of common operators filled in), so two descriptions of the same kernel
give the same `canonical_json()` and the same `hash`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lut_store.precision import Precision
from protos.hadmc.v1 import common_pb2

DEFAULT_OPSET = 17
KEY_FORMAT_VERSION = 1
# How a key's latency is measured: alone in a graph the agent builds ("isolated"), or as the sum of
# the runtime nodes it became inside whole models, scaled to the measured model ("in-model").
CONTEXTS = ("isolated", "in-model")
DTYPES = frozenset({"float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"})
ROLES = ("activation", "weight", "constant")
DOMAINS = frozenset({"", "ai.onnx.ml", "com.microsoft"})
MAX_RANK = 8
# A structural bound only; each agent enforces its own, much smaller, element cap.
MAX_DIM = 1 << 31

AttrValue = int | float | str | tuple[int, ...] | tuple[float, ...]

_CONTEXT_TO_PROTO = {"isolated": common_pb2.KEY_CONTEXT_ISOLATED, "in-model": common_pb2.KEY_CONTEXT_IN_MODEL}
_PROTO_TO_CONTEXT = {v: k for k, v in _CONTEXT_TO_PROTO.items()}
_ROLE_TO_PROTO = {
    "activation": common_pb2.TENSOR_ROLE_ACTIVATION,
    "weight": common_pb2.TENSOR_ROLE_WEIGHT,
    "constant": common_pb2.TENSOR_ROLE_CONSTANT,
}
_PROTO_TO_ROLE = {v: k for k, v in _ROLE_TO_PROTO.items()}
_REF = re.compile(r"^(?:i(\d+)|n(\d+)(?:\.(\d+))?)$")
_OP_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_NEIGHBOR = rf"(?:{'|'.join(p.value for p in Precision)}|io)"
_NEIGHBORS = re.compile(rf"^(?:in:{_NEIGHBOR}(?:,{_NEIGHBOR})*\|out:{_NEIGHBOR}(?:,{_NEIGHBOR})*)?$")

# Attribute defaults the canonical form fills in when absent (ONNX semantics). Spatial defaults
# (strides, dilations, pads, kernel_shape) depend on rank and are filled in `_spatial_defaults`.
_ATTR_DEFAULTS: dict[str, dict[str, AttrValue]] = {
    "Conv": {"group": 1},
    "ConvTranspose": {"group": 1},
    "MaxPool": {"ceil_mode": 0, "storage_order": 0},
    "AveragePool": {"ceil_mode": 0, "count_include_pad": 0},
    "Gemm": {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
    "BatchNormalization": {"epsilon": 1e-5, "momentum": 0.9},
    "Flatten": {"axis": 1},
    "LeakyRelu": {"alpha": 0.01},
    "Concat": {},
    "Softmax": {"axis": -1},
    "LogSoftmax": {"axis": -1},
    "HardSigmoid": {"alpha": 0.2, "beta": 0.5},
}
_SPATIAL_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"})


class OpKeyError(ValueError):
    """A malformed key; the message names the offending part."""


def _precision(name: str) -> Precision:
    """A key's precision from its name (a `Precision` is one); an unknown name is an OpKeyError."""
    try:
        return Precision(name)
    except ValueError as exc:
        raise OpKeyError(str(exc)) from None


def _f32(x: float) -> float:
    """Round a float through float32, the precision of ONNX float attributes."""
    if not math.isfinite(x):
        raise OpKeyError(f"non-finite float {x!r} in key")
    try:
        return struct.unpack("<f", struct.pack("<f", float(x)))[0]
    except OverflowError:
        raise OpKeyError(f"float {x!r} in key is beyond float32's range") from None


def _canonical_attr(name: str, value: Any) -> AttrValue:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _f32(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        items = list(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            return tuple(items)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            return tuple(_f32(v) for v in items)
    raise OpKeyError(f"attribute {name!r} has unsupported value {value!r}")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor entering a kernel. `values` only for role 'constant'."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    role: str = "activation"
    values: tuple[int | float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "dtype", self.dtype or "float32")
        if self.dtype not in DTYPES:
            raise OpKeyError(f"unknown dtype {self.dtype!r}; allowed: {sorted(DTYPES)}")
        if self.role not in ROLES:
            raise OpKeyError(f"unknown tensor role {self.role!r}; allowed: {list(ROLES)}")
        if len(self.shape) > MAX_RANK:
            raise OpKeyError(f"rank {len(self.shape)} is over the maximum of {MAX_RANK}")
        for d in self.shape:
            if isinstance(d, bool) or not isinstance(d, int) or d <= 0 or d > MAX_DIM:
                raise OpKeyError(f"dimension {d!r} in shape {list(self.shape)} must be an integer in 1..{MAX_DIM}")
        if self.role == "constant":
            if len(self.values) != self.elements:
                raise OpKeyError(
                    f"constant of shape {list(self.shape)} needs {self.elements} values, got {len(self.values)}"
                )
            floating = self.dtype.startswith("float")
            vals = tuple(_f32(v) if floating else int(v) for v in self.values)
            object.__setattr__(self, "values", vals)
        elif self.values:
            raise OpKeyError(f"a {self.role} tensor carries no values; only constants do")

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype, "role": self.role}
        if self.role == "constant":
            d["values"] = list(self.values)
        return d


@dataclass(frozen=True)
class OpNode:
    """One operator; inputs are references 'i<k>', 'n<j>', 'n<j>.<m>' or '' (omitted)."""

    op_type: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)
    domain: str = ""
    num_outputs: int = 1

    def __post_init__(self) -> None:
        if not _OP_TYPE.match(self.op_type or ""):
            raise OpKeyError(f"op_type {self.op_type!r} is not an operator name")
        if self.domain not in DOMAINS:
            raise OpKeyError(f"op domain {self.domain!r} of {self.op_type} is not allowed; allowed: {sorted(DOMAINS)}")
        if not isinstance(self.num_outputs, int) or not 1 <= self.num_outputs <= 64:
            raise OpKeyError(f"{self.op_type}: num_outputs must be in 1..64")
        object.__setattr__(self, "inputs", tuple(_canonical_ref(r) for r in self.inputs))
        attrs = {str(k): _canonical_attr(str(k), v) for k, v in dict(self.attrs).items()}
        object.__setattr__(self, "attrs", dict(sorted(attrs.items())))

    def __hash__(self) -> int:
        return hash((self.op_type, self.inputs, tuple(self.attrs.items()), self.domain))

    def to_dict(self) -> dict[str, Any]:
        attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in self.attrs.items()}
        return {
            "op": self.op_type,
            "domain": self.domain,
            "inputs": list(self.inputs),
            "attrs": attrs,
            "outputs": self.num_outputs,
        }


def parse_ref(ref: str) -> tuple[str, int, int]:
    """'i3' -> ('i', 3, 0); 'n2' -> ('n', 2, 0); 'n2.1' -> ('n', 2, 1)."""
    m = _REF.match(ref)
    if not m:
        raise OpKeyError(f"input reference {ref!r} is not 'i<k>', 'n<j>' or 'n<j>.<m>'")
    if m.group(1) is not None:
        return "i", int(m.group(1)), 0
    return "n", int(m.group(2)), int(m.group(3) or 0)


def _canonical_ref(ref: str) -> str:
    """Validate a reference and write output 0 as 'n<j>' rather than 'n<j>.0'."""
    if ref == "":
        return ref
    kind, idx, out = parse_ref(ref)
    return f"{kind}{idx}" if out == 0 else f"n{idx}.{out}"


def _spatial_defaults(node: OpNode, inputs: Sequence[TensorSpec]) -> OpNode:
    """Fill strides/dilations/pads/kernel_shape that ONNX leaves implicit for spatial ops."""
    attrs = dict(node.attrs)
    kernel = attrs.get("kernel_shape")
    if kernel is None and node.op_type in ("Conv", "ConvTranspose") and len(node.inputs) > 1:
        kind, idx, _ = parse_ref(node.inputs[1])
        if kind == "i":
            kernel = inputs[idx].shape[2:]
            attrs["kernel_shape"] = tuple(kernel)
    if kernel is None:
        return node
    rank = len(kernel)
    attrs.setdefault("strides", (1,) * rank)
    if node.op_type != "AveragePool" and node.op_type != "LpPool":
        attrs.setdefault("dilations", (1,) * rank)
    if attrs.get("auto_pad", "NOTSET") == "NOTSET":
        attrs.pop("auto_pad", None)
        attrs.setdefault("pads", (0,) * (2 * rank))
    return OpNode(node.op_type, node.inputs, attrs, node.domain, node.num_outputs)


def _with_defaults(node: OpNode, inputs: Sequence[TensorSpec]) -> OpNode:
    if node.domain != "":
        return node
    defaults = _ATTR_DEFAULTS.get(node.op_type, {})
    if defaults and any(k not in node.attrs for k in defaults):
        node = OpNode(node.op_type, node.inputs, {**defaults, **node.attrs}, node.domain, node.num_outputs)
    if node.op_type in _SPATIAL_OPS:
        node = _spatial_defaults(node, inputs)
    return node


@dataclass(frozen=True)
class OpKey:
    """A kernel: input tensors, operators in topological order, precision, opset, and how its
    latency is measured (`context`, part of its identity: see CONTEXTS). In-model keys also
    name the precisions of the kernels around them (`neighbors`, e.g. "in:int8|out:fp32"): the
    layout conversions and requantizers a runtime inserts between kernels are charged to one of
    them, so the same kernel costs more between kernels of other precisions."""

    inputs: tuple[TensorSpec, ...]
    nodes: tuple[OpNode, ...]
    precision: Precision = Precision.FP32
    opset: int = DEFAULT_OPSET
    context: str = "isolated"
    neighbors: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        self._check_fields()
        if not self.nodes:
            raise OpKeyError("a key needs at least one operator")
        if not any(t.role == "activation" for t in self.inputs):
            raise OpKeyError("a key needs at least one activation input")
        unused = sorted(set(range(len(self.inputs))) - self._referenced_inputs())
        if unused:
            raise OpKeyError(f"key inputs {[f'i{i}' for i in unused]} are not used by any node")
        nodes = tuple(_with_defaults(n, self.inputs) for n in self.nodes)
        object.__setattr__(self, "nodes", nodes)

    def _check_fields(self) -> None:
        """Precision, context, neighbors and opset are ones the key format knows."""
        object.__setattr__(self, "precision", _precision(self.precision))
        if self.context not in CONTEXTS:
            raise OpKeyError(f"unknown measurement context {self.context!r}; allowed: {list(CONTEXTS)}")
        if self.neighbors and self.context != "in-model":
            raise OpKeyError("only in-model keys name their neighbors' precisions")
        if not _NEIGHBORS.match(self.neighbors):
            raise OpKeyError(f"neighbors {self.neighbors!r} is not 'in:P,P|out:P,P'")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not 7 <= self.opset <= 99:
            raise OpKeyError(f"opset {self.opset!r} must be an integer in 7..99")

    def _referenced_inputs(self) -> set[int]:
        """Indices of the key inputs the nodes read; OpKeyError for a reference to a missing
        input, to a later node or to an output a node does not have."""
        used: set[int] = set()
        for j, node in enumerate(self.nodes):
            for ref in node.inputs:
                if ref == "":
                    continue
                kind, idx, out = parse_ref(ref)
                if kind == "i":
                    if idx >= len(self.inputs):
                        raise OpKeyError(
                            f"node {j} ({node.op_type}) refers to input {ref!r}, "
                            f"but the key has {len(self.inputs)} inputs"
                        )
                    used.add(idx)
                elif idx >= j:
                    raise OpKeyError(f"node {j} ({node.op_type}) refers to {ref!r}, not an earlier node")
                elif out >= self.nodes[idx].num_outputs:
                    raise OpKeyError(
                        f"node {j} ({node.op_type}) refers to {ref!r}, but node {idx} has "
                        f"{self.nodes[idx].num_outputs} output(s)"
                    )
        return used

    @property
    def kind(self) -> str:
        """Op kind including fusion, e.g. 'conv+add+relu'."""
        return "+".join(n.op_type.lower() for n in self.nodes)

    def output_refs(self) -> list[str]:
        """References of the node outputs no later node consumes: the kernel's outputs."""
        consumed = {ref for n in self.nodes for ref in n.inputs if ref}
        outs = []
        for j, node in enumerate(self.nodes):
            for m in range(node.num_outputs):
                ref = f"n{j}" if m == 0 else f"n{j}.{m}"
                if ref not in consumed:
                    outs.append(ref)
        return outs

    def to_dict(self) -> dict[str, Any]:
        d = {
            "v": KEY_FORMAT_VERSION,
            "precision": self.precision,
            "opset": self.opset,
            "inputs": [t.to_dict() for t in self.inputs],
            "nodes": [n.to_dict() for n in self.nodes],
        }
        if self.context != "isolated":  # isolated keys hash as they did before contexts existed
            d["context"] = self.context
        if self.neighbors:
            d["neighbors"] = self.neighbors
        return d

    def with_context(self, context: str) -> OpKey:
        """The same kernel measured the other way (isolated keys have no neighbors)."""
        return OpKey(
            self.inputs,
            self.nodes,
            self.precision,
            self.opset,
            context,
            self.neighbors if context == "in-model" else "",
        )

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """Hex SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def describe(self) -> str:
        """Short human summary: kind, precision and activation shapes."""
        parts = [self.kind, self.precision] + ([self.context] if self.context != "isolated" else [])
        parts += [self.neighbors] if self.neighbors else []
        parts += ["x".join(map(str, t.shape)) for t in self.inputs if t.role == "activation"]
        weights = [t for t in self.inputs if t.role == "weight" and len(t.shape) >= 2]
        if weights:
            parts.append("w" + "x".join(map(str, weights[0].shape)))
        strides = self.nodes[0].attrs.get("strides")
        if isinstance(strides, tuple) and any(s != 1 for s in strides):
            parts.append("s" + "x".join(map(str, strides)))
        return " ".join(parts)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OpKey:
        """Inverse of `to_dict` (also accepts hand-written dicts with defaults left out)."""
        try:
            version = d.get("v", KEY_FORMAT_VERSION)
            if version != KEY_FORMAT_VERSION:
                raise OpKeyError(f"key format v{version} is not v{KEY_FORMAT_VERSION}")
            inputs = tuple(
                TensorSpec(
                    tuple(t["shape"]),
                    t.get("dtype", "float32"),
                    t.get("role", "activation"),
                    tuple(t.get("values", ())),
                )
                for t in d["inputs"]
            )
            nodes = tuple(
                OpNode(
                    n["op"],
                    tuple(n.get("inputs", ())),
                    n.get("attrs", {}),
                    n.get("domain", ""),
                    n.get("outputs", 1),
                )
                for n in d["nodes"]
            )
            return cls(
                inputs,
                nodes,
                d.get("precision", "fp32"),
                d.get("opset", DEFAULT_OPSET),
                d.get("context", "isolated"),
                d.get("neighbors", ""),
            )
        except OpKeyError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field of the wrong shape or type
            raise OpKeyError(f"malformed key dict: {exc!r}") from exc

    @classmethod
    def from_json(cls, text: str) -> OpKey:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise OpKeyError(f"a key is not valid JSON: {exc}") from None
        return cls.from_dict(doc)

    def to_proto(self) -> common_pb2.OpKey:
        msg = common_pb2.OpKey(
            precision=self.precision.proto,
            opset=self.opset,
            context=_CONTEXT_TO_PROTO[self.context],
            neighbors=self.neighbors,
        )
        for t in self.inputs:
            spec = msg.inputs.add(shape=t.shape, dtype=t.dtype, role=_ROLE_TO_PROTO[t.role])
            if t.role == "constant":
                if t.dtype.startswith("float"):
                    spec.float_values.extend(t.values)
                else:
                    spec.int_values.extend(int(v) for v in t.values)
        for n in self.nodes:
            node = msg.nodes.add(op_type=n.op_type, domain=n.domain, inputs=n.inputs, num_outputs=n.num_outputs)
            for name, value in n.attrs.items():
                attr = node.attributes.add(name=name)
                if isinstance(value, int):
                    attr.i = value
                elif isinstance(value, float):
                    attr.f = value
                elif isinstance(value, str):
                    attr.s = value
                elif all(isinstance(v, int) for v in value):
                    attr.ints.values.extend(value)
                else:
                    attr.floats.values.extend(value)
        return msg

    @classmethod
    def from_proto(cls, msg: common_pb2.OpKey) -> OpKey:
        try:
            precision = Precision.from_proto(msg.precision)
        except ValueError as exc:
            raise OpKeyError(str(exc)) from None
        inputs = []
        for t in msg.inputs:
            if t.role not in _PROTO_TO_ROLE:
                raise OpKeyError(f"tensor role {t.role} is unset or unknown")
            values: tuple[int | float, ...] = tuple(t.float_values) or tuple(t.int_values)
            inputs.append(TensorSpec(tuple(t.shape), t.dtype or "float32", _PROTO_TO_ROLE[t.role], values))
        nodes = []
        for n in msg.nodes:
            attrs: dict[str, AttrValue] = {}
            for a in n.attributes:
                which = a.WhichOneof("value")
                if which is None:
                    raise OpKeyError(f"{n.op_type}: attribute {a.name!r} has no value")
                if a.name in attrs:
                    raise OpKeyError(f"{n.op_type}: attribute {a.name!r} is given twice")
                v = getattr(a, which)
                attrs[a.name] = tuple(v.values) if which in ("ints", "floats") else v
            nodes.append(OpNode(n.op_type, tuple(n.inputs), attrs, n.domain, n.num_outputs or 1))
        if msg.context not in _PROTO_TO_CONTEXT:
            raise OpKeyError(f"key context enum value {msg.context} is unknown")
        return cls(
            tuple(inputs),
            tuple(nodes),
            precision,
            msg.opset or DEFAULT_OPSET,
            _PROTO_TO_CONTEXT[msg.context],
            msg.neighbors,
        )
