"""Any ONNX model -> the kernels the runtime executes, each with its canonical op key.

One function for host and agent, so their keys cannot drift apart. A kernel is a compute
operator (the anchor: Conv, Gemm, MatMul, a pool, ...) with what the runtime fuses into it: the
QuantizeLinear/DequantizeLinear/Cast that set its precision, the weight's constant subgraph, and
an epilogue of element-wise ops (batch-norm, add, relu, clip, ...). Its key is the float chain of
operators plus the precision it runs at (int4 or fp8 when its weight is an int4 or float8 E4M3
tensor behind a DequantizeLinear, whatever it reads; else int8 when it reads a DequantizeLinear's
output, fp16 when its input is float16, also when a Cast turns a quantized neighbour's output into
float16), so the agent can also build it on its own.

`attribute_nodes` maps the nodes a runtime executes (onnxruntime's optimized graph, fused and
re-laid-out: FusedConv, QLinearConv, NCHWc Conv, inserted reorders and transposes; or OpenVINO's
runtime model, whose nodes list the original layers they fused) back to those kernels, by the
tensor and node names the optimizer keeps; inserted nodes go to the kernel they feed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from lut_store.opkey import DOMAINS, OpKey, OpKeyError, OpNode, TensorSpec

# Operators that ride along with a compute operator: its precision (Q/DQ/Cast), no-ops, and the
# element-wise epilogues runtimes fuse (conv+bn+add+relu, gemm+relu, ...).
_PRECISION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast"})
_NO_OPS = frozenset({"Identity", "Dropout"})
_EPILOGUE_OPS = (
    frozenset({"BatchNormalization", "Add", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh"})
    | _PRECISION_OPS
    | _NO_OPS
)
# Which inputs of an operator are weights (random data of that shape builds an equivalent kernel).
_WEIGHT_INPUTS = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1,),
    "BatchNormalization": (1, 2, 3, 4),
    "Add": (0, 1),
    "Mul": (0, 1),
    "Sub": (0, 1),
    "Div": (0, 1),
    "PRelu": (1,),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
}
_UNSUPPORTED_OPS = frozenset(
    {
        "If",
        "Loop",
        "Scan",
        "SequenceConstruct",
        "SequenceAt",
        "SplitToSequence",
        "ConcatFromSequence",
        "NonZero",
        "Unique",
        "NonMaxSuppression",
    }
)
_NP_TO_DTYPE = {
    np.dtype(np.float32): "float32",
    np.dtype(np.float16): "float16",
    np.dtype(np.float64): "float64",
    np.dtype(np.int64): "int64",
    np.dtype(np.int32): "int32",
    np.dtype(np.int16): "int16",
    np.dtype(np.int8): "int8",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.bool_): "bool",
}
_MAX_CONSTANT_VALUES = 64
# A kernel reading a 16-bit float computes at that precision.
_HALF_PRECISIONS = {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}
_OTHER_FLOAT8 = {
    onnx.TensorProto.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ,
    onnx.TensorProto.FLOAT8E8M0,
}
_TOKEN_SUFFIX = re.compile(r"(_token_\d+)+$")


class UnsupportedModel(ValueError):
    """A model hadmc cannot split into kernels; the message names the operator and its node."""


@dataclass(frozen=True)
class Kernel:
    """One kernel of a model: its op key and the model's nodes it covers (anchor first)."""

    name: str
    key: OpKey
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class ModelKernels:
    """A model's kernels and where each original tensor and node belongs."""

    kernels: tuple[Kernel, ...]
    tensor_kernel: Mapping[str, int]
    node_kernel: Mapping[str, int]
    batch_size: int


def _onnx_dtype(elem_type: int) -> str:
    if elem_type == onnx.TensorProto.BFLOAT16:  # numpy has no bfloat16 of its own
        return "bfloat16"
    try:
        return _NP_TO_DTYPE[np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))]
    except (KeyError, TypeError, ValueError):
        return helper.tensor_dtype_to_string(elem_type)


def _skeleton(model: onnx.ModelProto, batch_size: int) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A light copy for shape inference: large initializers become typed graph inputs (their
    values never matter to a kernel's key), and the inputs' batch axis is set. Returns it with
    the large initializers' metadata (dims and type, no data)."""
    graph = model.graph
    small, large = [], {}
    for t in graph.initializer:
        if np.prod(t.dims, dtype=np.int64) <= _MAX_CONSTANT_VALUES:
            small.append(t)
        else:
            meta = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
            large[t.name] = meta
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    new_graph = skeleton.graph
    new_graph.name = graph.name
    new_graph.node.extend(graph.node)
    new_graph.initializer.extend(small)
    new_graph.output.extend(graph.output)
    inits = {t.name for t in graph.initializer}
    for vi in graph.input:
        if vi.name in inits:
            continue
        vi = copy.deepcopy(vi)
        dims = vi.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].Clear()
            dims[0].dim_value = batch_size
        new_graph.input.append(vi)
    for meta in large.values():
        new_graph.input.append(helper.make_tensor_value_info(meta.name, meta.data_type, list(meta.dims)))
    return skeleton, large


class _Graph:
    """Index of one model: producers, consumers, constants, inferred shapes."""

    def __init__(self, model: onnx.ModelProto, large: Mapping[str, onnx.TensorProto]) -> None:
        try:
            inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
            raise UnsupportedModel(f"shape inference fails on this model: {str(exc).splitlines()[0]}") from None
        self.model = inferred
        self.nodes = list(inferred.graph.node)
        self.opset = next((o.version for o in inferred.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.init = {t.name: t for t in inferred.graph.initializer}
        self.large = dict(large)
        self.init.update(self.large)
        self.types = {
            vi.name: vi.type.tensor_type
            for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
        }
        self.outputs = {o.name for o in inferred.graph.output}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            if not n.name:
                n.name = f"{n.op_type}_{i}"
            for o in n.output:
                if o:
                    self.producer[o] = i
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(i)
        self.constant = [False] * len(self.nodes)
        const_tensors = set(self.init)
        for i, n in enumerate(self.nodes):
            if all(t in const_tensors for t in n.input if t) and n.op_type not in _UNSUPPORTED_OPS:
                self.constant[i] = True
                const_tensors.update(o for o in n.output if o)
        self.const_tensors = const_tensors

    def shape(self, tensor: str, at: onnx.NodeProto) -> tuple[tuple[int, ...], str]:
        if tensor in self.init:
            t = self.init[tensor]
            return tuple(int(d) for d in t.dims), _onnx_dtype(t.data_type)
        tt = self.types.get(tensor)
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim] if tt is not None else None
        if tt is None or not tt.HasField("shape") or any(d <= 0 for d in dims or []):
            raise UnsupportedModel(
                f"the shape of tensor {tensor!r} entering {at.op_type} node {at.name!r} is unknown "
                "after shape inference; export the model with static shapes"
            )
        return tuple(dims), _onnx_dtype(tt.elem_type)

    def constant_value(self, tensor: str) -> np.ndarray | None:
        if tensor in self.large:
            return None
        if tensor in self.init:
            return numpy_helper.to_array(self.init[tensor])
        node = self.nodes[self.producer[tensor]] if tensor in self.producer else None
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.asarray(helper.get_attribute_value(a))
                if a.name in ("value_floats", "value_ints"):
                    return np.asarray(list(helper.get_attribute_value(a)))
        if node is not None and node.op_type in _NO_OPS:
            return self.constant_value(node.input[0])
        return None

    def single_consumer(self, i: int) -> int | None:
        """The one node reading node i's only used output, if exactly one does and it is not a
        graph output."""
        outs = [o for o in self.nodes[i].output if o]
        if len(outs) != 1 or outs[0] in self.outputs:
            return None
        readers = self.consumers.get(outs[0], [])
        return readers[0] if len(readers) == 1 else None


class _Units:
    """Node indices grouped into kernels as they are claimed."""

    def __init__(self) -> None:
        self.of: dict[int, int] = {}
        self.members: list[list[int]] = []

    def start(self, i: int) -> None:
        """Node i opens a unit of its own."""
        self.of[i] = len(self.members)
        self.members.append([i])

    def join(self, i: int, owner: int) -> None:
        """Node i joins the unit of node `owner`."""
        self.of[i] = self.of[owner]
        self.members[self.of[i]].append(i)


def _claim_prologue(g: _Graph, units: _Units, anchor: int) -> None:
    """The precision and no-op nodes that feed only the anchor's data input join its unit."""
    data = g.nodes[anchor].input[0] if g.nodes[anchor].input else ""
    while data in g.producer:
        p = g.producer[data]
        if (
            g.constant[p]
            or p in units.of
            or g.nodes[p].op_type not in _PRECISION_OPS | _NO_OPS
            or g.single_consumer(p) is None
        ):
            return
        units.join(p, anchor)
        data = g.nodes[p].input[0]


def _claim_epilogue(g: _Graph, units: _Units, start: int) -> None:
    """The chain of epilogue ops after node `start` joins its unit: element-wise ops, and
    precision ops only before the first of those (later ones belong to the next kernel)."""
    cur, precision_only = start, True
    while (c := g.single_consumer(cur)) is not None:
        node = g.nodes[c]
        if c in units.of or g.constant[c] or node.op_type not in _EPILOGUE_OPS:
            return
        if node.op_type in _PRECISION_OPS and not precision_only:
            return
        if node.op_type not in _PRECISION_OPS | _NO_OPS:
            precision_only = False
        units.join(c, start)
        cur = c


def _assign_units(g: _Graph) -> list[list[int]]:
    """Group node indices into kernels: anchors claim their precision prologue first (so one
    layer's input quantizer is never another's epilogue), then epilogues from the last anchor
    back (the later branch takes a residual Add), then the rest stand alone."""
    units = _Units()
    anchors = [i for i, n in enumerate(g.nodes) if not g.constant[i] and n.op_type not in _EPILOGUE_OPS]
    for i in anchors:
        units.start(i)
    for i in anchors:
        _claim_prologue(g, units, i)
    for i in reversed(anchors):
        _claim_epilogue(g, units, i)
    for i in range(len(g.nodes)):
        if i not in units.of and not g.constant[i]:
            units.start(i)
            _claim_epilogue(g, units, i)
    # Constant subgraphs (weights, their quantizers, shapes) go with the kernel that reads them.
    for i in reversed(range(len(g.nodes))):
        if g.constant[i]:
            readers = [c for o in g.nodes[i].output if o for c in g.consumers.get(o, []) if c in units.of]
            if readers:
                units.join(i, min(readers))
    return [sorted(u) for u in units.members]


def _source(g: _Graph, tensor: str, members: set[int]) -> str:
    """The tensor behind in-kernel precision and no-op nodes (x behind DequantizeLinear(Quantize(x)))."""
    while tensor in g.producer:
        p = g.producer[tensor]
        node = g.nodes[p]
        if p not in members or node.op_type not in _PRECISION_OPS | _NO_OPS:
            break
        tensor = node.input[0]
    return tensor


def _precision(g: _Graph, unit: list[int], anchor: onnx.NodeProto) -> str:
    """The weight's stored type first (an int4 or float8 weight is a float kernel reading a
    dequantized weight, even behind an int8 neighbour's output DequantizeLinear), then the input's."""
    members = set(unit)
    if len(anchor.input) > 1 and anchor.input[1] in g.producer:
        w = g.nodes[g.producer[anchor.input[1]]]
        if w.op_type == "DequantizeLinear" and w.input[0] in g.init:
            stored = g.init[w.input[0]].data_type
            if stored in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
                return "int4"
            if stored == onnx.TensorProto.FLOAT8E4M3FN:
                return "fp8"
            if stored in _OTHER_FLOAT8:
                raise UnsupportedModel(
                    f"{anchor.op_type} node {anchor.name!r}: its weight is {onnx.TensorProto.DataType.Name(stored)}; "
                    "the only float8 weights a key describes are FLOAT8E4M3FN (fp8)"
                )
    data = anchor.input[0] if anchor.input else ""
    t = data
    while t in g.producer and g.producer[t] in members:
        node = g.nodes[g.producer[t]]
        if node.op_type == "DequantizeLinear":
            return "int8"
        if node.op_type == "Cast" or node.op_type not in _PRECISION_OPS | _NO_OPS:
            break  # a Cast sets the type the kernel reads (fp16 behind an int8 neighbour's output quantizer)
        t = node.input[0]
    elem = g.types[data].elem_type if data and g.types.get(data) is not None else None
    return _HALF_PRECISIONS.get(elem, "fp32")


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    attrs: dict[str, object] = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            raise UnsupportedModel(f"{node.op_type} node {node.name!r}: string-list attribute {a.name!r}")
        elif not isinstance(value, (int, float, str, list)):
            raise UnsupportedModel(
                f"{node.op_type} node {node.name!r}: attribute {a.name!r} holds a graph or tensor, "
                "which a kernel key cannot describe"
            )
        attrs[a.name] = value
    return attrs


def _float32(dtype: str, precision: str) -> str:
    """Keys describe the float chain; fp16 and bf16 are the key's precision, not its tensor type."""
    return "float32" if (precision, dtype) in (("fp16", "float16"), ("bf16", "bfloat16")) else dtype


def _keyable_domain(node: onnx.NodeProto) -> str:
    """The node's operator domain as keys write it; UnsupportedModel when no kernel has its type."""
    if node.op_type in _UNSUPPORTED_OPS:
        raise UnsupportedModel(
            f"operator {node.op_type} (node {node.name!r}) has no kernel type: "
            "control flow and data-dependent shapes cannot be keyed"
        )
    domain = "" if node.domain == "ai.onnx" else node.domain
    if domain not in DOMAINS:
        raise UnsupportedModel(
            f"operator {node.op_type} of domain {domain!r} (node {node.name!r}) has no "
            f"kernel type; domains with kernels: {sorted(DOMAINS)}"
        )
    return domain


def _input_spec(g: _Graph, node: onnx.NodeProto, index: int, source: str, precision: str) -> TensorSpec:
    """The key input for `node`'s input `index`, whose data is tensor `source` from outside the
    kernel: an activation, a weight (random data of its shape is equivalent) or a small constant."""
    raw = node.input[index]
    shape, _ = g.shape(source, node)
    dtype = _float32(g.shape(raw, node)[1], precision)  # as the float chain reads it
    if source not in g.const_tensors:
        return TensorSpec(shape, dtype, "activation")
    value = g.constant_value(source)
    weight_like = index in _WEIGHT_INPUTS.get(node.op_type, ()) and dtype.startswith("float")
    if not weight_like and value is not None and value.size <= _MAX_CONSTANT_VALUES:
        return TensorSpec(
            tuple(value.shape), _NP_TO_DTYPE.get(value.dtype, dtype), "constant", tuple(value.reshape(-1).tolist())
        )
    if weight_like or value is None:
        return TensorSpec(shape, dtype, "weight")
    raise UnsupportedModel(
        f"{node.op_type} node {node.name!r}: constant input {source!r} has {value.size} values; "
        f"a key carries at most {_MAX_CONSTANT_VALUES}"
    )


def _key(g: _Graph, unit: list[int], precision: str, neighbors: str) -> OpKey:
    members = set(unit)
    anchor = g.nodes[unit_anchor(g, unit)]
    chain = [i for i in unit if not g.constant[i] and g.nodes[i].op_type not in _PRECISION_OPS | _NO_OPS]
    if not chain:  # a lone quantizer, cast or no-op: the key is that node itself
        chain = [i for i in unit if not g.constant[i]]
        members = set()
    produced = {o: (j, m) for j, i in enumerate(chain) for m, o in enumerate(g.nodes[i].output) if o}
    inputs: list[TensorSpec] = []
    input_refs: dict[str, str] = {}
    nodes: list[OpNode] = []
    for i in chain:
        node = g.nodes[i]
        domain = _keyable_domain(node)
        refs = []
        for idx, raw in enumerate(node.input):
            t = _source(g, raw, members) if raw else ""
            if not raw:
                refs.append("")
            elif t in produced:
                j, m = produced[t]
                refs.append(f"n{j}" if m == 0 else f"n{j}.{m}")
            else:
                if t not in input_refs:
                    input_refs[t] = f"i{len(inputs)}"
                    inputs.append(_input_spec(g, node, idx, t, precision))
                refs.append(input_refs[t])
        outputs = len([o for o in node.output if o]) or 1
        nodes.append(OpNode(node.op_type, tuple(refs), _attrs(node), domain, outputs))
    try:
        return OpKey(tuple(inputs), tuple(nodes), precision, g.opset, context="in-model", neighbors=neighbors)
    except OpKeyError as exc:
        raise UnsupportedModel(f"kernel of {anchor.op_type} node {anchor.name!r}: {exc}") from None


def unit_anchor(g: _Graph, unit: list[int]) -> int:
    """The unit's compute node: its first node that is neither constant nor precision/no-op."""
    for i in unit:
        if not g.constant[i] and g.nodes[i].op_type not in _PRECISION_OPS | _NO_OPS:
            return i
    return next(i for i in unit if not g.constant[i])


def model_kernels(model: onnx.ModelProto, batch_size: int = 1) -> ModelKernels:
    """The kernels of `model` at `batch_size` (its symbolic batch axis fixed), in graph order."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UnsupportedModel(f"batch_size must be a positive integer, got {batch_size!r}")
    g = _Graph(*_skeleton(model, batch_size))
    for n in g.nodes:
        if n.op_type in _UNSUPPORTED_OPS:
            raise UnsupportedModel(
                f"operator {n.op_type} (node {n.name!r}) has no kernel type: "
                "control flow and data-dependent shapes cannot be keyed"
            )
    units = [u for u in _assign_units(g) if any(not g.constant[i] for i in u)]
    units.sort(key=lambda u: unit_anchor(g, u))
    unit_of = {i: k for k, u in enumerate(units) for i in u}
    precisions = [_precision(g, u, g.nodes[unit_anchor(g, u)]) for u in units]
    kernels, tensor_kernel, node_kernel = [], {}, {}
    for k, unit in enumerate(units):
        anchor = g.nodes[unit_anchor(g, unit)]
        names = [anchor.name] + [g.nodes[i].name for i in unit if g.nodes[i] is not anchor]
        key = _key(g, unit, precisions[k], _neighbors(g, unit, unit_of, precisions))
        kernels.append(Kernel(anchor.name, key, tuple(names)))
        for i in unit:
            node_kernel[g.nodes[i].name] = k
            for o in g.nodes[i].output:
                if o:
                    tensor_kernel[o] = k
    return ModelKernels(tuple(kernels), tensor_kernel, node_kernel, batch_size)


def _neighbors(g: _Graph, unit: list[int], unit_of: Mapping[int, int], precisions: Sequence[str]) -> str:
    """'in:P,..|out:P,..': precisions of the kernels feeding and fed by this one ('io': the
    model's own inputs and outputs)."""
    members = set(unit)
    feeding, fed = set(), set()
    for i in unit:
        node = g.nodes[i]
        for t in node.input:
            if not t or t in g.const_tensors:
                continue
            p = g.producer.get(t)
            if p is None:
                feeding.add("io")
            elif p not in members and p in unit_of:
                feeding.add(precisions[unit_of[p]])
        for t in node.output:
            if t in g.outputs:
                fed.add("io")
            for c in g.consumers.get(t, []):
                if c not in members and c in unit_of:
                    fed.add(precisions[unit_of[c]])
    if not feeding and not fed:
        return ""
    return f"in:{','.join(sorted(feeding)) or 'io'}|out:{','.join(sorted(fed)) or 'io'}"


@dataclass(frozen=True)
class RuntimeNode:
    """A node of the graph a runtime executes, as attribution needs it: its name, the original
    node or tensor names it may derive from (most specific first), and the tensors it reads and
    writes (in the runtime's own naming; those that keep an original name tie it to a kernel)."""

    name: str
    origins: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _name_candidates(name: str) -> list[str]:
    """Original tensor or node names an optimizer-made node name may carry."""
    base = name.removeprefix("InsertedPrecisionFreeCast_")
    out = [base]
    for suffix in ("_nchwc", "/WithoutBiases"):
        if base.endswith(suffix):
            out.append(base[: -len(suffix)])
    out += [_TOKEN_SUFFIX.sub("", c) for c in list(out)]
    return out


def onnx_runtime_nodes(optimized: onnx.ModelProto) -> list[RuntimeNode]:
    """The nodes of onnxruntime's optimized graph: a fused node keeps its compute node's name (or
    its output's, for NCHWc), even when it also absorbed a neighbour's add and activation and
    writes their output, so the name comes before the outputs."""
    nodes = []
    for n in optimized.graph.node:
        outputs = tuple(t.removeprefix("InsertedPrecisionFreeCast_") for t in n.output if t)
        nodes.append(RuntimeNode(n.name, (n.name, *outputs), tuple(n.input), outputs))
    return nodes


def _owner_by_name(mk: ModelKernels, node: RuntimeNode) -> int | None:
    """The kernel the first of a runtime node's origins that names an original node or tensor
    belongs to."""
    for c in node.origins:
        for candidate in _name_candidates(c):
            if candidate in mk.node_kernel:
                return mk.node_kernel[candidate]
            if candidate in mk.tensor_kernel:
                return mk.tensor_kernel[candidate]
    return None


def _owner_by_neighbours(mk: ModelKernels, nodes: Sequence[RuntimeNode], owner: dict[int, int]) -> None:
    """Give unowned nodes (inserted by the optimizer) the kernel they feed, or failing that the
    one feeding them, until no more can be placed."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.outputs if o}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.inputs:
            consumers.setdefault(t, []).append(i)
    changed = True
    while changed and len(owner) < len(nodes):
        changed = False
        for i, n in enumerate(nodes):
            if i in owner:
                continue
            downstream = [owner[c] for o in n.outputs for c in consumers.get(o, []) if c in owner]
            upstream = [owner[producer[t]] for t in n.inputs if t in producer and producer[t] in owner]
            for t in n.inputs:  # a node reading only original tensors of one kernel
                if t in mk.tensor_kernel and not upstream:
                    upstream.append(mk.tensor_kernel[t])
            choice = downstream or upstream
            if choice:
                owner[i] = choice[0]
                changed = True


def attribute_nodes(mk: ModelKernels, nodes: Sequence[RuntimeNode]) -> tuple[dict[str, int], list[str]]:
    """Kernel index of every runtime node that fits one (by name), and the names of those that
    fit none.

    A node belongs to the kernel its origins name, else to the kernel that produced one of
    its outputs in the original graph; inserted nodes (layout reorders, transposes, requantizers)
    go to the kernel they feed, or failing that the one feeding them.
    """
    owner = {i: k for i, n in enumerate(nodes) if (k := _owner_by_name(mk, n)) is not None}
    _owner_by_neighbours(mk, nodes, owner)
    lost = [nodes[i].name for i in range(len(nodes)) if i not in owner]
    return {nodes[i].name: k for i, k in owner.items()}, lost
