"""A compression policy: for every prunable layer a keep-ratio and a precision.

A small serialisable record (JSON), checked against the model it is applied to: errors name
the layer and the allowed range.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lut_store.precision import Precision

# How a layer's weights are quantized (HiReLC's four, in its order: its surrogate reads index / 3):
# uniform: one max-abs scale for the tensor; log: powers of two of a max-abs scale, sign kept;
# per-channel: a max-abs scale per output channel; learned: per-channel scales trained with the
# weights (sign-magnitude levels, +-(2^(b-1) - 1)).
GRANULARITIES = ("uniform", "log", "per-channel", "learned")
DEFAULT_GRANULARITY = "per-channel"
_QUANTIZED = {
    Precision.INT8: ("uniform", "per-channel", "learned"),  # QLinearConv needs a linear grid
    Precision.INT4W: GRANULARITIES,  # weight-only: a log grid exports as a codebook
    Precision.FP8: ("uniform", "per-channel"),  # a max-abs scale onto E4M3's own (float) grid
}


def granularities_of(precision: Precision) -> tuple[str, ...]:
    """The granularities a precision exports; fp32, fp16 and bf16 quantize no weight and take only
    the default."""
    return _QUANTIZED.get(precision, (DEFAULT_GRANULARITY,))


def quantizes_weights(precision: Precision) -> bool:
    """Whether a layer at `precision` has a weight quantizer (a scale, a granularity)."""
    return precision in _QUANTIZED


class PolicyError(ValueError):
    """A policy that does not fit the model; the message names the layer."""


@dataclass(frozen=True)
class LayerAction:
    """One layer's joint action: the share of its output channels kept and its precision."""

    keep_ratio: float = 1.0
    precision: Precision = Precision.FP32
    granularity: str = DEFAULT_GRANULARITY


@dataclass(frozen=True)
class Policy:
    model: str
    layers: dict[str, LayerAction] = field(default_factory=dict)

    def to_json(self) -> str:
        """Layers in the policy's order (a model's execution order, as the search writes them)."""
        return json.dumps({"model": self.model, "layers": {k: asdict(v) for k, v in self.layers.items()}}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            doc = json.loads(text)
            for name, action in doc["layers"].items():
                _refuse_bits(name, action)
            layers = {name: LayerAction(**action) for name, action in doc["layers"].items()}
            policy = cls(doc["model"], layers)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise PolicyError(
                f"not a policy document ({type(exc).__name__}: {exc}); expected "
                '{"model": NAME, "layers": {LAYER: {"keep_ratio": R, "precision": P}}}'
            ) from None
        layers = {}
        for name, action in policy.layers.items():
            for field_name, kinds, what in (
                ("keep_ratio", (int, float), "a number"),
                ("precision", (str,), "a string"),
                ("granularity", (str,), "a string"),
            ):
                value = getattr(action, field_name)
                if isinstance(value, bool) or not isinstance(value, kinds):
                    raise PolicyError(f"layer {name}: {field_name} = {value!r} must be {what}")
            try:
                layers[name] = replace(action, precision=Precision(action.precision))
            except ValueError as exc:
                raise PolicyError(f"layer {name}: {exc}") from None
        return cls(policy.model, layers)

    @classmethod
    def load(cls, path: Path) -> Policy:
        try:
            return cls.from_json(Path(path).read_text())
        except OSError as exc:
            raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from None

    @classmethod
    def uniform(
        cls,
        model: str,
        layer_names: Sequence[str],
        keep_ratio: float,
        precision: Precision,
        overrides: Mapping[str, LayerAction] | None = None,
    ) -> Policy:
        layers = {name: LayerAction(keep_ratio, precision) for name in layer_names}
        layers.update(overrides or {})
        return cls(model, layers)


def _refuse_bits(layer: str, action: Any) -> None:
    """Policies name precisions; one written with the old `"bits": B` says what to write instead."""
    if isinstance(action, Mapping) and "bits" in action:
        named = {p.weight_bits: p.value for p in reversed(Precision)}.get(action["bits"])  # 16: fp16
        instead = f'"precision": "{named}"' if named else f'"precision": one of {", ".join(Precision)}'
        raise PolicyError(f'layer {layer}: "bits": {action["bits"]!r} is the old form; write {instead} instead')


@dataclass(frozen=True)
class LayerLimits:
    """What one layer of one model allows: its name, channels and the pruning group it is in."""

    name: str
    out_channels: int
    group: str | None  # root layer of the group whose output channels prune together; None: fixed width
    min_keep_ratio: float = 0.1
    max_keep_ratio: float = 1.0


def validate(policy: Policy, model_name: str, limits: Sequence[LayerLimits]) -> None:
    """Raise PolicyError naming the first problem: another model, an unknown or missing layer, an
    out-of-range value, or coupled layers (one residual group) with different keep-ratios."""
    if policy.model != model_name:
        raise PolicyError(f"the policy is for model {policy.model!r}, not {model_name!r}")
    by_name = {lim.name: lim for lim in limits}
    unknown = sorted(set(policy.layers) - set(by_name))
    if unknown:
        raise PolicyError(f"unknown layers {unknown[:5]} for {model_name}; its layers are: {', '.join(by_name)}")
    missing = sorted(set(by_name) - set(policy.layers))
    if missing:
        raise PolicyError(f"the policy has no action for layers {missing[:5]} of {model_name}")
    group_ratio: dict[str, tuple[str, float]] = {}
    for name, action in policy.layers.items():
        lim = by_name[name]
        if not isinstance(action.precision, Precision):
            raise PolicyError(
                f"layer {name}: precision = {action.precision!r} is not a Precision; allowed: {', '.join(Precision)}"
            )
        allowed = granularities_of(action.precision)
        if action.granularity not in allowed:
            raise PolicyError(
                f"layer {name}: granularity {action.granularity!r} at {action.precision}; "
                f"allowed there: {list(allowed)}"
            )
        if lim.group is None:
            if action.keep_ratio != 1.0:
                raise PolicyError(
                    f"layer {name}: keep_ratio = {action.keep_ratio}, but its width is fixed (the classifier's "
                    "output, or a layer that cannot be pruned safely, e.g. through a grouped convolution); "
                    "allowed: 1.0"
                )
            continue
        if not lim.min_keep_ratio <= action.keep_ratio <= lim.max_keep_ratio:
            raise PolicyError(
                f"layer {name}: keep_ratio = {action.keep_ratio}; allowed: {lim.min_keep_ratio}..{lim.max_keep_ratio}"
            )
        first = group_ratio.setdefault(lim.group, (name, action.keep_ratio))
        if first[1] != action.keep_ratio:
            raise PolicyError(
                f"layers {first[0]} and {name} prune the same channels (a residual add, or a depthwise "
                "conv and the conv feeding it); "
                f"give them the same keep_ratio, not {first[1]} and {action.keep_ratio}"
            )
