"""Constructors for the kernels a CNN runs most: conv (optionally fused with relu / add+relu),
gemm, matmul, pools, element-wise ops, batch-norm, concat and softmax.

Each returns a canonical `OpKey`; anything else can be written as an `OpKey` directly.
"""

from __future__ import annotations

from collections.abc import Sequence

from lut_store.opkey import OpKey, OpKeyError, OpNode, TensorSpec


def conv_out_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1) -> int:
    """Output length of one spatial axis of a convolution or pooling window."""
    out = (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1
    if out <= 0:
        raise OpKeyError(
            f"window {kernel} (dilation {dilation}) does not fit input size {size} with pads {pad_begin}+{pad_end}"
        )
    return out


def conv(
    batch: int,
    in_channels: int,
    height: int,
    width: int,
    out_channels: int,
    kernel: int,
    stride: int = 1,
    padding: int | None = None,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = True,
    fuse: Sequence[str] = (),
    precision: str = "fp32",
) -> OpKey:
    """A 2-D convolution, optionally followed by fused ops: ('relu',) or ('add', 'relu').

    `padding` defaults to 'same'-style kernel // 2 * dilation. For 'add' the key takes a second
    activation of the conv's output shape (the residual).
    """
    if in_channels % groups or out_channels % groups:
        raise OpKeyError(f"channels {in_channels}->{out_channels} not divisible by groups {groups}")
    pad = dilation * (kernel // 2) if padding is None else padding
    oh = conv_out_size(height, kernel, stride, pad, pad, dilation)
    ow = conv_out_size(width, kernel, stride, pad, pad, dilation)
    inputs = [
        TensorSpec((batch, in_channels, height, width)),
        TensorSpec((out_channels, in_channels // groups, kernel, kernel), role="weight"),
    ]
    refs = ["i0", "i1"]
    if bias:
        inputs.append(TensorSpec((out_channels,), role="weight"))
        refs.append("i2")
    nodes = [
        OpNode(
            "Conv",
            tuple(refs),
            {
                "kernel_shape": (kernel, kernel),
                "strides": (stride, stride),
                "pads": (pad, pad, pad, pad),
                "dilations": (dilation, dilation),
                "group": groups,
            },
        )
    ]
    for op in fuse:
        prev = f"n{len(nodes) - 1}"
        if op == "relu":
            nodes.append(OpNode("Relu", (prev,)))
        elif op == "add":
            inputs.append(TensorSpec((batch, out_channels, oh, ow)))
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
    kind: str,
    batch: int,
    channels: int,
    height: int,
    width: int,
    kernel: int,
    stride: int | None = None,
    padding: int = 0,
    precision: str = "fp32",
) -> OpKey:
    """MaxPool or AveragePool ('max' / 'avg')."""
    ops = {"max": "MaxPool", "avg": "AveragePool"}
    if kind not in ops:
        raise OpKeyError(f"unknown pool kind {kind!r}; allowed: {sorted(ops)}")
    s = kernel if stride is None else stride
    conv_out_size(height, kernel, s, padding, padding)
    attrs = {"kernel_shape": (kernel, kernel), "strides": (s, s), "pads": (padding,) * 4}
    return OpKey((TensorSpec((batch, channels, height, width)),), (OpNode(ops[kind], ("i0",), attrs),), precision)


def global_avg_pool(batch: int, channels: int, height: int, width: int, precision: str = "fp32") -> OpKey:
    return OpKey((TensorSpec((batch, channels, height, width)),), (OpNode("GlobalAveragePool", ("i0",)),), precision)


def elementwise(op: str, shape: Sequence[int], precision: str = "fp32") -> OpKey:
    """Unary ('Relu', 'Sigmoid', ...) or binary ('Add', 'Mul', ...) op on same-shape inputs."""
    binary = op in ("Add", "Sub", "Mul", "Div", "Max", "Min")
    inputs = (TensorSpec(tuple(shape)),) * (2 if binary else 1)
    refs = ("i0", "i1") if binary else ("i0",)
    return OpKey(inputs, (OpNode(op, refs),), precision)


def batch_norm(batch: int, channels: int, height: int, width: int, precision: str = "fp32") -> OpKey:
    """Inference-mode BatchNormalization (scale, bias, mean, var as weights)."""
    params = tuple(TensorSpec((channels,), role="weight") for _ in range(4))
    return OpKey(
        (TensorSpec((batch, channels, height, width)), *params),
        (OpNode("BatchNormalization", ("i0", "i1", "i2", "i3", "i4")),),
        precision,
    )


def concat(shapes: Sequence[Sequence[int]], axis: int = 1, precision: str = "fp32") -> OpKey:
    inputs = tuple(TensorSpec(tuple(s)) for s in shapes)
    refs = tuple(f"i{k}" for k in range(len(inputs)))
    return OpKey(inputs, (OpNode("Concat", refs, {"axis": axis}),), precision)


def softmax(shape: Sequence[int], axis: int = -1, precision: str = "fp32") -> OpKey:
    return OpKey((TensorSpec(tuple(shape)),), (OpNode("Softmax", ("i0",), {"axis": axis}),), precision)
