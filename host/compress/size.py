"""Size accounting as in the paper's Table 2: parameters, FP32 size, effective size at the chosen
precisions, compression against the FP32 baseline.

`effective_bytes` is the one rule: the search's surrogate applies it to the weight counts it
derives from channel counts, `size_report` to a model's tensors, so a policy's size is the same
number in both."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


def retained_fraction(bits: float, keep_ratio: float) -> float:
    """A kernel's effective parameter storage against FP32 (HiReLC's Eq. 21): its storage bits
    over 32 times its kept output channels; input channels a pruned producer removes, biases and
    norms are not counted."""
    if not 0 < bits <= 32 or not 0 < keep_ratio <= 1:
        raise ValueError(f"bits = {bits} must lie in (0, 32] and keep_ratio = {keep_ratio} in (0, 1]")
    return bits / 32 * keep_ratio


def storage_compression_ratio(policy: Policy, weights: Mapping[str, int]) -> float:
    """HiReLC's effective parameter-storage compression ratio (Eq. 22): the policy layers' FP32
    weight counts (`weights`, the uncompressed model's) over the same counts times each layer's
    `retained_fraction`."""
    total = sum(weights[name] for name in policy.layers)
    kept = sum(
        weights[name] * retained_fraction(a.precision.weight_bits, a.keep_ratio) for name, a in policy.layers.items()
    )
    return total / kept


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
