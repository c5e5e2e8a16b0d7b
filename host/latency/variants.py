"""Compressed models for latency work: a policy applied to an untrained model and exported.

Latency depends on structure and precision, not on trained weights, so the search can predict a
candidate's latency before fine-tuning it, and benchmarks can make many variants cheaply.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch

from host.compress.export import export_policy_model
from host.compress.fold import fold_batchnorm
from host.compress.policy import LayerAction, LayerLimits, Policy
from host.compress.prune import layer_limits, prune
from host.compress.quant import apply_fake_quant
from host.models import build_model
from lut_store.precision import Precision


def export_variant(
    model_name: str,
    policy: Policy,
    path: Path,
    num_classes: int = 6,
    input_shape: tuple[int, ...] = (3, 64, 64),
    round_to: int = 8,
    seed: int = 0,
) -> Path:
    """Prune, fold, fake-quantize (ranges from random data) and export an untrained model."""
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes, input_shape).eval()
    example = torch.zeros((1, *input_shape))
    prune(model, policy, example, round_to)
    fold_batchnorm(model)
    apply_fake_quant(model, policy)
    model.train()
    with torch.no_grad():
        model(torch.randn((8, *input_shape)))
    model.eval()
    export_policy_model(model, policy, path, input_shape)
    return path


def random_policy(
    model_name: str,
    limits: Sequence[LayerLimits],
    rng: random.Random,
    keep_ratios: Sequence[float],
    precisions: Sequence[Precision],
) -> Policy:
    """Random per-group keep-ratios and per-layer precisions (fixed-width layers keep 1.0)."""
    group_ratio: dict[str, float] = {}
    layers = {}
    for lim in limits:
        keep = 1.0 if lim.group is None else group_ratio.setdefault(lim.group, rng.choice(list(keep_ratios)))
        layers[lim.name] = LayerAction(keep, rng.choice(list(precisions)))
    return Policy(model_name, layers)


def model_limits(
    model_name: str, num_classes: int = 6, input_shape: tuple[int, ...] = (3, 64, 64)
) -> list[LayerLimits]:
    return layer_limits(build_model(model_name, num_classes, input_shape), torch.zeros((1, *input_shape)))
