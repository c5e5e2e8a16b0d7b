"""Size accounting as in the paper's Table 2: parameters, FP32 size, effective size at the chosen
precisions, compression against the FP32 baseline."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from host.compress.policy import Policy


@dataclass(frozen=True)
class SizeReport:
    params: int
    fp32_bytes: int
    effective_bytes: int
    baseline_params: int
    baseline_fp32_bytes: int

    @property
    def params_reduction(self) -> float:
        """Share of the baseline's parameters removed (0.75 = -75%)."""
        return 1 - self.params / self.baseline_params

    @property
    def compression(self) -> float:
        """Share of the baseline's FP32 bytes saved by pruning and precision together."""
        return 1 - self.effective_bytes / self.baseline_fp32_bytes


def _weight_numel(module: nn.Module) -> int:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original.numel()
    return module.weight.numel()


def size_report(model: nn.Module, policy: Policy, baseline_params: int) -> SizeReport:
    """Weights of each policy layer count at its precision's storage bits; everything else
    (biases, norms) at 32."""
    modules = dict(model.named_modules())
    total = sum(p.numel() for p in model.parameters())
    bits_total = 32 * total
    for name, action in policy.layers.items():
        weights = _weight_numel(modules[name])
        bits_total -= (32 - action.precision.weight_bits) * weights
    return SizeReport(
        params=total,
        fp32_bytes=4 * total,
        effective_bytes=(bits_total + 7) // 8,
        baseline_params=baseline_params,
        baseline_fp32_bytes=4 * baseline_params,
    )
