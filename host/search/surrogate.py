"""A surrogate of the episode reward, so PPO can practise between real episodes (HiReLC's
surrogate rewards, with its Fisher sensitivity as the accuracy model's prior).

A real episode costs seconds (compress, fine-tune, validate, LUT lookup); the surrogate scores a
policy in well under a millisecond from three parts:
- size: exact, `size.effective_bytes` on the weight counts `ParamCounter` derives from channels;
- latency: the LUT's per-layer `LatencyEstimator`, plus what it misses, fitted on the real
  episodes: an offset and a cost per activation element crossing a precision boundary (int8
  activations to float, float to fp16: the runtime inserts conversions there);
- validation accuracy: a0 - c . features with c >= 0, fitted on the real episodes; the features
  are Fisher-weighted pruned fraction (and its square: pruning hurts faster as it deepens) and,
  per reduced precision, the Fisher-weighted share of layers at it.
The fit improves with every real episode; the real episodes alone decide which policy is best.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import lsq_linear
from torch import nn

from host.compress.policy import Policy
from host.compress.size import effective_bytes
from host.search.budget import LatencyEstimator
from host.search.reward import RewardConfig, reward
from host.search.space import ParamCounter, SearchSpace
from lut_store.precision import Precision


def layer_sensitivity(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], layer_names: list[str], max_batches: int = 4
) -> dict[str, float]:
    """Each layer's share of the model's Fisher saliency: the sum over its weights of
    (dL/dw * w)^2, the diagonal empirical Fisher (from mini-batch gradients) times w^2.
    Gradients are enabled on the layers' weights for the measurement (a teacher that distillation
    froze has none); no batch, or no saliency at all, is an error, never a made-up prior."""
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight for name in layer_names}
    saliency = {name: 0.0 for name in layer_names}
    was_training = model.training
    frozen = {name: not w.requires_grad for name, w in weights.items()}
    model.eval()
    seen = 0
    try:
        for w in weights.values():
            w.requires_grad_(True)
        with torch.enable_grad():
            for x, y, *_ in itertools.islice(batches, max_batches):
                model.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                seen += 1
                for name, w in weights.items():
                    if w.grad is None:
                        raise ValueError(f"layer sensitivity: layer {name} got no gradient (not in the forward pass)")
                    saliency[name] += float((w.grad * w.detach()).pow(2).sum())
    finally:
        model.zero_grad()
        for name, w in weights.items():
            w.requires_grad_(not frozen[name])
        model.train(was_training)
    total = sum(saliency.values())
    if not seen or not total > 0:
        raise ValueError(
            f"layer sensitivity: {seen} batch(es) gave a total Fisher saliency of {total}; the "
            "surrogate needs training batches on which the teacher has a gradient"
        )
    return {name: s / total for name, s in saliency.items()}


@dataclass(frozen=True)
class Observation:
    """One real episode, as the surrogate learns from it."""

    policy: Policy
    val_accuracy: float  # the reward's accuracy term: top-1 or exp(-KL), per `RewardConfig.accuracy_signal`
    latency_ms: float


@dataclass
class RewardSurrogate:
    """Predicts an episode's reward without compressing or fine-tuning (see the module docstring)."""

    space: SearchSpace
    counter: ParamCounter
    estimator: LatencyEstimator
    sensitivity: dict[str, float]
    base_latency_ms: float
    base_size_bytes: int
    weights: RewardConfig
    observations: list[Observation] = field(default_factory=list)
    _acc: np.ndarray | None = field(init=False, default=None)  # a0, then the feature coefficients
    _lat: np.ndarray = field(init=False, default_factory=lambda: np.zeros(2))  # offset ms, ms per element

    def __post_init__(self) -> None:
        self._reduced = sorted(
            (p for p in self.space.precisions if p is not Precision.FP32), key=lambda p: p.weight_bits
        )
        self._names = [layer.name for layer in self.space.layers]
        self._activations = {layer.name: layer.out_channels * layer.fmap for layer in self.space.layers}

    def accuracy_features(self, policy: Policy) -> np.ndarray:
        """Sums in the space's layer order: a policy read back from JSON may order its layers
        otherwise, and a resumed run must score it to the last bit."""
        kept = self.counter.kept_fraction(policy)
        pruned = sum(self.sensitivity[name] * (1.0 - kept[name]) for name in self._names)
        by_precision = [
            sum(self.sensitivity[name] for name in self._names if policy.layers[name].precision is p)
            for p in self._reduced
        ]
        return np.array([pruned, pruned**2, *by_precision])

    def boundary_elements(self, policy: Policy) -> float:
        """Activation elements that change number type between consecutive layers."""
        total = 0.0
        for prev, cur in zip(self._names, self._names[1:], strict=False):
            a, b = policy.layers[prev], policy.layers[cur]
            if a.precision.activations is not b.precision.activations:
                total += self._activations[prev] * a.keep_ratio
        return total

    def size_bytes(self, policy: Policy) -> int:
        """What `size_report` gives for the pruned model, without pruning it."""
        kept = self.counter.kept_weights(policy)
        return effective_bytes(self.counter(policy), ((policy.layers[n].precision, kept[n]) for n in self._names))

    @property
    def fitted(self) -> bool:
        return self._acc is not None

    def add(self, policy: Policy, val_accuracy: float, latency_ms: float) -> None:
        """A real episode's outcome; refits both models."""
        self.observations.append(Observation(policy, val_accuracy, latency_ms))
        self.fit()

    def fit(self) -> None:
        if not self.observations:
            return
        x = np.stack([self.accuracy_features(o.policy) for o in self.observations])
        y = np.array([o.val_accuracy for o in self.observations])
        # y = a0 - c . x with c >= 0: accuracy can only fall as compression grows.
        design = np.hstack([np.ones((len(y), 1)), -x])
        # A small ridge keeps the coefficients defined while there are fewer episodes than features.
        ridge = np.hstack([np.zeros((x.shape[1], 1)), 1e-3 * np.eye(x.shape[1])])
        fit = lsq_linear(
            np.vstack([design, ridge]),
            np.concatenate([y, np.zeros(x.shape[1])]),
            bounds=([-np.inf] + [0.0] * x.shape[1], [np.inf] * design.shape[1]),
        )
        self._acc = fit.x
        residual = np.array([o.latency_ms - self.estimator(o.policy) for o in self.observations])
        elements = np.array([self.boundary_elements(o.policy) for o in self.observations])
        lat = lsq_linear(
            np.stack([np.ones_like(elements), elements], axis=1), residual, bounds=([-np.inf, 0.0], [np.inf, np.inf])
        )
        self._lat = lat.x

    def accuracy(self, policy: Policy) -> float:
        if self._acc is None:
            raise RuntimeError("the surrogate has seen no real episode")
        a0, coef = self._acc[0], self._acc[1:]
        return float(np.clip(a0 - coef @ self.accuracy_features(policy), 0.0, 1.0))

    def latency_ms(self, policy: Policy) -> float:
        estimate = self.estimator(policy) + self._lat[0] + self._lat[1] * self.boundary_elements(policy)
        return max(estimate, 1e-3 * self.base_latency_ms)

    def reward(self, policy: Policy) -> float:
        return reward(
            max(self.accuracy(policy), 1e-6),
            self.latency_ms(policy),
            self.size_bytes(policy),
            self.base_latency_ms,
            self.base_size_bytes,
            self.weights,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "observations": [
                {"policy": o.policy.to_json(), "val_accuracy": o.val_accuracy, "latency_ms": o.latency_ms}
                for o in self.observations
            ],
            "sensitivity": dict(self.sensitivity),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The run's own observations and sensitivity (recomputed ones could differ in the last bit)."""
        self.observations = [
            Observation(Policy.from_json(o["policy"]), o["val_accuracy"], o["latency_ms"])
            for o in state["observations"]
        ]
        if "sensitivity" in state:
            self.sensitivity = dict(state["sensitivity"])
        self._acc = None
        self.fit()
