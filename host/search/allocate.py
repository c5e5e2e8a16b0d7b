"""Sensitivity-aware proposals from the LUT: PPO's first episodes and its starting point.

A uniform sweep prunes every layer alike, yet layers differ twice over: in what their channels
cost on the device (the LUT's latency estimator knows, host/search/budget.py) and in what
removing them costs in accuracy. Before the first episode the search measures the second once:

- **damage**: each pruning group alone pruned to each of a few keep-ratios (every other layer
  unpruned, FP32), BatchNorm re-estimated, no fine-tune; its KL(teacher || student) on the
  validation split. A power law through those points (and none at keep 1) models the group's
  damage at any keep-ratio, and a policy's damage is the sum over groups.
- **allocation**: channels are removed greedily, a keep-ratio step at a time, from the group whose
  next step costs the least damage per millisecond saved, until the modelled damage reaches a
  budget (the hardware-aware knapsack of HALP, Shen et al. 2022, https://arxiv.org/abs/2110.10811,
  with measured damage in place of Taylor importance). Every layer runs at its fastest allowed
  precision.
- **proposals**: one allocation per budget, each budget the modelled damage of a uniform keep-ratio
  from the middle of the range up: as much modelled damage as that uniform policy, less latency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch.utils.data import DataLoader

from host.compress.policy import Policy
from host.search.budget import LatencyEstimator
from host.search.space import SearchSpace
from host.workbench import Workbench
from lut_store.precision import Precision

STEP = 0.05  # the allocation's keep-ratio step
EXPONENT_RANGE = (1.0, 4.0)  # damage grows at least linearly and at most as the 4th power of the pruned fraction


@dataclass(frozen=True)
class Damage:
    """Per pruning group (by its root layer), the validation KL of the teacher with only that
    group pruned, at each of `keeps` (checkpoints/damage.json)."""

    keeps: tuple[float, ...]
    kl: dict[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        if len(self.keeps) != 2 or not 0 < min(self.keeps) < max(self.keeps) < 1:
            raise ValueError(f"damage keeps {self.keeps}: give two keep-ratios in (0, 1)")
        if any(len(v) != len(self.keeps) or min(v) < 0 or not all(map(math.isfinite, v)) for v in self.kl.values()):
            raise ValueError("damage: one finite, non-negative KL per keep-ratio and group")

    def at(self, group: str, keep: float) -> float:
        """The modelled KL of pruning `group` to `keep`: a * pruned^b through the two measurements."""
        pruned = 1.0 - keep
        if pruned <= 0:
            return 0.0
        (p1, d1), (p2, d2) = sorted(((1.0 - k, d) for k, d in zip(self.keeps, self.kl[group], strict=True)))
        d1, d2 = max(d1, 1e-9), max(d2, d1, 1e-9)
        b = min(max(math.log(d2 / d1) / math.log(p2 / p1), EXPONENT_RANGE[0]), EXPONENT_RANGE[1])
        return d1 * (pruned / p1) ** b

    def total(self, keeps: dict[str, float]) -> float:
        """The modelled damage of a policy with these group keep-ratios (additive over groups)."""
        return sum(self.at(group, keep) for group, keep in keeps.items())


def groups_of(space: SearchSpace) -> list[str]:
    """The space's pruning groups in execution order (each named by its root layer)."""
    return list(dict.fromkeys(layer.group for layer in space.layers if layer.group is not None))


def fastest(space: SearchSpace, estimator: LatencyEstimator) -> list[Precision]:
    """Each layer's fastest allowed precision by the LUT (unpruned; the more precise on a tie)."""
    return [
        min(space.allowed_at(t), key=lambda p, name=layer.name: (estimator.full_ms[p][name], -p.weight_bits))
        for t, layer in enumerate(space.layers)
    ]


def grouped_policy(space: SearchSpace, keeps: dict[str, float], precisions: Sequence[Precision]) -> Policy:
    """The policy with these group keep-ratios (groups not named: unpruned)."""
    return space.policy(
        [keeps.get(layer.group, 1.0) if layer.group is not None else 1.0 for layer in space.layers], precisions
    )


def measure_damage(bench: Workbench, space: SearchSpace, loader: DataLoader, keeps: tuple[float, float]) -> Damage:
    """Each group alone pruned to each of `keeps`: BatchNorm re-estimated on `loader`, no fine-tune,
    KL from the teacher on the validation split."""
    fp32 = [Precision.FP32] * len(space.layers)
    kl: dict[str, tuple[float, ...]] = {}
    groups = groups_of(space)
    for i, group in enumerate(groups):
        bench.progress.live(f"pruning damage: group {i + 1}/{len(groups)} ({group}) ...", force=True)
        values = []
        for keep in keeps:
            student, _ = bench.compress(grouped_policy(space, {group: keep}, fp32), loader)
            values.append(max(bench.fidelity(student, "val").kl, 0.0))
        kl[group] = tuple(values)
    return Damage(tuple(keeps), kl)


def allocate(space: SearchSpace, estimator: LatencyEstimator, damage: Damage, budget: float) -> Policy:
    """The greedy allocation under a damage `budget`: from every group at the space's max_keep,
    step down the group whose next step saves the most predicted ms per unit of damage while the
    budget allows; every layer at its fastest allowed precision."""
    precisions = fastest(space, estimator)
    keeps = {group: space.max_keep for group in groups_of(space)}
    spent = damage.total(keeps)
    latency = estimator(grouped_policy(space, keeps, precisions))
    while True:
        best: tuple[float, str, float, float] | None = None
        for group, keep in keeps.items():
            step = _next_step(space, estimator, keeps, group, precisions, latency)
            if step is None:
                continue
            lower, trial = step
            cost = damage.at(group, lower) - damage.at(group, keep)
            if spent + cost > budget:
                continue
            score = (latency - trial) / max(cost, 1e-12)
            if best is None or score > best[0]:
                best = (score, group, lower, trial)
        if best is None:
            return grouped_policy(space, keeps, precisions)
        _, group, lower, latency = best
        spent += damage.at(group, lower) - damage.at(group, keeps[group])
        keeps[group] = lower


def _next_step(
    space: SearchSpace,
    estimator: LatencyEstimator,
    keeps: dict[str, float],
    group: str,
    precisions: Sequence[Precision],
    latency: float,
) -> tuple[float, float] | None:
    """`group`'s next lower keep-ratio that saves time, with the predicted ms there (channels are
    rounded, so one step may remove none); None at the bottom of the range."""
    lower = keeps[group]
    while lower > space.min_keep:
        lower = round(max(lower - STEP, space.min_keep), 4)
        trial = estimator(grouped_policy(space, {**keeps, group: lower}, precisions))
        if trial < latency:
            return lower, trial
    return None


def proposals(
    space: SearchSpace, estimator: LatencyEstimator, damage: Damage, uniform_keeps: Sequence[float]
) -> list[Policy]:
    """One allocation per uniform keep-ratio, under that uniform policy's modelled damage."""
    groups = groups_of(space)
    return [allocate(space, estimator, damage, damage.total(dict.fromkeys(groups, k))) for k in uniform_keeps]


def proposal_keeps(space: SearchSpace, n: int) -> list[float]:
    """The uniform keep-ratios whose damage the `n` proposals spend: the middle of the range and
    steps of a seventh of it (0.1 for 0.2..0.9) above, safest (widest) first. A proposal loses
    more than the additive model says (ResNet18: the one under keep 0.55's damage scored like
    uniform keep 0.45), so they start at the middle and go wider."""
    mid = (space.min_keep + space.max_keep) / 2
    span = (space.max_keep - space.min_keep) / 7
    offsets = range(n - 1, -1, -1)
    return [round(min(max(mid + o * span, space.min_keep), space.max_keep), 4) for o in offsets]
