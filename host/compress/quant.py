"""Per-layer fake quantization for training, exportable as ONNX QDQ as it is.

- 8 bits: weights per-channel symmetric int8, input activations per-tensor affine uint8
  (U8S8: FACTS.md, int8 x int8 gave no speedup on our CPU); exports as QuantizeLinear /
  DequantizeLinear pairs that onnxruntime fuses into QLinearConv / QLinearMatMul.
- 4 bits: weights per-channel symmetric in [-8, 7], activations in float (weight-only).
- 16 bits: weights and inputs rounded through float16.
- 32 bits: untouched.
Gradients pass straight through the rounding (torch's fake-quantize ops implement the STE).
Parametrizations keep module names, so the policy's layer names stay valid.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from host.compress.policy import Policy


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric fake quantization of a weight tensor."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.qmax = 2 ** (bits - 1) - 1

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        reduce = tuple(range(1, w.dim()))
        scale = (w.detach().abs().amax(dim=reduce) / self.qmax).clamp(min=1e-8)
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -self.qmax - 1, self.qmax)


class HalfRound(nn.Module):
    """Round through float16 (what a float16 kernel sees)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (w.half().float() - w).detach()


class ActFakeQuant(nn.Module):
    """Per-tensor affine uint8 fake quantization with an EMA min/max observer while training."""

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = x.detach().min(), x.detach().max()
            if not bool(self.initialized):
                self.min_val.copy_(lo)
                self.max_val.copy_(hi)
                self.initialized.fill_(True)
            else:
                self.min_val.lerp_(lo, self.momentum)
                self.max_val.lerp_(hi, self.momentum)
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        scale = torch.clamp((hi - lo) / 255.0, min=1e-8).reshape(1)
        zero = torch.clamp(torch.round(-lo / scale), 0, 255).to(torch.int32).reshape(1)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def _input_hook(quantizer: nn.Module):
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (quantizer(args[0]), *args[1:])
    return hook


def apply_fake_quant(model: nn.Module, policy: Policy) -> nn.Module:
    """Attach each layer's quantizers in place (the policy is already validated)."""
    modules = dict(model.named_modules())
    for name, action in policy.layers.items():
        module = modules[name]
        if action.bits in (4, 8):
            parametrize.register_parametrization(module, "weight", WeightFakeQuant(action.bits))
        elif action.bits == 16:
            parametrize.register_parametrization(module, "weight", HalfRound())
        if action.bits == 8:
            module.act_quant = ActFakeQuant()
            module.register_forward_pre_hook(_input_hook(module.act_quant))
            # Quantized outputs too: onnxruntime fuses DQ -> Conv -> Q into one QLinearConv.
            module.out_quant = ActFakeQuant()
            module.register_forward_hook(lambda mod, args, out: mod.out_quant(out))
        elif action.bits == 16:
            module.register_forward_pre_hook(_input_hook(HalfRound()))
    return model


def calibrate(model: nn.Module, batches: int, loader: torch.utils.data.DataLoader) -> None:
    """Set the activation ranges from a few batches before training (observers in train mode)."""
    was_training = model.training
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x)
    model.train(was_training)
