"""Compressed models for latency work: a policy applied to an untrained model and exported.

Latency depends on structure and precision, not on trained weights, so the search can predict a
candidate's latency before fine-tuning it, and benchmarks can make many variants cheaply.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from host.compress.apply import apply_policy, random_calibration
from host.compress.export import export_policy_model
from host.compress.policy import LayerAction, LayerLimits, Policy
from host.compress.prune import layer_limits
from host.models import build_model
from lut_store.precision import Precision


def variant_model(
    model_name: str,
    policy: Policy,
    num_classes: int,
    input_shape: tuple[int, ...],
    round_to: int = 8,
    seed: int = 0,
    factory_kwargs: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """An untrained model (weights from `seed`) compressed per `policy`: activation ranges from
    random data, BN folded as it was initialised (there is nothing to re-estimate)."""
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes, input_shape, factory_kwargs).eval()
    apply_policy(model, policy, torch.zeros((1, *input_shape)), round_to, random_calibration(input_shape, seed))
    return model.eval()


def export_variant(
    model_name: str,
    policy: Policy,
    path: Path,
    num_classes: int = 6,
    input_shape: tuple[int, ...] = (3, 64, 64),
    round_to: int = 8,
    seed: int = 0,
) -> Path:
    """`variant_model` exported to `path` at the policy's precisions."""
    export_policy_model(
        variant_model(model_name, policy, num_classes, input_shape, round_to, seed), policy, path, input_shape
    )
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
