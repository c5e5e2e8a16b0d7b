"""A policy applied to a model: prune -> (re-estimate BN) -> fold BN -> fake-quantize -> calibrate.

One sequence for every use: a trained teacher's student (BN re-estimated on training batches,
activation ranges from them) and an untrained variant whose latency alone matters (ranges from
random data: latency depends on structure and precision, not on weights).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from host.compress.fold import fold_batchnorm, recalibrate_batchnorm
from host.compress.policy import Policy
from host.compress.prune import count_params, prune
from host.compress.quant import apply_fake_quant, calibrate


@dataclass(frozen=True)
class Calibration:
    """Batches (tuples whose first item is the input) for BN re-estimation and activation ranges."""

    batches: Iterable[tuple[torch.Tensor, ...]]
    count: int  # batches the activation ranges are set from
    recalibrate_bn: bool = True  # re-estimate BN statistics on them before folding (trained models)


def apply_policy(
    model: nn.Module,
    policy: Policy,
    example: torch.Tensor,
    round_to: int,
    calibration: Calibration,
    int8_weight_bits: int = 8,
) -> int:
    """Compress `model` in place per `policy` (already validated); return its parameter count
    before pruning. The model is left fake-quantized and calibrated, not fine-tuned; int8 layers'
    weights take `int8_weight_bits` (7 for devices whose int8 kernels saturate)."""
    for p in model.parameters():  # a frozen teacher's copy: Torch-Pruning skips frozen layers
        p.requires_grad_(True)
    before = count_params(model)
    prune(model, policy, example, round_to)
    if calibration.recalibrate_bn:
        recalibrate_batchnorm(model, calibration.batches)
    fold_batchnorm(model)
    apply_fake_quant(model, policy, int8_weight_bits)
    calibrate(model, calibration.count, calibration.batches)
    return before


def student_of(
    teacher: nn.Module,
    policy: Policy,
    example: torch.Tensor,
    round_to: int,
    calibration: Calibration,
    int8_weight_bits: int = 8,
) -> tuple[nn.Module, int]:
    """A compressed copy of the teacher (the teacher is untouched) and the teacher's parameter count."""
    student = copy.deepcopy(teacher)
    return student, apply_policy(student, policy, example, round_to, calibration, int8_weight_bits)


def random_calibration(input_shape: tuple[int, ...], seed: int = 0) -> Calibration:
    """One batch of 8 random inputs, no BN re-estimation: for untrained latency variants."""
    generator = torch.Generator().manual_seed(seed)
    return Calibration([(torch.randn((8, *input_shape), generator=generator),)], 1, recalibrate_bn=False)
