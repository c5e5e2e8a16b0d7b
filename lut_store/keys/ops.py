"""Op keys from an op's parameters: the kernels a CNN runs most, conv (optionally fused with
relu / add+relu), gemm, matmul, pools, element-wise ops, batch-norm, concat and softmax.

Each returns a canonical `OpKey`; anything else can be written as an `OpKey` directly. Ops on
images take their input as an `NCHW` shape; a convolution's own parameters are a `ConvSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from lut_store.opkey import OpKey, OpKeyError, OpNode, TensorSpec


class NCHW(NamedTuple):
    """The shape of an image-like activation: batch, channels, height, width."""

    batch: int
    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution with a square kernel; `padding` None is 'same'-style kernel // 2 * dilation
    (the input's channels come from its `NCHW`)."""

    out_channels: int
    kernel: int
    stride: int = 1
    padding: int | None = None
    dilation: int = 1
    groups: int = 1
    bias: bool = True

    @property
    def pad(self) -> int:
        return self.dilation * (self.kernel // 2) if self.padding is None else self.padding

    def output(self, x: NCHW) -> NCHW:
        """The shape the convolution makes of input `x`; OpKeyError when it does not fit."""
        if x.channels % self.groups or self.out_channels % self.groups:
            raise OpKeyError(f"channels {x.channels}->{self.out_channels} not divisible by groups {self.groups}")
        height = conv_out_size(x.height, self.kernel, self.stride, self.pad, self.pad, self.dilation)
        width = conv_out_size(x.width, self.kernel, self.stride, self.pad, self.pad, self.dilation)
        return NCHW(x.batch, self.out_channels, height, width)


def conv_out_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1) -> int:
    """Output length of one spatial axis of a convolution or pooling window."""
    out = (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1
    if out <= 0:
        raise OpKeyError(
            f"window {kernel} (dilation {dilation}) does not fit input size {size} with pads {pad_begin}+{pad_end}"
        )
    return out


def conv(x: NCHW, spec: ConvSpec, fuse: Sequence[str] = (), precision: str = "fp32") -> OpKey:
    """A 2-D convolution of input `x`, optionally followed by fused ops: ('relu',) or ('add', 'relu').

    For 'add' the key takes a second activation of the conv's output shape (the residual).
    """
    out = spec.output(x)
    k, s, p, d = spec.kernel, spec.stride, spec.pad, spec.dilation
    inputs = [
        TensorSpec(tuple(x)),
        TensorSpec((spec.out_channels, x.channels // spec.groups, k, k), role="weight"),
    ]
    if spec.bias:
        inputs.append(TensorSpec((spec.out_channels,), role="weight"))
    attrs = {"kernel_shape": (k, k), "strides": (s, s), "pads": (p, p, p, p), "dilations": (d, d), "group": spec.groups}
    nodes = [OpNode("Conv", tuple(f"i{j}" for j in range(len(inputs))), attrs)]
    for op in fuse:
        prev = f"n{len(nodes) - 1}"
        if op == "relu":
            nodes.append(OpNode("Relu", (prev,)))
        elif op == "add":
            inputs.append(TensorSpec(tuple(out)))
            nodes.append(OpNode("Add", (prev, f"i{len(inputs) - 1}")))
        else:
            raise OpKeyError(f"unknown fused op {op!r}; allowed: 'relu', 'add'")
    return OpKey(tuple(inputs), tuple(nodes), precision)


def gemm(batch: int, in_features: int, out_features: int, bias: bool = True, precision: str = "fp32") -> OpKey:
    """A fully connected layer as ONNX Gemm with transB=1 (PyTorch's Linear export)."""
    inputs = [TensorSpec((batch, in_features)), TensorSpec((out_features, in_features), role="weight")]
    if bias:
        inputs.append(TensorSpec((out_features,), role="weight"))
    refs = tuple(f"i{k}" for k in range(len(inputs)))
    return OpKey(tuple(inputs), (OpNode("Gemm", refs, {"transB": 1}),), precision)


def matmul(a_shape: Sequence[int], b_shape: Sequence[int], b_is_weight: bool = True, precision: str = "fp32") -> OpKey:
    """MatMul of an activation by a weight (or by a second activation)."""
    b_role = "weight" if b_is_weight else "activation"
    inputs = (TensorSpec(tuple(a_shape)), TensorSpec(tuple(b_shape), role=b_role))
    return OpKey(inputs, (OpNode("MatMul", ("i0", "i1")),), precision)


def pool(
    kind: str, x: NCHW, kernel: int, stride: int | None = None, padding: int = 0, precision: str = "fp32"
) -> OpKey:
    """MaxPool or AveragePool ('max' / 'avg') of input `x`; `stride` defaults to the kernel."""
    ops = {"max": "MaxPool", "avg": "AveragePool"}
    if kind not in ops:
        raise OpKeyError(f"unknown pool kind {kind!r}; allowed: {sorted(ops)}")
    s = kernel if stride is None else stride
    conv_out_size(x.height, kernel, s, padding, padding)
    attrs = {"kernel_shape": (kernel, kernel), "strides": (s, s), "pads": (padding,) * 4}
    return OpKey((TensorSpec(tuple(x)),), (OpNode(ops[kind], ("i0",), attrs),), precision)


def global_avg_pool(x: NCHW, precision: str = "fp32") -> OpKey:
    return OpKey((TensorSpec(tuple(x)),), (OpNode("GlobalAveragePool", ("i0",)),), precision)


def elementwise(op: str, shape: Sequence[int], precision: str = "fp32") -> OpKey:
    """Unary ('Relu', 'Sigmoid', ...) or binary ('Add', 'Mul', ...) op on same-shape inputs."""
    binary = op in ("Add", "Sub", "Mul", "Div", "Max", "Min")
    inputs = (TensorSpec(tuple(shape)),) * (2 if binary else 1)
    refs = ("i0", "i1") if binary else ("i0",)
    return OpKey(inputs, (OpNode(op, refs),), precision)


def batch_norm(x: NCHW, precision: str = "fp32") -> OpKey:
    """Inference-mode BatchNormalization (scale, bias, mean, var as weights)."""
    params = tuple(TensorSpec((x.channels,), role="weight") for _ in range(4))
    return OpKey(
        (TensorSpec(tuple(x)), *params),
        (OpNode("BatchNormalization", ("i0", "i1", "i2", "i3", "i4")),),
        precision,
    )


def concat(shapes: Sequence[Sequence[int]], axis: int = 1, precision: str = "fp32") -> OpKey:
    inputs = tuple(TensorSpec(tuple(s)) for s in shapes)
    refs = tuple(f"i{k}" for k in range(len(inputs)))
    return OpKey(inputs, (OpNode("Concat", refs, {"axis": axis}),), precision)


def softmax(shape: Sequence[int], axis: int = -1, precision: str = "fp32") -> OpKey:
    return OpKey((TensorSpec(tuple(shape)),), (OpNode("Softmax", ("i0",), {"axis": axis}),), precision)
