"""What the device's LUT tells the search before its first episode.

For every layer the latency estimator (host/search/budget.py) knows the kernel's latency at each
precision the device runs, unpruned and at the anchor keep-ratio. From it:

- **dominated choices are removed**: precision p is dropped at a layer when another precision q
  is as fast there at both keep-ratios (within 5%: closer is noise), at least as precise (as many
  weight bits or more), and, when the reward counts size, at least as small, and better in one
  of these. On a
  CPU provider int4 (dequantized every run) and fp16 (casts around fp32 kernels) are slower and
  less precise than fp32 or int8, so a latency search never tries them; on a device with fp16
  kernels they stay.
- **a speed feature per precision** (the fastest allowed latency over this precision's, 1 for
  the fastest) joins each layer's state, so controllers can prefer what the device runs fast;
  PPO starts from logits biased by it (`PPOConfig.prior_strength`).
"""

from __future__ import annotations

from dataclasses import replace

from host.search.budget import LatencyEstimator
from host.search.space import ParamCounter, SearchSpace
from lut_store.precision import Precision

TIE = 0.05  # latencies within 5% are equal: a measured CPU kernel varies by that much between runs


def _dominates(q: tuple[float, float, int], p: tuple[float, float, int], size_matters: bool) -> bool:
    """(ms at keep 1, ms at the anchor, weight bits) of q against p: q is as fast (within TIE),
    as precise and, when size matters, as small, and better in one of these."""
    as_fast = q[0] <= p[0] * (1 + TIE) and q[1] <= p[1] * (1 + TIE)
    faster = q[0] < p[0] * (1 - TIE) or q[1] < p[1] * (1 - TIE)
    as_small = q[2] <= p[2] or not size_matters
    better = faster or q[2] > p[2] or (size_matters and q[2] < p[2])
    return as_fast and q[2] >= p[2] and as_small and better


def lut_choices(
    space: SearchSpace, estimator: LatencyEstimator, counter: ParamCounter, size_matters: bool, anchor_keep: float = 0.5
) -> SearchSpace:
    """`space` with each layer's non-dominated precisions (fastest first) and speed features."""
    names = [layer.name for layer in space.layers]
    kept = counter.kept_fraction(space.policy([anchor_keep] * len(names), [Precision.FP32] * len(names)))
    allowed, speed = [], []
    for name in names:
        cost = {
            p: (
                estimator.full_ms[p][name],
                estimator.full_ms[p][name] * kept[name] ** estimator.exponent[p][name],
                p.weight_bits,
            )
            for p in space.precisions
        }
        keep = [p for p in space.precisions if not any(_dominates(cost[q], cost[p], size_matters) for q in cost)]
        keep.sort(key=lambda p: (cost[p][0], -p.weight_bits))
        allowed.append(tuple(keep))
        fastest = cost[keep[0]][0]
        speed.append(
            tuple(
                (1.0 if cost[p][0] <= fastest else fastest / cost[p][0]) if p in keep else 0.0 for p in space.precisions
            )
        )
    return replace(space, allowed=tuple(allowed), speed=tuple(speed))


def dropped(space: SearchSpace) -> dict[str, list[str]]:
    """Per layer, the precisions the LUT prior removed (for the run's record)."""
    if not space.allowed:
        return {}
    return {
        layer.name: [p.value for p in space.precisions if p not in allowed]
        for layer, allowed in zip(space.layers, space.allowed, strict=True)
        if len(allowed) < len(space.precisions)
    }
