"""A search's optional constraint from its config: a parameter target (exact, from channel
counts) or a latency budget (estimated from the device's LUT).

AMC-style bounding bisects on the constraint's cost for every layer of every episode, so the
cost must take microseconds, not the second a real export and LUT lookup take. The latency
estimate: each layer's kernel latency at its precision, a power law in the fraction of its
multiply-adds the policy keeps, fitted through two LUT predictions per precision (the model with
that precision everywhere, unpruned and at keep 0.5; once per search), plus the kernels that are
no layer's (pooling, ...).
It misses what a real candidate adds (conversions between layers of different precisions); the
episode's recorded latency is always the LUT's prediction of the real candidate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from host.compress.policy import Policy
from host.latency.predict import Prediction
from host.search.reward import Constraint, latency_constraint, params_constraint
from host.search.space import ParamCounter, SearchSpace
from host.workbench import Workbench
from lut_store.precision import Precision


def latency_shares(space: SearchSpace, prediction: Prediction, layer_nodes: Mapping[str, str]) -> SearchSpace:
    """`space` with each layer's share of the model's predicted latency (a state feature); none
    when the runtime elided every kernel (0 ms)."""
    ms = prediction.layer_latency_ms(layer_nodes)
    shares = (
        tuple(ms[layer.name] / prediction.latency_ms for layer in space.layers) if prediction.latency_ms > 0 else ()
    )
    return replace(space, latency_share=shares)


@dataclass(frozen=True)
class LatencyEstimator:
    """A policy's latency in ms from per-layer LUT latencies (see the module docstring)."""

    counter: ParamCounter
    full_ms: Mapping[Precision, Mapping[str, float]]  # precision -> layer -> its kernel's ms at keep 1.0
    exponent: Mapping[Precision, Mapping[str, float]]  # precision -> layer -> a in ms = full_ms * kept_fraction ** a
    other_ms: float  # kernels that belong to no layer, in the FP32 model

    def __call__(self, policy: Policy) -> float:
        kept = self.counter.kept_fraction(policy)
        return self.other_ms + sum(
            self.full_ms[action.precision][name] * kept[name] ** self.exponent[action.precision][name]
            for name, action in sorted(policy.layers.items())
        )  # in any JSON order


def latency_estimator(
    space: SearchSpace, counter: ParamCounter, bench: Workbench, workdir: Path, anchor_keep: float = 0.5
) -> LatencyEstimator:
    """Predict the model at each precision of the space, unpruned and at `anchor_keep` (profiling
    what the LUT lacks); each layer's latency follows a power of its kept multiply-adds through
    the two points (small kernels lose efficiency: latency is rarely proportional)."""
    names = [layer.name for layer in space.layers]
    half = space.policy([anchor_keep] * len(names), [Precision.FP32] * len(names))
    half_kept = counter.kept_fraction(half)
    full_ms: dict[Precision, dict[str, float]] = {}
    exponent: dict[Precision, dict[str, float]] = {}
    other_ms = 0.0
    for precision in [p for p in Precision if p in space.precisions or p is Precision.FP32]:
        measured = {}
        for keep in (1.0, anchor_keep):
            policy = space.policy([keep] * len(names), [precision] * len(names))
            path = workdir / f"anchor_{precision}_keep{keep}.onnx"
            exported = bench.export(bench.variant(policy), policy, path)
            prediction = bench.predict(exported)
            measured[keep] = prediction.layer_latency_ms(exported.layer_nodes)
            if precision is Precision.FP32 and keep == 1.0:
                other_ms = prediction.latency_ms - sum(measured[keep].values())
        full_ms[precision] = measured[1.0]
        # Never below 0: a kernel does not get slower as it loses channels; a pruned anchor
        # measured slower is noise, or (microsecond models) the run's fixed cost that the agent's
        # scale factor spreads over fewer kernel-microseconds. 0 ms: an elided kernel.
        exponent[precision] = {
            name: (
                max(math.log(measured[anchor_keep][name] / measured[1.0][name]) / math.log(half_kept[name]), 0.0)
                if 0 < half_kept[name] < 1 and measured[anchor_keep][name] > 0 and measured[1.0][name] > 0
                else 1.0
            )
            for name in names
        }
    return LatencyEstimator(counter, full_ms, exponent, other_ms)


def search_constraint(
    max_params_fraction: float,
    latency_budget_ms: float,
    counter: ParamCounter,
    base_params: int,
    estimator: LatencyEstimator | None,
) -> Constraint | None:
    """The config's constraint: at most `max_params_fraction` of the parameters, or a latency
    budget on `estimator`; None when neither is set (0)."""
    if max_params_fraction:
        return params_constraint(counter, base_params, max_params_fraction)
    if latency_budget_ms:
        if estimator is None:
            raise ValueError("a latency budget needs the LUT's latency estimator")
        return latency_constraint(estimator, latency_budget_ms)
    return None
