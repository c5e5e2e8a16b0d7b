"""Per-layer fake quantization for training, exportable as ONNX QDQ as it is.

- int8: weights symmetric int8 (by the layer's granularity: a scale per output channel, one per
  tensor, or learnt per channel; `WeightFakeQuant`), input activations per-tensor affine uint8
  (U8S8: int8 x int8, i.e. S8S8, gave no speedup over U8S8 on our CPU), outputs per-tensor
  affine uint8, biases int32 at the scale input_scale * weight_scale; exports as
  QuantizeLinear / DequantizeLinear pairs that onnxruntime fuses into QLinearConv / QGemm.
- int4 (weight-only): weights symmetric in [-7, 7] by the same granularities, or on a log grid
  (`LogWeightFakeQuant`), activations in float.
- fp8 (weight-only): weights over a max-abs scale (per output channel or per tensor) rounded to
  float8 E4M3 (`Fp8WeightFakeQuant`), activations in float.
- fp16, bf16: weights and inputs rounded through float16 or bfloat16.
- fp32: untouched.
Gradients pass straight through the rounding (torch's fake-quantize ops implement the STE).
Parametrizations keep module names, so the policy's layer names stay valid.

The torch model computes what the integer kernels compute: every tensor is quantized once.
A layer's output quantizer observes the activation after it (ReLU, ReLU6), so its grid holds
only values that activation lets through and quantizing before the activation equals
quantizing after it; an 8-bit layer whose input is such an already-quantized tensor uses the
producer's quantizer as its input quantizer (the same scale and zero point: a no-op that
exports as the Q -> DQ pair onnxruntime needs to fuse). Two different quantizers on one
tensor would round twice in torch, while onnxruntime merges such a chain into one rounding on
the intersected range (its DoubleQDQPairsRemover): MobileNetV2's projection convs lost up to
0.56 accuracy points that way.

Fake quantization accumulates in float, so a layer's output misses a level now and then;
within `runtime_arithmetic` (eval only) int8 Conv2d and Linear layers compute onnxruntime's
integer arithmetic instead, and torch's logits equal the runtime's bit for bit.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from host.compress.policy import Policy, quantizes_weights
from lut_store.precision import Precision

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class WeightFakeQuant(nn.Module):
    """Symmetric fake quantization of a weight tensor on a linear grid, by granularity:
    per-channel (a max-abs scale per output channel), uniform (one max-abs scale for the tensor) or
    learned (a scale per output channel trained with the weights, LSQ's gradient, initialised at
    max-abs; sign-magnitude levels +-(2^(bits-1) - 1), so the export needs no -2^(bits-1))."""

    def __init__(self, bits: int, granularity: str = "per-channel", weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if granularity not in ("uniform", "per-channel", "learned"):
            raise ValueError(f"granularity {granularity!r} is not a linear grid; use LogWeightFakeQuant")
        self.bits = bits
        self.granularity = granularity
        self.qmax = 2 ** (bits - 1) - 1
        if granularity == "learned":
            if weight is None:
                raise ValueError("a learned scale starts from the weight it quantizes")
            self.learned_scale = nn.Parameter(self._max_abs(weight))

    def _max_abs(self, w: torch.Tensor) -> torch.Tensor:
        reduce = tuple(range(1, w.dim()))
        return (w.detach().abs().amax(dim=reduce) / self.qmax).clamp(min=1e-8)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """One scale per output channel (uniform: the tensor's, repeated)."""
        if self.granularity == "learned":
            return self.learned_scale.abs().clamp(min=1e-8)
        if self.granularity == "uniform":
            return (w.detach().abs().max() / self.qmax).clamp(min=1e-8).expand(w.shape[0])
        return self._max_abs(w)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.granularity == "learned" and not torch.onnx.is_in_onnx_export():
            zero = torch.zeros(w.shape[0], device=w.device)
            grad_factor = 1.0 / math.sqrt(w[0].numel() * self.qmax)  # LSQ's step-size gradient scale
            scale = self.scale(w)
            return torch._fake_quantize_learnable_per_channel_affine(
                w, scale, zero, 0, -self.qmax, self.qmax, grad_factor
            )
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        low, high = -self.qmax - 1, self.qmax
        if torch.onnx.is_in_onnx_export() and self.bits < 8:
            # ONNX's QuantizeLinear takes 8-bit ranges only: the traced node is a placeholder that
            # the export replaces by the stored levels (`export._int8_layer`), within +-qmax.
            low, high = -128, 127
        # (A learned layer exports through this op too; the export then writes its levels, within +-qmax.)
        return torch.fake_quantize_per_channel_affine(w, self.scale(w).detach(), zero, 0, low, high)


class Fp8WeightFakeQuant(nn.Module):
    """float8 E4M3 (FN) fake quantization of a weight: each output channel's (uniform: the tensor's)
    max-abs maps to E4M3's largest value, 448, and the weight over its scale is rounded to the
    nearest E4M3 value (ties to even, as the export's and the runtime's casts round). Gradients
    pass straight through."""

    E4M3_MAX = 448.0

    def __init__(self, granularity: str = "per-channel") -> None:
        super().__init__()
        if granularity not in ("uniform", "per-channel"):
            raise ValueError(f"granularity {granularity!r}: fp8 takes uniform or per-channel")
        self.granularity = granularity

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """One scale per output channel (uniform: the tensor's, repeated)."""
        if self.granularity == "uniform":
            return (w.detach().abs().max() / self.E4M3_MAX).clamp(min=1e-12).expand(w.shape[0])
        return (w.detach().abs().amax(dim=tuple(range(1, w.dim()))) / self.E4M3_MAX).clamp(min=1e-12)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        step = self.scale(w).reshape((-1,) + (1,) * (w.dim() - 1))
        ratio = (w / step).clamp(-self.E4M3_MAX, self.E4M3_MAX)
        return ratio.to(torch.float8_e4m3fn).to(w.dtype) * step

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (self.quantize(w.detach()) - w).detach()


class LogWeightFakeQuant(nn.Module):
    """Log-domain fake quantization: magnitudes rounded to powers of two of the tensor's max-abs
    scale s, s * 2^-k for k in 0 .. 2^(bits-1) - 2, signs kept, exact zeros zero: 2^bits - 1
    values, one codebook (`codebook`). Gradients pass straight through."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.granularity = "log"
        self.magnitudes = 2 ** (bits - 1) - 1

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return w.detach().abs().max().clamp(min=1e-8)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        s = self.scale(w)
        exponent = torch.round(torch.log2(w.abs().clamp(min=1e-30) / s)).clamp(-(self.magnitudes - 1), 0)
        return torch.where(w == 0, torch.zeros_like(w), torch.sign(w) * s * torch.exp2(exponent))

    def codebook(self, w: torch.Tensor) -> torch.Tensor:
        """Every value `quantize` can give for `w`: zero, then the positive and the negative magnitudes."""
        s = self.scale(w)
        magnitudes = s * torch.exp2(-torch.arange(self.magnitudes, dtype=w.dtype))
        return torch.cat([torch.zeros(1, dtype=w.dtype), magnitudes, -magnitudes])

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (self.quantize(w.detach()) - w).detach()


class HalfRound(nn.Module):
    """Round through a 16-bit float type (what a float16 or bfloat16 kernel sees)."""

    def __init__(self, dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (w.to(self.dtype).float() - w).detach()


def weight_quantizer(
    precision: Precision, granularity: str, weight: torch.Tensor, int8_weight_bits: int = 8
) -> nn.Module:
    """The fake quantizer of an int8, int4 or fp8 layer's weight at `granularity`; int8 weights
    take `int8_weight_bits` (7: levels within [-64, 63], stored as int8)."""
    if precision is Precision.FP8:
        return Fp8WeightFakeQuant(granularity)
    if granularity == "log":
        return LogWeightFakeQuant(precision.weight_bits)
    bits = int8_weight_bits if precision is Precision.INT8 else precision.weight_bits
    return WeightFakeQuant(bits, granularity, weight)


class ActFakeQuant(nn.Module):
    """Per-tensor affine uint8 fake quantization with an EMA min/max observer while training.

    `bounds` is the output range of the activation function after the quantized tensor, if any
    ((0, inf) for ReLU, (0, 6) for ReLU6): the observer records the range after it.
    """

    def __init__(self, momentum: float = 0.1, bounds: tuple[float, float] = (-math.inf, math.inf)) -> None:
        super().__init__()
        self.momentum = momentum
        self.bounds = bounds
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = (v.clamp(*self.bounds) for v in (x.detach().min(), x.detach().max()))
        if not bool(self.initialized):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.initialized.fill_(True)
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point), each of shape (1,)."""
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        scale = torch.clamp((hi - lo) / 255.0, min=1e-8).reshape(1)
        zero = torch.clamp(torch.round(-lo / scale), 0, 255).to(torch.int32).reshape(1)
        return scale, zero

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        if self.training and observe:
            self.observe(x)
        scale, zero = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


class BiasFakeQuant(nn.Module):
    """Int32 fake quantization of a bias at input_scale * weight_scale per output channel, as
    QLinearConv / QGemm add it to the integer accumulator."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "layer", layer)  # a plain reference: the layer owns this module

    def scale(self) -> torch.Tensor:
        weight = self.layer.parametrizations.weight
        input_scale, _ = self.layer.act_quant.qparams()
        return input_scale * weight[0].scale(weight.original)

    def levels(self, b: torch.Tensor) -> torch.Tensor:
        """The bias's int32 levels, rounded and clipped in float64 (INT32_MAX is not a float32)."""
        return torch.clamp(torch.round(b.detach().double() / self.scale().double()), INT32_MIN, INT32_MAX)

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        return b + (self.levels(b) * self.scale().double() - b.double()).detach().to(b.dtype)


_PASS_THROUGH_MODULES = (nn.Identity, nn.Dropout, nn.MaxPool2d, nn.Flatten)
_PASS_THROUGH_FUNCTIONS = (torch.flatten,)


def _activation_range(node: torch.fx.Node, modules: dict[str, nn.Module]) -> tuple[float, float] | None:
    """The output range of an elementwise clipping activation, None for any other node."""
    if node.op == "call_module":
        module = modules.get(node.target)
        if isinstance(module, nn.ReLU):
            return 0.0, math.inf
        if isinstance(module, nn.Hardtanh):  # ReLU6 too
            return float(module.min_val), float(module.max_val)
    if node.op == "call_function" and node.target in (F.relu, torch.relu):
        return 0.0, math.inf
    if node.op == "call_function" and node.target is F.relu6:
        return 0.0, 6.0
    return None


def _passes_through(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the node leaves quantized values on their grid (identity, max-pooling, reshape)."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _PASS_THROUGH_MODULES)
    return node.op == "call_function" and node.target in _PASS_THROUGH_FUNCTIONS


@dataclass(frozen=True)
class Int8Plan:
    """One int8 layer's quantizers: the range its output quantizer observes (that of the clipping
    activation after it, if any), the layer whose output quantizer already quantized its input
    (None: its own input quantizer), and that activation's module when it is called only there
    and only int8 layers read it: the output quantizer's grid lies within its range and the
    readers take the same levels, so the export can leave it out."""

    layer: str
    bounds: tuple[float, float]
    source: str | None
    activation: str | None


def _read_by_int8(node: torch.fx.Node, layers: set[str]) -> bool:
    """Whether every reader of the node's output is an int8 layer (it re-quantizes on the same grid)."""
    return bool(node.users) and all(u.op == "call_module" and u.target in layers for u in node.users)


def _plan_int8(model: nn.Module, layers: set[str]) -> list[Int8Plan]:
    """Each int8 layer's plan, in execution order."""
    traced = torch.fx.symbolic_trace(model)
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    quantized_by: dict[torch.fx.Node, tuple[str, tuple[float, float]]] = {}
    plan = []
    for node in traced.graph.nodes:
        if node.op == "call_module" and node.target in layers:
            source = quantized_by.get(node.args[0]) if node.args else None
            bounds, activation = (-math.inf, math.inf), None
            follower = node
            while len(follower.users) == 1:
                follower = next(iter(follower.users))
                act = _activation_range(follower, modules)
                if act is not None:
                    bounds = act
                    if follower.op == "call_module" and calls[follower.target] == 1 and _read_by_int8(follower, layers):
                        activation = str(follower.target)
                    break
                if not _passes_through(follower, modules):
                    break
            quantized_by[node] = (node.target, bounds)
            plan.append(Int8Plan(node.target, bounds, source[0] if source else None, activation))
        elif node.args and isinstance(node.args[0], torch.fx.Node) and node.args[0] in quantized_by:
            source, bounds = quantized_by[node.args[0]]
            act = _activation_range(node, modules)
            if (act is not None and act[0] <= bounds[0] and bounds[1] <= act[1]) or _passes_through(node, modules):
                quantized_by[node] = (source, bounds)
    missing = layers - {p.layer for p in plan}
    if missing:
        raise ValueError(f"layers {sorted(missing)[:5]} are not called as modules in the traced model")
    return plan


def _runtime(module: nn.Module) -> bool:
    """Whether the layer computes as onnxruntime does (`runtime_arithmetic`, eval, not exporting)."""
    return module.runtime_exact and not module.training and not torch.onnx.is_in_onnx_export()


def _quantize_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    if module.shares_input_quant and not torch.onnx.is_in_onnx_export():
        # Already on the producer's grid: quantizing again is the identity, values and gradients
        # alike. The export keeps the Q -> DQ pair.
        return args
    x = args[0]
    if _runtime(module):
        # QuantizeLinear divides by the scale (torch's fake quantization multiplies by its inverse).
        scale, zero = module.act_quant.qparams()
        return (torch.clamp(torch.round(x / scale), -zero, 255 - zero) * scale, *args[1:])
    return (module.act_quant(x, observe=not module.shares_input_quant), *args[1:])


def _quantize_output(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
    return _runtime_output(module, args[0]) if _runtime(module) else module.out_quant(out)


def _runtime_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output as onnxruntime computes it from `x` (on its input quantizer's grid):
    int8 weight levels times input levels, summed exactly (float64 holds every such sum) and
    wrapped to int32, then
    - Conv and Gemm (QLinearConv, QGemm): plus the int32 bias levels, converted to float32, times
      the float32 multiplier (s_x * s_w) / s_y, clamped to the output's uint8 range and rounded
      half to even;
    - a Linear over tokens (MatMul + Add: MatMulIntegerToFloat): converted to float32, times
      s_x * s_w, plus the bias in float, then quantized as QuantizeLinear does (a division).
    Float accumulation rounds differently, so its outputs differ by one level now and then."""
    x_scale, _ = module.act_quant.qparams()
    weight = module.parametrizations.weight
    w_scale = weight[0].scale(weight.original)
    per_channel = (-1,) + (1,) * (module.weight.dim() - 1)
    w = torch.round(module.weight / w_scale.reshape(per_channel)).double()  # the exported int8 levels
    xq = torch.round(x / x_scale).double()  # input level minus its zero point
    tokens = isinstance(module, nn.Linear) and x.dim() > 2
    if isinstance(module, nn.Conv2d):
        acc = F.conv2d(xq, w, None, module.stride, module.padding, module.dilation, module.groups)
        channel = (1, -1, 1, 1)
    else:
        acc = F.linear(xq, w)
        channel = (-1,)
    bias = module.parametrizations.bias[0] if module.bias is not None else None
    if bias is not None and not tokens:
        acc = acc + bias.levels(module.bias).reshape(channel)
    acc = torch.remainder(acc + 2**31, 2**32) - 2**31  # int32 arithmetic wraps around
    y_scale, y_zero = module.out_quant.qparams()
    if tokens:
        y = acc.float() * (x_scale * w_scale)
        if bias is not None:
            y = y + bias.levels(module.bias).float() * bias.scale()
        return torch.clamp(torch.round(y / y_scale), -y_zero, 255 - y_zero) * y_scale
    multiplier = (x_scale * w_scale / y_scale).reshape(channel)
    return torch.clamp(torch.round(acc.float() * multiplier), -y_zero, 255 - y_zero) * y_scale


@contextmanager
def runtime_arithmetic(model: nn.Module) -> Iterator[nn.Module]:
    """Within, the model's int8 Conv2d and Linear layers compute in eval what onnxruntime's
    integer kernels compute, to the last level: the torch accuracy of an int8 model is then the
    device's. Several times slower than fake quantization (float64 accumulators), so it is kept
    for the test split's reports."""
    layers = [m for m in model.modules() if hasattr(m, "runtime_exact") and isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        layer.runtime_exact = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.runtime_exact = False


_HALF_TYPES = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


def _half_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    x = args[0]
    return (x + (x.to(module.half_dtype).float() - x).detach(), *args[1:])


def apply_fake_quant(model: nn.Module, policy: Policy, int8_weight_bits: int = 8) -> nn.Module:
    """Attach each layer's quantizers in place (the policy is already validated); int8 weights
    take `int8_weight_bits`: 7 keeps every pair of uint8 x int8 products within int16, which the
    int8 kernels of x86 CPUs without VNNI saturate at."""
    modules = dict(model.named_modules())
    int8 = {name for name, action in policy.layers.items() if action.precision is Precision.INT8}
    plan = _plan_int8(model, int8) if int8 else []
    for name, action in policy.layers.items():
        module = modules[name]
        if quantizes_weights(action.precision):
            quantizer = weight_quantizer(action.precision, action.granularity, module.weight, int8_weight_bits)
            parametrize.register_parametrization(module, "weight", quantizer)
        elif action.precision in _HALF_TYPES:
            parametrize.register_parametrization(module, "weight", HalfRound(_HALF_TYPES[action.precision]))
            module.half_dtype = _HALF_TYPES[action.precision]
            module.register_forward_pre_hook(_half_input)
    for p in plan:
        module = modules[p.layer]
        module.out_quant = ActFakeQuant(bounds=p.bounds)
        module.shares_input_quant = p.source is not None
        module.runtime_exact = False  # set within `runtime_arithmetic`
        module.act_quant = modules[p.source].out_quant if p.source is not None else ActFakeQuant()
        module.redundant_activation = p.activation
        module.register_forward_pre_hook(_quantize_input)
        module.register_forward_hook(_quantize_output)
        if module.bias is not None:
            parametrize.register_parametrization(module, "bias", BiasFakeQuant(module))
    return model


def calibrate(model: nn.Module, batches: int, loader: torch.utils.data.DataLoader) -> None:
    """Set the activation ranges from a few batches before training (observers in train mode).
    Every activation quantizer must see data: an unset one has the range [0, 0] and would
    quantize its tensor to zeros."""
    if batches < 1:
        raise ValueError(
            f"calibration_batches = {batches}: int8 activations need at least one batch to set their ranges"
        )
    was_training = model.training
    model.train()
    with torch.no_grad():
        for i, (x, *_) in enumerate(loader):
            if i >= batches:
                break
            model(x)
    model.train(was_training)
    unset = [name for name, m in model.named_modules() if isinstance(m, ActFakeQuant) and not bool(m.initialized)]
    if unset:
        raise ValueError(
            f"{len(unset)} activation quantizer(s) saw no data while calibrating ({', '.join(unset[:3])}): "
            "the loader gave no batch, or the forward pass never reached them"
        )
