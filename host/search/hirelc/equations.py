"""HiReLC's equations as plain functions (numbers in, numbers out), each named by its number in the
paper. Where the paper fixes the form but not the constants (the accuracy term's breakpoints, the
budget term's decay, the tiers' targets), the constants are module-level and documented in
`docs/architecture.md`.

Notation: a kernel's retained-size fraction rho = (bits / 32) * keep (Eq. 21); a block's and the
model's are parameter-weighted means of their kernels'; the compression ratio CR = 1 / rho of the
whole model (Eq. 22). Accuracy drops are fractions (0.02: two points).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from host.compress.size import retained_fraction as retained_fraction  # Eq. (21), with the size accounting

STABILITY_WINDOW = 5  # rewards the stability term looks back over
BUDGET_DECAY = 5.0  # Eq. (27): exp(-BUDGET_DECAY * |deviation|); 0.61 at a deviation of 0.1
# Eq. (25): (drop / allowed drop, reward) breakpoints, linear between them, the last slope beyond.
ACCURACY_BREAKPOINTS = ((0.0, 1.0), (1.0, 0.5), (2.0, -0.5))
ACCURACY_FLOOR = -1.0
# Eq. (8): the HLA's five tiers as target retained-size fractions (2x, 3x, 4x, 6x, 8x compression).
TIER_TARGETS = (1 / 2, 1 / 3, 1 / 4, 1 / 6, 1 / 8)
STRATEGIES = ("auto", "pruning", "quantization")
# The sensitivity-aware correction after decoding: a block above HIGH gets one tier lighter, one
# below LOW one tier more aggressive.
SENSITIVITY_HIGH = 0.7
SENSITIVITY_LOW = 0.3


def weighted_fraction(params: Sequence[int], fractions: Sequence[float]) -> float:
    """A block's or the model's retained-size fraction: its kernels' weighted by FP32 parameters."""
    if len(params) != len(fractions) or not params or sum(params) <= 0:
        raise ValueError("one positive parameter count per fraction, at least one kernel")
    return sum(p * f for p, f in zip(params, fractions, strict=True)) / sum(params)


def compression_ratio(params: Sequence[int], fractions: Sequence[float]) -> float:
    """Eq. (22): CR = sum of FP32 parameters / sum of parameters times retained fractions."""
    return 1.0 / weighted_fraction(params, fractions)


def sensitivity_penalty(sensitivity: float, block_fraction: float) -> float:
    """Eq. (10): P = S_l * (1 - rho_l): compressing a sensitive block costs, an uncompressed one or
    an insensitive one costs nothing; in [0, 1)."""
    if not 0 <= sensitivity <= 1 or not 0 < block_fraction <= 1:
        raise ValueError(f"sensitivity {sensitivity} must lie in [0, 1] and rho {block_fraction} in (0, 1]")
    return sensitivity * (1.0 - block_fraction)


def accuracy_reward(drop: float, allowed_drop: float) -> float:
    """Eq. (25): piecewise linear and non-increasing in drop / allowed drop, 1 at no drop, 0.5 at the
    allowance, steeper beyond, floored at -1."""
    if allowed_drop <= 0:
        raise ValueError(f"allowed drop {allowed_drop} must be positive")
    x = max(drop / allowed_drop, 0.0)
    points = ACCURACY_BREAKPOINTS
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = points[-2], points[-1]
    return max(y1 + 2 * (y1 - y0) / (x1 - x0) * (x - x1), ACCURACY_FLOOR)


def compression_reward(block_fraction: float) -> float:
    """Eq. (26): 1 - rho_l, in [0, 1)."""
    return 1.0 - block_fraction


def budget_reward(block_fraction: float, target_fraction: float) -> float:
    """Eq. (27): exp(-k |rho_l - rho*_l|), 1 on the HLA's target."""
    return math.exp(-BUDGET_DECAY * abs(block_fraction - target_fraction))


def stability(window: Sequence[float]) -> float:
    """The stability term: the standard deviation of the last STABILITY_WINDOW rewards (0 with
    fewer than two)."""
    recent = list(window)[-STABILITY_WINDOW:]
    return statistics.pstdev(recent) if len(recent) > 1 else 0.0


@dataclass(frozen=True)
class BlockStep:
    """What a low-level reward reads of one candidate of one block."""

    drop: float  # estimated accuracy drop
    allowed_drop: float
    fraction: float  # the block's retained-size fraction
    target: float  # the HLA's target for the block
    sensitivity: float
    latency_gain: float = 0.0  # 1 - L / L_base of the model with the candidate, from the LUT


def lla_reward(
    weights: tuple[float, ...], step: BlockStep, history: Sequence[float], latency_weight: float = 0.0
) -> float:
    """Eq. (9) with the latency term: alpha R_acc + beta R_comp + gamma R_budget - delta sigma -
    P_sens + lambda (1 - L / L_base). `weights` = (alpha, beta, gamma, delta), one ensemble
    member's; `history` the episode's earlier rewards; latency_weight 0 is the paper's reward."""
    alpha, beta, gamma, delta = weights
    return (
        alpha * accuracy_reward(step.drop, step.allowed_drop)
        + beta * compression_reward(step.fraction)
        + gamma * budget_reward(step.fraction, step.target)
        - delta * stability(history)
        - sensitivity_penalty(step.sensitivity, step.fraction)
        + latency_weight * step.latency_gain
    )


def sensitivity_alignment(sensitivities: Sequence[float], targets: Sequence[float], global_target: float) -> float:
    """Eq. (11)'s sensitivity term: a conservative target (at or above the global one) on a block
    above SENSITIVITY_HIGH earns 2 S_l, an aggressive one (below it) on a block below
    SENSITIVITY_LOW earns 1 - S_l; the mean over blocks."""
    score = 0.0
    for s, rho in zip(sensitivities, targets, strict=True):
        if s > SENSITIVITY_HIGH and rho >= global_target:
            score += 2.0 * s
        elif s < SENSITIVITY_LOW and rho < global_target:
            score += 1.0 - s
    return score / len(targets)


def cycle_feedback(proposed: float, previous: float, previous_drop: float, allowed_drop: float, target: float) -> float:
    """Eq. (12): after a cycle over the accuracy budget, proposing yet more compression (a lower
    mean target than the previous realized fraction) costs 1 and relaxing earns 0.5; within the
    budget while storing more than the target, compressing further earns 0.5; otherwise 0."""
    if previous_drop > allowed_drop:
        return -1.0 if proposed < previous else 0.5
    if previous > target and proposed < previous:
        return 0.5
    return 0.0


def hla_reward(
    sensitivities: Sequence[float],
    targets: Sequence[float],
    params: Sequence[int],
    global_target: float,
    previous: float,
    previous_drop: float,
    allowed_drop: float,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
) -> float:
    """Eq. (11): -w1 std(rho*) + w2 alignment - w3 |mean rho* - rho_g| + w4 feedback (Eq. 12), the
    mean target weighted by parameters, the heterogeneity unweighted."""
    w1, w2, w3, w4 = weights
    mean = weighted_fraction(params, targets)
    return (
        -w1 * statistics.pstdev(targets)
        + w2 * sensitivity_alignment(sensitivities, targets, global_target)
        - w3 * abs(mean - global_target)
        + w4 * cycle_feedback(mean, previous, previous_drop, allowed_drop, global_target)
    )


def corrected_tier(tier: int, sensitivity: float) -> int:
    """The sensitivity-aware correction after decoding: one tier lighter above SENSITIVITY_HIGH,
    one more aggressive below SENSITIVITY_LOW, within the five tiers."""
    if sensitivity > SENSITIVITY_HIGH:
        tier -= 1
    elif sensitivity < SENSITIVITY_LOW:
        tier += 1
    return min(max(tier, 0), len(TIER_TARGETS) - 1)


def interpolate(index: int, levels: int, low: float, high: float) -> float:
    """Eqs. (6)-(7): action index i of K levels decoded between the active bounds."""
    if levels < 1 or not 0 <= index < levels:
        raise ValueError(f"index {index} outside 0..{levels - 1}")
    return low if levels == 1 else low + index / (levels - 1) * (high - low)


def vote(actions: Sequence[Sequence[int]], weights: Sequence[float], ordinal: Sequence[bool]) -> list[int]:
    """Eq. (16): the consensus of the members' actions, dimension by dimension: the weighted mean
    rounded for an ordinal dimension (bit and keep levels), the weighted plurality for a nominal
    one (type, granularity, strategy; a tie goes to the smaller index)."""
    if not actions or len(actions) != len(weights):
        raise ValueError("one weight per member, at least one member")
    total = sum(weights)
    if not total > 0 or min(weights) < 0:
        raise ValueError(f"vote weights {list(weights)} must be non-negative with a positive sum")
    consensus = []
    for d, is_ordinal in enumerate(ordinal):
        values = [a[d] for a in actions]
        if is_ordinal:
            mean = sum(w * v for w, v in zip(weights, values, strict=True)) / total
            consensus.append(int(math.floor(mean + 0.5)))
        else:
            tally: dict[int, float] = {}
            for w, v in zip(weights, values, strict=True):
                tally[v] = tally.get(v, 0.0) + w
            consensus.append(min(tally, key=lambda v: (-tally[v], v)))
    return consensus


def confidence_weights(mean_rewards: Sequence[float], temperature: float) -> list[float]:
    """Eq. (17): w_m = exp(r_m / tau) / sum_j exp(r_j / tau) over the members' recent mean rewards."""
    if temperature <= 0:
        raise ValueError(f"temperature {temperature} must be positive")
    top = max(mean_rewards)
    exps = [math.exp((r - top) / temperature) for r in mean_rewards]
    return [e / sum(exps) for e in exps]
