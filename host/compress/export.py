"""ONNX export at the policy's real precisions.

- fp32: float32.
- int8: the fake-quant exports as QuantizeLinear/DequantizeLinear (uint8 activations), which
  onnxruntime fuses into QLinearConv / QGemm; weights are stored as int8 initializers (per-channel
  scale, zero point 0) and biases as int32 ones (scale input_scale * weight_scale), each read
  through a DequantizeLinear: the values torch's fake quantization computed, a quarter of the
  float32 bytes.
- fp16: float16 weights and a float16 kernel between Casts (CPU provider: it inserts casts
  to fp32 kernels, no gain; CUDA / TensorRT: fp16 kernels).
- bf16: the same with bfloat16, the model moved to opset 22 (where Conv takes bfloat16): OpenVINO
  runs it as a bf16 kernel on CPUs with AVX-512 BF16 or AMX; onnxruntime's CPU provider has no
  bf16 Conv (its probe reports bf16 unsupported).
- int4 (weight-only): int4 weights (per-channel, opset-21 DequantizeLinear) in front of a float kernel:
  half the int8 storage (an eighth of float32); the CPU provider dequantizes them every run.
Granularities (host/compress/policy.py): `uniform` writes one scale (a scalar) for the tensor,
`learned` the trained per-channel scales, and an int4 `log` layer is written as 4-bit codes into its
codebook (Cast + Gather), which onnxruntime folds into a float32 weight when the session loads.
The torch model is exported with its fp16 and int4 weights already rounded (parametrizations
baked), then those layers are rewritten in the ONNX graph.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import structlog
import torch
from onnx import TensorProto, helper, numpy_helper, version_converter

from host.compress.policy import Policy
from lut_store.precision import Precision

log = structlog.get_logger(__name__)

WEIGHT_ONLY_OPSET = 21  # int4 and float8 DequantizeLinear
BF16_OPSET = 22
_HALF = {Precision.FP16: TensorProto.FLOAT16, Precision.BF16: TensorProto.BFLOAT16}


def _plain(module: torch.nn.Module) -> torch.nn.Module:
    """A plain Conv2d/Linear carrying `module`'s current (rounded) weight and bias, no hooks."""
    if isinstance(module, torch.nn.Conv2d):
        plain: torch.nn.Module = torch.nn.Conv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.bias is not None,
            module.padding_mode,
        )
    else:
        plain = torch.nn.Linear(module.in_features, module.out_features, module.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(module.weight)
        if module.bias is not None:
            plain.bias.copy_(module.bias)
    return plain.eval()


def _export_copy(model: torch.nn.Module, policy: Policy) -> torch.nn.Module:
    """A copy whose fp16, bf16, int4 and fp8 layers are plain modules with their rounded weights (removing a
    parametrization from a deep copy would remove it from the original's shared class too), and
    without the clipping activations an int8 layer's output quantizer already enforces.

    Such an activation (ReLU6 after an int8 convolution) would export as a float Clip between the
    layer's DequantizeLinear and the next layer's QuantizeLinear, and onnxruntime keeps it there
    unless the quantizer's scale is a scalar: MobileNetV2's unpruned int8 export ran at 0.63 ms that
    way, about 0.39 ms without the Clips (`bench/int8_export.py`; onnxruntime's own quantizer:
    about 0.36 ms). The output quantizer
    observes the range after the activation, so its grid lies within it, and only int8 layers read
    the activation (`Int8Plan`): the levels they read are the same without it. (Before a float
    layer the Clip stays: that layer would read the top level one ulp above the bound, and its
    key would read as int8, being fed by a DequantizeLinear.)"""
    clone = copy.deepcopy(model).eval()

    def replace(name: str, module: torch.nn.Module) -> None:
        parent_name, _, attr = name.rpartition(".")
        setattr(clone.get_submodule(parent_name) if parent_name else clone, attr, module)

    for name, action in policy.layers.items():
        if action.precision in (Precision.FP16, Precision.BF16, Precision.INT4W, Precision.FP8):
            replace(name, _plain(clone.get_submodule(name)))
        elif action.precision is Precision.INT8 and getattr(clone.get_submodule(name), "redundant_activation", None):
            replace(clone.get_submodule(name).redundant_activation, torch.nn.Identity())
    return clone


class ExportError(ValueError):
    """A model the ONNX exporter cannot trace faithfully; the message names the module."""


def export_onnx(model: torch.nn.Module, path: Path, input_shape: tuple[int, ...], opset: int = 17) -> None:
    """ONNX with a dynamic batch axis; `input_shape` without the batch (TorchScript exporter:
    one file; fake quantization becomes QDQ). A module whose forward branches on its data (the
    trace would keep one branch) or that the exporter fails on is an ExportError naming it."""
    model.eval()
    names = {m: n or type(model).__name__ for n, m in model.named_modules()}
    running: list[str] = []

    def leave(module: torch.nn.Module, args: tuple, out: object) -> None:  # None: the output stays
        running.pop()

    hooks = [m.register_forward_pre_hook(lambda m, args: running.append(names[m])) for m in names]
    hooks += [m.register_forward_hook(leave) for m in names]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*Python boolean", category=torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                (torch.zeros((1, *input_shape)),),
                str(path),
                opset_version=opset,
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
    except Exception as exc:  # the exporter's own errors vary by op and version
        where = running[-1] if running else type(model).__name__
        chain = [exc]
        while chain[-1].__cause__ or chain[-1].__context__:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if any(isinstance(e, torch.jit.TracerWarning) for e in chain):  # raised inside Tensor.__bool__
            raise ExportError(
                f"module {where!r} branches on its input data (a tensor used as a Python bool): an ONNX trace "
                "would keep one branch; write the choice with tensor ops (torch.where) or make it depend on shapes"
            ) from None
        raise ExportError(f"exporting to ONNX failed in module {where!r}: {type(exc).__name__}: {exc}") from None
    finally:
        for hook in hooks:
            hook.remove()


def _source_initializer(model: onnx.ModelProto, name: str) -> str:
    """The initializer a value is computed from, following first inputs (a parametrized weight
    reaches its node through the fake-quant ops), or `name` itself."""
    inits = {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    seen = set()
    while name not in inits and name in producers and name not in seen:
        seen.add(name)
        inputs = [i for i in producers[name].input if i]
        if not inputs:
            break
        name = inputs[0]
    return name


def _scope_module(node_name: str) -> str:
    """The module a node was exported from, read off its TorchScript scope name, where a
    container's child follows the container as "name.index": "/blocks/blocks.1/attn/qkv/MatMul"
    -> "blocks.1.attn.qkv", "/enc/enc.0/mlp/mlp.2/MatMul" -> "enc.0.mlp.2"."""
    path: list[str] = []
    for part in node_name.strip("/").split("/")[:-1]:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def _layer_nodes(model: onnx.ModelProto, layers: set[str]) -> dict[str, onnx.NodeProto]:
    """The Conv/Gemm/MatMul node of each named layer, found by its weight initializer name (or,
    for a Linear over tokens, whose transposed weight the exporter names anonymously, by the
    node's scope)."""
    found = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            source = _source_initializer(model, node.input[1])
            name = source.removesuffix(".parametrizations.weight.original").removesuffix(".weight")
            if name not in layers and node.op_type == "MatMul" and _constant(model, node.input[1]) is not None:
                name = _scope_module(node.name)
            if name in layers:
                node.name = node.name or f"{name}.op"
                found[name] = node
    missing = layers - set(found)
    if missing:
        raise ValueError(f"layers {sorted(missing)[:5]} have no weight initializer in the exported graph")
    return found


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value behind `name`: an initializer, possibly through Identity nodes (the exporter
    shares equal tensors that way)."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    while name not in inits and name in producers and producers[name].op_type == "Identity":
        name = producers[name].input[0]
    return numpy_helper.to_array(inits[name]) if name in inits else None


def _prune_unused(model: onnx.ModelProto) -> None:
    """Drop nodes and initializers nothing reads any more."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if not set(n.output) & used]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)


def _to_half(model: onnx.ModelProto, node: onnx.NodeProto, precision: Precision) -> None:
    """The node computes in float16 or bfloat16: its float weights stored so, Casts around it."""
    elem, tag = _HALF[precision], precision.value
    np_type = helper.tensor_dtype_to_np_dtype(elem)
    for idx in range(1, len(node.input)):
        value = _constant(model, node.input[idx])
        if value is not None and value.dtype == np.float32:
            name = f"{node.name}_param{idx}_{tag}"
            model.graph.initializer.append(numpy_helper.from_array(value.astype(np_type), name))
            node.input[idx] = name
    x, y = node.input[0], node.output[0]
    node.input[0], node.output[0] = f"{x}__{tag}_{node.name}", f"{y}__{tag}"
    index = list(model.graph.node).index(node)
    model.graph.node.insert(
        index, helper.make_node("Cast", [x], [node.input[0]], to=elem, name=f"{node.name}_to_{tag}")
    )
    model.graph.node.insert(
        index + 2, helper.make_node("Cast", [node.output[0]], [y], to=TensorProto.FLOAT, name=f"{node.name}_to_fp32")
    )


def _graph_weight(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[np.ndarray, int]:
    """A layer's weight as the graph holds it, and its output-channel axis (a MatMul's weight is
    stored transposed, a Gemm's without transB too)."""
    w = _constant(model, node.input[1])
    if w is None:
        raise ValueError(f"node {node.name}: its weight is not a constant of the graph")
    axis = 0 if node.op_type != "MatMul" else w.ndim - 1
    if node.op_type == "Gemm" and not next((a.i for a in node.attribute if a.name == "transB"), 0):
        axis = 1
    return w, axis


def _feed_weight(model: onnx.ModelProto, node: onnx.NodeProto, made: onnx.NodeProto, inits: list) -> None:
    """Insert `made` (it computes the weight from the `inits` initializers) before `node`."""
    model.graph.initializer.extend(inits)
    model.graph.node.insert(list(model.graph.node).index(node), made)
    node.input[1] = made.output[0]


def _to_weight_only(
    model: onnx.ModelProto, node: onnx.NodeProto, quantizer: torch.nn.Module, weight: torch.Tensor, precision: Precision
) -> None:
    """int4 levels or float8 E4M3 values through a DequantizeLinear: per output channel at the
    quantizer's scales, or one scale for the tensor (uniform)."""
    w, axis = _graph_weight(model, node)
    scale = quantizer.scale(weight).detach().numpy().astype(np.float32)
    per_tensor = quantizer.granularity == "uniform"
    shape = [1] * w.ndim
    shape[axis] = -1
    step = scale[0] if per_tensor else scale.reshape(shape)
    if precision is Precision.FP8:
        # The weight is already on the grid: the ratio is an E4M3 value up to float rounding.
        q = np.clip(w / step, -quantizer.E4M3_MAX, quantizer.E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
    else:
        q = np.clip(np.round(w / step), -8, 7).astype(ml_dtypes.int4)
    base = f"{node.name}_weight"
    attrs = {} if per_tensor else {"axis": axis}
    inits = [
        numpy_helper.from_array(q, f"{base}_{precision.value}"),
        numpy_helper.from_array(np.asarray(step if per_tensor else scale), f"{base}_scale"),
    ]
    made = helper.make_node(
        "DequantizeLinear",
        [f"{base}_{precision.value}", f"{base}_scale"],
        [f"{base}_dq"],
        name=f"{node.name}_dequant_{precision.value}",
        **attrs,
    )
    _feed_weight(model, node, made, inits)


def _to_codebook(
    model: onnx.ModelProto, node: onnx.NodeProto, quantizer: torch.nn.Module, weight: torch.Tensor
) -> None:
    """A log-grid weight as 4-bit codes into its codebook (Cast + Gather, which the runtime folds
    into a float weight when it loads the model): the file stores the codes."""
    w, _ = _graph_weight(model, node)
    book = quantizer.codebook(weight).detach().numpy().astype(np.float32)
    codes = np.abs(w[..., None] - book).argmin(axis=-1)
    if not np.allclose(book[codes], w, rtol=1e-6, atol=0):
        raise ValueError(f"node {node.name}: its weight is not on its log grid")
    base = f"{node.name}_weight"
    inits = [
        numpy_helper.from_array(codes.astype(ml_dtypes.uint4), f"{base}_codes"),
        numpy_helper.from_array(book, f"{base}_codebook"),
    ]
    model.graph.node.insert(
        list(model.graph.node).index(node),
        helper.make_node("Cast", [f"{base}_codes"], [f"{base}_index"], to=TensorProto.INT64, name=f"{node.name}_codes"),
    )
    made = helper.make_node(
        "Gather", [f"{base}_codebook", f"{base}_index"], [f"{base}_log"], axis=0, name=f"{node.name}_codebook"
    )
    _feed_weight(model, node, made, inits)


def _int8_levels(ratio: torch.Tensor, layer: str) -> torch.Tensor:
    """Weights over their scale rounded to int8; values beyond [-128, 127] (a scale set before the
    weights changed) are clipped, and how many is logged, rather than wrapped around."""
    rounded = torch.round(ratio)
    clipped = int(((rounded < -128) | (rounded > 127)).sum())
    if clipped:
        log.warning("export.int8_weights_clipped", layer=layer, clipped=clipped, of=rounded.numel())
    return torch.clamp(rounded, -128, 127).to(torch.int8)


def _bias_add(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[onnx.NodeProto, int]:
    """The Add that adds a MatMul's bias (a Linear over tokens exports as MatMul + Add), and the
    input slot of the bias in it."""
    for add in model.graph.node:
        if add.op_type == "Add" and node.output[0] in add.input:
            return add, 1 - list(add.input).index(node.output[0])
    raise ValueError(f"node {node.name}: the Add of its layer's bias is not in the exported graph")


def _int8_layer(model: onnx.ModelProto, node: onnx.NodeProto, layer: torch.nn.Module) -> None:
    """Feed `node` its weight as int8 levels and its bias as int32 levels, each through a
    DequantizeLinear per output channel: axis 0 for Conv and Gemm with transB, as exported; for
    a MatMul (a Linear over tokens) the weight is stored transposed (axis 1) and the bias is the
    following Add's."""
    weight_quant = layer.parametrizations.weight
    matmul = node.op_type == "MatMul"
    per_tensor = weight_quant[0].granularity == "uniform"
    with torch.no_grad():
        scale = weight_quant[0].scale(weight_quant.original)
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        levels = _int8_levels(layer.weight / scale.reshape(shape), node.name)
        tensors = [("weight", node, 1, levels.T.contiguous() if matmul else levels, scale, np.int8, int(matmul))]
        if layer.bias is not None:
            bias_quant = layer.parametrizations.bias[0]
            target, slot = _bias_add(model, node) if matmul else (node, 2)
            bias = bias_quant.levels(layer.bias).to(torch.int32)
            tensors.append(("bias", target, slot, bias, bias_quant.scale(), np.int32, 0))
    for kind, target, slot, values, value_scale, dtype, axis in tensors:
        base = f"{node.name}_{kind}"
        scales = value_scale.detach().numpy().astype(np.float32)
        # Uniform: one scale (and zero point) for the tensor, a scalar; else one per output channel.
        scales, zeros = (
            (scales.reshape(-1)[0], np.zeros((), dtype))
            if per_tensor
            else (scales, np.zeros(values.shape[axis], dtype))
        )
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(values.numpy(), f"{base}_q"),
                numpy_helper.from_array(np.asarray(scales), f"{base}_scale"),
                numpy_helper.from_array(zeros, f"{base}_zero"),
            ]
        )
        model.graph.node.insert(
            list(model.graph.node).index(target),
            helper.make_node(
                "DequantizeLinear",
                [f"{base}_q", f"{base}_scale", f"{base}_zero"],
                [f"{base}_dq"],
                axis=axis,
                name=f"{node.name}_dequant_{kind}",
            ),
        )
        target.input[slot] = f"{base}_dq"


@dataclass(frozen=True)
class ExportedModel:
    """An exported ONNX file and where each policy layer is in it."""

    path: Path
    layer_nodes: dict[str, str]  # policy layer -> the name of its Conv/Gemm/MatMul node (its kernel's anchor)
    layers_per_precision: dict[Precision, int]


def export_policy_model(
    model: torch.nn.Module, policy: Policy, path: Path, input_shape: tuple[int, ...], opset: int = 17
) -> ExportedModel:
    """Export the compressed model at its real precisions, naming each layer's compute node."""
    layers = {p: {n for n, a in policy.layers.items() if a.precision is p} for p in Precision}
    export_onnx(_export_copy(model, policy), path, input_shape, opset)
    graph = onnx.load(path)
    needs = {Precision.INT4W: WEIGHT_ONLY_OPSET, Precision.FP8: WEIGHT_ONLY_OPSET, Precision.BF16: BF16_OPSET}
    opset_needed = max((opset for p, opset in needs.items() if layers[p]), default=0)
    if graph.opset_import[0].version < opset_needed:
        graph = version_converter.convert_version(graph, opset_needed)
    nodes = _layer_nodes(graph, set(policy.layers))
    modules = dict(model.named_modules())
    for name in layers[Precision.INT8]:
        _int8_layer(graph, nodes[name], modules[name])
    for precision in _HALF:
        for name in layers[precision]:
            _to_half(graph, nodes[name], precision)
    for precision in (Precision.INT4W, Precision.FP8):
        for name in layers[precision]:
            weight = modules[name].parametrizations.weight
            if weight[0].granularity == "log":
                _to_codebook(graph, nodes[name], weight[0], weight.original)
            else:
                _to_weight_only(graph, nodes[name], weight[0], weight.original, precision)
    _prune_unused(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, path)
    return ExportedModel(
        path, {name: node.name for name, node in nodes.items()}, {p: len(n) for p, n in layers.items()}
    )
