"""The episode reward in HAD-MC 2.0's form, and AMC-style constraints on the actions.

Constraint enforcement follows AMC (He et al. 2018, https://arxiv.org/abs/1802.03494, Alg. 1):
while layer t's action is chosen, assume every later layer takes the most aggressive action; if
even then the policy would miss the budget, reduce layer t's action until it does not. The
most aggressive policy is checked once, up front, so the final policy always meets the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from host.compress.policy import Policy
from host.search.space import SearchSpace
from lut_store.precision import Precision

SIGNALS = ("top1", "teacher-kl")


@dataclass(frozen=True)
class RewardConfig:
    """R = acc^accuracy_weight * (L_base / L)^latency_weight * (S_base / S)^size_weight.

    The defaults are HAD-MC 2.0's form (accuracy weight 1). A latency-first search (`hadmc demo`)
    weighs latency 1 and accuracy 2: halving latency is then worth a drop from 0.96 to 0.68 in a
    one-epoch fine-tune's accuracy, which a full fine-tune mostly recovers; a collapse (keep 0.2:
    0.37) is not."""

    latency_weight: float = 0.1
    size_weight: float = 0.05
    accuracy_weight: float = 1.0
    # What `acc` is: "top1", the validation top-1; or "teacher-kl", exp(-KL(teacher || student)) on
    # the validation split, 1 for a student that answers as its teacher does. Top-1 on a few hundred
    # images moves in steps of a third of a point and a one-epoch fine-tune's is mostly noise; the
    # KL averages every image's whole class distribution (see SIGNALS' use in `fidelity`).
    accuracy_signal: str = "top1"
    # "Fastest within a tolerance" instead of a product: with accuracy_tolerance > 0 the accuracy term
    # is 1 while acc >= accuracy_reference - accuracy_tolerance and falls as exp(-shortfall /
    # accuracy_scale) below. The search sets accuracy_reference before the first episode: the
    # unpruned network at its fastest precisions, scored like an episode (same fine-tune, same split).
    accuracy_tolerance: float = 0.0
    accuracy_scale: float = 0.01
    accuracy_reference: float = 0.0

    def __post_init__(self) -> None:
        if min(self.latency_weight, self.size_weight, self.accuracy_weight) < 0:
            raise ValueError(
                f"latency_weight = {self.latency_weight}, size_weight = {self.size_weight} and accuracy_weight = "
                f"{self.accuracy_weight} must not be negative"
            )
        if self.accuracy_signal not in SIGNALS:
            raise ValueError(f"accuracy_signal {self.accuracy_signal!r}; choose among {', '.join(SIGNALS)}")
        if not 0.0 <= self.accuracy_tolerance < 1.0 or self.accuracy_scale <= 0:
            raise ValueError(
                f"accuracy_tolerance = {self.accuracy_tolerance} must lie in [0, 1) (0.01: one point) and "
                f"accuracy_scale = {self.accuracy_scale} must be positive"
            )

    def accuracy_term(self, acc: float) -> float:
        """The reward's accuracy factor: acc^accuracy_weight, or the within-tolerance step."""
        if self.accuracy_tolerance <= 0:
            return acc**self.accuracy_weight
        if self.accuracy_reference <= 0:
            raise ValueError(
                "accuracy_tolerance needs accuracy_reference: the search measures the unpruned network first"
            )
        shortfall = max(0.0, self.accuracy_reference - self.accuracy_tolerance - acc)
        return math.exp(-shortfall / self.accuracy_scale)

    def fidelity(self, val_accuracy: float, val_kl: float | None) -> float:
        """The reward's `acc` for a student with this validation top-1 and KL from its teacher."""
        if self.accuracy_signal == "top1":
            return val_accuracy
        if val_kl is None or not math.isfinite(val_kl):
            raise ValueError(f"accuracy_signal teacher-kl needs the student's KL from its teacher, got {val_kl}")
        return math.exp(-max(val_kl, 0.0))


def reward(
    acc: float, latency_ms: float, size_bytes: int, base_latency_ms: float, base_size_bytes: int, weights: RewardConfig
) -> float:
    if latency_ms <= 0 or size_bytes <= 0:
        raise ValueError(
            f"latency_ms = {latency_ms} and size_bytes = {size_bytes} must be positive; "
            "a latency that could not be predicted is an error, never 0 ms"
        )
    return (
        weights.accuracy_term(acc)
        * (base_latency_ms / latency_ms) ** weights.latency_weight
        * (base_size_bytes / size_bytes) ** weights.size_weight
    )


@dataclass(frozen=True)
class Constraint:
    """Keep `cost(policy) <= budget`. The cost should not fall as a keep-ratio grows (bisection
    then finds the largest feasible ratio); the budget is met either way."""

    name: str  # what is bounded, with its unit: "latency_ms", "params"
    budget: float
    cost: Callable[[Policy], float]


def params_constraint(
    count_params: Callable[[Policy], int], base_params: int, max_params_fraction: float
) -> Constraint:
    """A compression target: at most `max_params_fraction` of the baseline's parameters
    (`count_params`: e.g. `space.ParamCounter`, exact from channel counts)."""
    if not 0.0 < max_params_fraction <= 1.0:
        raise ValueError(
            f"max_params_fraction = {max_params_fraction}: give a fraction in (0, 1], "
            "e.g. 0.25 for 75% fewer parameters"
        )
    return Constraint("params", max_params_fraction * base_params, count_params)


def latency_constraint(latency_ms: Callable[[Policy], float], budget_ms: float) -> Constraint:
    """A latency budget; `latency_ms` predicts a policy's latency (e.g. from the LUT)."""
    if budget_ms <= 0:
        raise ValueError(f"latency budget {budget_ms} ms: give a positive number of milliseconds")
    return Constraint("latency_ms", budget_ms, latency_ms)


class Enforcer:
    """Bounds each step's (keep-ratio, precision) so that the finished policy meets the constraint."""

    resolution = 1e-4  # keep-ratios are searched (and policies rounded) to this step

    def __init__(self, space: SearchSpace, constraint: Constraint) -> None:
        self.space = space
        self.constraint = constraint
        n = len(space.layers)
        costs = {p: constraint.cost(space.policy([space.min_keep] * n, [p] * n)) for p in space.precisions}
        self.aggressive = min(space.precisions, key=lambda p: (costs[p], p.weight_bits))
        floor = costs[self.aggressive]
        if floor > constraint.budget:
            raise ValueError(
                f"the {constraint.name} budget {constraint.budget:g} cannot be met: even keep-ratio "
                f"{space.min_keep} and {self.aggressive} on every layer give {floor:g}; "
                "raise the budget or lower the minimum keep-ratio"
            )

    def _fits(self, keeps: Sequence[float], precisions: Sequence[Precision], keep: float, precision: Precision) -> bool:
        rest = len(self.space.layers) - len(keeps) - 1
        policy = self.space.policy(
            [*keeps, keep, *[self.space.min_keep] * rest], [*precisions, precision, *[self.aggressive] * rest]
        )
        return self.constraint.cost(policy) <= self.constraint.budget

    def bound(
        self, keeps: Sequence[float], precisions: Sequence[Precision], keep: float, precision: Precision, free: bool
    ) -> tuple[float, Precision]:
        """Layer t's action (t = len(keeps)) after the executed actions `keeps`, `precisions`:
        the proposed one if it fits, else the largest keep-ratio that fits at the proposed
        precision, else at the most aggressive one; a layer whose ratio is not `free` changes
        only its precision. (Ratio min_keep, or the group's, at the aggressive precision always
        fits: it is the policy the previous step was checked with.)"""
        if self._fits(keeps, precisions, keep, precision):
            return keep, precision
        lo = self.space.min_keep if free else keep
        for p in (precision, self.aggressive):
            if p is not precision and self._fits(keeps, precisions, keep, p):
                return keep, p  # the proposed ratio fits at the aggressive precision
            if self._fits(keeps, precisions, lo, p):
                return (self._largest_fit(keeps, precisions, lo, keep, p) if free else keep), p
        raise RuntimeError(
            f"the {self.constraint.name} cost is not deterministic: a policy that met the "
            "budget one step ago no longer does"
        )

    def _largest_fit(
        self, keeps: Sequence[float], precisions: Sequence[Precision], lo: float, hi: float, precision: Precision
    ) -> float:
        """Bisection between a fitting `lo` and a failing `hi`, on the resolution grid (from the grid
        point at or below `lo`, so an untested point above it is never returned)."""
        lo_i, hi_i = math.floor(lo / self.resolution + 1e-9), math.floor(hi / self.resolution + 1e-9)
        while hi_i - lo_i > 1:
            mid = (lo_i + hi_i) // 2
            if self._fits(keeps, precisions, mid * self.resolution, precision):
                lo_i = mid
            else:
                hi_i = mid
        return max(lo, round(lo_i * self.resolution, 4))
