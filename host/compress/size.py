"""Size accounting as in the paper's Table 2: parameters, FP32 size, effective size at the chosen
precisions, compression against the FP32 baseline.

`effective_bytes` is the one rule: the search's surrogate applies it to the weight counts it
derives from channel counts, `size_report` to a model's tensors, so a policy's size is the same
number in both."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from host.compress.policy import Policy
from lut_store.precision import Precision


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


def effective_bytes(params: int, layer_weights: Iterable[tuple[Precision, int]]) -> int:
    """Bytes of `params` parameters when each policy layer's weights (its precision, their count)
    are stored at the precision's storage bits and everything else (biases, norms) at 32,
    rounded up to whole bytes."""
    bits = 32 * params - sum((32 - precision.weight_bits) * weights for precision, weights in layer_weights)
    return (bits + 7) // 8


def size_report(model: nn.Module, policy: Policy, baseline_params: int) -> SizeReport:
    """The model's parameters and their effective size under `policy` (see `effective_bytes`)."""
    modules = dict(model.named_modules())
    total = sum(p.numel() for p in model.parameters())
    weights = ((action.precision, _weight_numel(modules[name])) for name, action in policy.layers.items())
    return SizeReport(
        params=total,
        fp32_bytes=4 * total,
        effective_bytes=effective_bytes(total, weights),
        baseline_params=baseline_params,
        baseline_fp32_bytes=4 * baseline_params,
    )
