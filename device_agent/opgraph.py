"""Build the ONNX graph for an op key, at the key's precision.

fp32 builds the operators as given. fp16 turns float activations and weights into float16 (the
provider may insert casts around fp32 kernels: that is measured, not hidden). bf16 does the same
with bfloat16 behind a Cast from the float32 inputs and before one back to float32 (numpy has no
bfloat16 to feed), at opset 22 at least, where Conv takes bfloat16: an exported bf16 layer is
built the same way. int8 runs
onnxruntime's own static quantizer (QDQ, uint8 activations x per-channel int8 weights). int4 and
fp8 are weight-only: int4 or float8 E4M3 initializers (a max-abs scale per output channel) through
a DequantizeLinear (opset 21) in front of the operator.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from lut_store.opkey import OpKey, TensorSpec, parse_ref

WEIGHT_ONLY_OPSET = 21  # int4 and float8 DequantizeLinear
BF16_OPSET = 22
_NP_TYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


class KeyInvalid(ValueError):
    """The key cannot describe a valid ONNX graph."""


class KeyUnsupported(ValueError):
    """The key is valid but cannot be built or run at its precision here."""


def _ref_name(ref: str) -> str:
    kind, idx, out = parse_ref(ref)
    if kind == "i":
        return f"i{idx}"
    return f"n{idx}" if out == 0 else f"n{idx}.{out}"


# Float inputs that stay float32 in a float16 graph (ONNX types them apart from the data).
_FLOAT32_ONLY_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}


def _float32_only(key: OpKey) -> set[int]:
    """Key inputs (by index) that an operator requires as float32 whatever the data type."""
    keep = set()
    for node in key.nodes:
        for pos in _FLOAT32_ONLY_INPUTS.get(node.op_type, ()):
            if pos < len(node.inputs) and node.inputs[pos]:
                kind, idx, _ = parse_ref(node.inputs[pos])
                if kind == "i":
                    keep.add(idx)
    return keep


def _effective_dtype(spec: TensorSpec, precision: str, float32_only: bool = False) -> str:
    """fp16 graphs hold float16 activations, weights and float constants (Clip bounds, ...)."""
    if precision == "fp16" and spec.dtype == "float32" and not float32_only:
        return "float16"
    return spec.dtype


def random_array(shape: tuple[int, ...], dtype: str, rng: np.random.Generator, role: str = "activation") -> np.ndarray:
    """Random data that keeps kernels on their normal path (no NaN, no denormals).

    Float weights are positive (a batch-norm variance stays valid); integer tensors are zero,
    a safe index for Gather-like operators.
    """
    np_type = _NP_TYPES[dtype]
    if dtype.startswith("float"):
        if role == "weight":
            return rng.uniform(0.05, 0.5, size=shape).astype(np_type)
        return rng.standard_normal(size=shape).astype(np_type)
    return np.zeros(shape, dtype=np_type)


def check_limits(key: OpKey, max_tensor_elements: int) -> None:
    """Refuse tensors beyond the agent's element cap before anything is allocated."""
    for k, spec in enumerate(key.inputs):
        if spec.elements > max_tensor_elements:
            raise KeyInvalid(
                f"input i{k} of shape {list(spec.shape)} has {spec.elements:,} elements, over the "
                f"agent's max_tensor_elements of {max_tensor_elements:,}"
            )
    for node in key.nodes:
        if node.domain != "com.microsoft" and not onnx.defs.has(node.op_type, node.domain):
            raise KeyInvalid(
                f"unknown op kind {node.op_type!r}: not an ONNX operator in domain {node.domain or 'ai.onnx'!r}"
            )


def build_float_model(key: OpKey, rng: np.random.Generator) -> onnx.ModelProto:
    """The key's operators at fp32 (or fp16 for precision 'fp16' and 'bf16'), outputs typed by
    inference."""
    precision = "fp16" if key.precision in ("fp16", "bf16") else "fp32"
    graph_inputs, initializers = [], []
    float32_only = _float32_only(key)
    for k, spec in enumerate(key.inputs):
        dtype = _effective_dtype(spec, precision, k in float32_only)
        name = f"i{k}"
        if spec.role == "activation":
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(_NP_TYPES[dtype]))
            graph_inputs.append(helper.make_tensor_value_info(name, elem, list(spec.shape)))
        elif spec.role == "weight":
            initializers.append(numpy_helper.from_array(random_array(spec.shape, dtype, rng, "weight"), name))
        else:
            values = np.asarray(spec.values, dtype=_NP_TYPES[dtype]).reshape(spec.shape)
            initializers.append(numpy_helper.from_array(values, name))
    nodes = []
    for j, n in enumerate(key.nodes):
        outputs = [f"n{j}" if m == 0 else f"n{j}.{m}" for m in range(n.num_outputs)]
        inputs = [_ref_name(r) if r else "" for r in n.inputs]
        attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in n.attrs.items()}
        nodes.append(helper.make_node(n.op_type, inputs, outputs, name=f"node{j}", domain=n.domain, **attrs))
    placeholder = [helper.make_tensor_value_info(_ref_name(r), TensorProto.UNDEFINED, None) for r in key.output_refs()]
    graph = helper.make_graph(nodes, "kernel", graph_inputs, placeholder, initializers)
    opsets = [helper.make_opsetid("", key.opset)]
    for domain in sorted({n.domain for n in key.nodes} - {""}):
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="hadmc-agent")
    model.ir_version = min(model.ir_version, 10)
    return _typed_outputs(model)


def _typed_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give the graph outputs the types shape inference finds; an error names the node."""
    try:
        inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise KeyInvalid(f"the operators reject these inputs or attributes: {_first_line(exc)}") from None
    known = {vi.name: vi for vi in inferred.graph.value_info}
    known.update({vi.name: vi for vi in inferred.graph.output if vi.type.tensor_type.elem_type})
    outputs = []
    for out in model.graph.output:
        vi = known.get(out.name)
        if vi is None or not vi.type.tensor_type.elem_type:
            if any(n.domain == "com.microsoft" for n in model.graph.node):
                outputs.append(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, None))
                continue
            raise KeyInvalid(f"cannot infer the type of kernel output {out.name}")
        outputs.append(vi)
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _calibration(model: onnx.ModelProto, rng: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
    for _ in range(2):
        feeds = {}
        for vi in model.graph.input:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).name
            feeds[vi.name] = random_array(tuple(shape), dtype, rng)
        yield feeds


def int8_saturation_check(channels: int = 64) -> tuple[onnx.ModelProto, dict[str, np.ndarray], float]:
    """A QDQ 1x1 convolution the runtime fuses into an int8 kernel (QLinearConv, OpenVINO's
    `Convolution u8`), its input and its exact output: `channels` products of uint8 255 x int8 127
    sum to 2,072,640, which requantizes (scale 10,000) to 207 -> 2,070,000. Kernels that add pairs
    of uint8 x int8 products in int16 with saturation (x86 without VNNI: vpmaddubsw) clip each pair
    to 32,767 and give 105 -> 1,050,000; with 7-bit weights (|w| <= 64) no pair can saturate."""
    consts = {
        "one": np.array(1.0, np.float32),
        "zero": np.array(0, np.uint8),
        "w": np.full((8, channels, 1, 1), 127, np.int8),
        "w_scale": np.ones(8, np.float32),
        "w_zero": np.zeros(8, np.int8),
        "y_scale": np.array(10_000.0, np.float32),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "one", "zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "one", "zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["conv"]),
        helper.make_node("QuantizeLinear", ["conv", "y_scale", "zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "int8_saturation",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])],
        [numpy_helper.from_array(v, n) for n, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    exact = round(channels * 255 * 127 / 10_000) * 10_000.0
    return model, {"x": np.full((1, channels, 1, 1), 255.0, np.float32)}, exact


def quantize_int8(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    """QDQ int8 with onnxruntime's static quantizer (uint8 activations, per-channel int8 weights)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(_calibration(model, rng))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="hadmc-q-") as tmp:
        src, dst = Path(tmp) / "f32.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, src)
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        quantized = onnx.load(dst)
    originals = {n.name for n in model.graph.node}
    dq_outputs = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    covered = [n for n in quantized.graph.node if n.name in originals and any(i in dq_outputs for i in n.input)]
    if not covered:
        ops = sorted({n.op_type for n in model.graph.node})
        raise KeyUnsupported(f"int8: onnxruntime's quantizer has no QDQ form for {', '.join(ops)}")
    return quantized


def _weight_axis(node: onnx.NodeProto, input_index: int, rank: int) -> int:
    """The output-channel axis of a weight, for per-channel scales."""
    if node.op_type == "MatMul":
        return rank - 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "ConvTranspose":
        return 1
    return 0


def _int4_levels(w: np.ndarray, reduce_axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    scale = np.maximum(np.abs(w).max(axis=reduce_axes), 1e-8) / 7.0
    return scale, np.clip(np.round(w / np.expand_dims(scale, reduce_axes)), -8, 7).astype(ml_dtypes.int4)


def _fp8_values(w: np.ndarray, reduce_axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    scale = np.maximum(np.abs(w).max(axis=reduce_axes), 1e-12) / 448.0
    return scale, np.clip(w / np.expand_dims(scale, reduce_axes), -448, 448).astype(ml_dtypes.float8_e4m3fn)


_WEIGHT_ONLY = {"int4": _int4_levels, "fp8": _fp8_values}


def quantize_weights(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """Replace every float weight of rank >= 2 by int4 levels or float8 E4M3 values, a per-channel
    scale and a DequantizeLinear (`precision`: "int4" or "fp8")."""
    from onnx import version_converter

    if model.opset_import[0].version < WEIGHT_ONLY_OPSET:
        try:
            model = version_converter.convert_version(model, WEIGHT_ONLY_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors of several kinds
            raise KeyUnsupported(
                f"{precision}: cannot move the graph to opset {WEIGHT_ONLY_OPSET}: {_first_line(exc)}"
            ) from None
    inits = {t.name: t for t in model.graph.initializer}
    new_nodes, replaced = [], {}
    for node in model.graph.node:
        for idx, name in enumerate(node.input):
            t = inits.get(name)
            if t is None or name in replaced or t.data_type != TensorProto.FLOAT or len(t.dims) < 2:
                continue
            w = numpy_helper.to_array(t)
            axis = _weight_axis(node, idx, w.ndim)
            scale, q = _WEIGHT_ONLY[precision](w, tuple(a for a in range(w.ndim) if a != axis))
            model.graph.initializer.remove(t)
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(q, f"{name}_{precision}"),
                    numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                ]
            )
            new_nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [f"{name}_{precision}", f"{name}_scale"],
                    [f"{name}_dq"],
                    name=f"{name}_dequant",
                    axis=axis,
                )
            )
            replaced[name] = f"{name}_dq"
    if not replaced:
        raise KeyUnsupported(f"{precision} is weight-only, and this kernel has no float weight of rank >= 2")
    for node in model.graph.node:
        for idx, name in enumerate(node.input):
            if name in replaced:
                node.input[idx] = replaced[name]
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes + nodes)
    return model


def build_model(key: OpKey, max_tensor_elements: int, seed: int = 0) -> onnx.ModelProto:
    """The runnable ONNX model of a key at its precision."""
    check_limits(key, max_tensor_elements)
    rng = np.random.default_rng(seed)
    model = build_float_model(key, rng)
    if key.precision == "int8":
        return quantize_int8(model, rng)
    if key.precision in _WEIGHT_ONLY:
        return quantize_weights(model, key.precision)
    if key.precision == "bf16":
        return to_bfloat16(model)
    return model


def to_bfloat16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An fp16 graph computing in bfloat16 instead: float16 initializers become bfloat16, each
    float16 input is fed float32 through a Cast, each float16 output leaves through a Cast back."""
    from onnx import version_converter

    if model.opset_import[0].version < BF16_OPSET:
        try:
            model = version_converter.convert_version(model, BF16_OPSET)
        except Exception as exc:  # the converter raises several types for an operator it cannot move
            raise KeyUnsupported(f"bf16: cannot move the graph to opset {BF16_OPSET}: {_first_line(exc)}") from None
    for k, t in enumerate(model.graph.initializer):
        if t.data_type == TensorProto.FLOAT16:
            value = numpy_helper.to_array(t).astype(np.float32).astype(ml_dtypes.bfloat16)
            model.graph.initializer[k].CopyFrom(numpy_helper.from_array(value, t.name))
    del model.graph.value_info[:]  # float16 types inferred for the fp16 graph
    nodes = list(model.graph.node)
    for node in nodes:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.BFLOAT16
    first = [_float_boundary(vi, nodes, inward=True) for vi in model.graph.input]
    last = [_float_boundary(vi, nodes, inward=False) for vi in model.graph.output]
    del model.graph.node[:]
    model.graph.node.extend([n for n in first if n] + nodes + [n for n in last if n])
    return model


def _float_boundary(vi: onnx.ValueInfoProto, nodes: list[onnx.NodeProto], inward: bool) -> onnx.NodeProto | None:
    """A float16 graph input (`inward`) or output made float32: the Cast between it and the
    bfloat16 tensor the nodes now read or write under another name."""
    if vi.type.tensor_type.elem_type != TensorProto.FLOAT16:
        return None
    vi.type.tensor_type.elem_type = TensorProto.FLOAT
    inner = f"{vi.name}__bf16"
    for node in nodes:
        ports = node.input if inward else node.output
        ports[:] = [inner if t == vi.name else t for t in ports]
    if inward:
        return helper.make_node("Cast", [vi.name], [inner], to=TensorProto.BFLOAT16, name=f"{vi.name}_to_bf16")
    return helper.make_node("Cast", [inner], [vi.name], to=TensorProto.FLOAT, name=f"{vi.name}_to_fp32")


def activation_feeds(
    model: onnx.ModelProto,
    rng: np.random.Generator,
    batch_size: int | None = None,
    max_elements: int | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs for every graph input; `batch_size` fills a symbolic batch axis. An input
    over `max_elements` is refused before anything is allocated."""
    init_names = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        shape = []
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif axis == 0 and batch_size is not None:
                shape.append(batch_size)
            else:
                raise KeyInvalid(f"input {vi.name!r} has an unknown dimension at axis {axis}")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        if dtype not in _NP_TYPES:
            raise KeyInvalid(f"input {vi.name!r} has element type {dtype}, which the agent cannot fill")
        elements = math.prod(shape)
        if max_elements is not None and elements > max_elements:
            raise KeyInvalid(
                f"input {vi.name!r} of shape {shape} would hold {elements:,} elements, over the agent's "
                f"max_tensor_elements of {max_elements:,}: ask for a smaller batch"
            )
        feeds[vi.name] = random_array(tuple(shape), dtype, rng)
    return feeds
