"""A compression policy: for every prunable layer a keep-ratio and a precision.

A small serialisable record (JSON), checked against the model it is applied to: errors name
the layer and the allowed range.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

BITS = (4, 8, 16, 32)
GRANULARITIES = ("per-channel",)


class PolicyError(ValueError):
    """A policy that does not fit the model; the message names the layer."""


@dataclass(frozen=True)
class LayerAction:
    """One layer's joint action. `bits`: 32 float, 16 float16, 8 int8 (W8A8), 4 int4 weights."""

    keep_ratio: float = 1.0
    bits: int = 32
    granularity: str = "per-channel"


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
            layers = {name: LayerAction(**action) for name, action in doc["layers"].items()}
            policy = cls(doc["model"], layers)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise PolicyError(
                f"not a policy document ({type(exc).__name__}: {exc}); expected "
                '{"model": NAME, "layers": {LAYER: {"keep_ratio": R, "bits": B}}}'
            ) from None
        for name, action in policy.layers.items():
            for field_name, kinds, what in (
                ("keep_ratio", (int, float), "a number"),
                ("bits", (int,), "an integer"),
                ("granularity", (str,), "a string"),
            ):
                value = getattr(action, field_name)
                if isinstance(value, bool) or not isinstance(value, kinds):
                    raise PolicyError(f"layer {name}: {field_name} = {value!r} must be {what}")
        return policy

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
        bits: int,
        overrides: Mapping[str, LayerAction] | None = None,
    ) -> Policy:
        layers = {name: LayerAction(keep_ratio, bits) for name in layer_names}
        layers.update(overrides or {})
        return cls(model, layers)


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
        if action.bits not in BITS:
            raise PolicyError(f"layer {name}: bits = {action.bits}; allowed: {list(BITS)}")
        if action.granularity not in GRANULARITIES:
            raise PolicyError(f"layer {name}: granularity {action.granularity!r}; allowed: {list(GRANULARITIES)}")
        if lim.group is None:
            if action.keep_ratio != 1.0:
                raise PolicyError(
                    f"layer {name}: keep_ratio = {action.keep_ratio}, but its width is fixed "
                    "(classifier output); allowed: 1.0"
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
