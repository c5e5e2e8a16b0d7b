"""The search space: one joint action (keep-ratio, precision) per prunable layer, and the
paper's per-layer state the controller sees.

Layers of one residual group prune the same channels, so only the group's first layer (in
execution order) decides its keep-ratio; the others follow it (their ratio step is not free)
while every layer still picks its own precision. The classifier's width is fixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from host.compress.policy import LayerAction, LayerLimits, Policy
from host.compress.prune import (
    PRUNABLE_TYPES,
    attention_heads,
    classifier_of,
    kept_channels,
    kept_heads,
    layer_limits,
)
from lut_store.precision import Precision

KINDS = ("conv", "depthwise", "linear")


@dataclass(frozen=True)
class LayerInfo:
    """One prunable layer as the state describes it (execution order)."""

    name: str
    kind: str
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    fmap: int  # output height x width (1 for Linear)
    flops: int
    params: int
    group: str | None  # pruning group root; None: fixed width


@dataclass(frozen=True)
class SearchSpace:
    model: str
    layers: tuple[LayerInfo, ...]
    precisions: tuple[Precision, ...]  # the choices at every layer, in the order the controllers index them
    min_keep: float = 0.2
    max_keep: float = 0.9
    latency_share: tuple[float, ...] = ()  # per layer, from the baseline's LUT prediction
    # Per layer, from the LUT (host/search/prior.py); empty: every precision everywhere, no speed feature.
    allowed: tuple[tuple[Precision, ...], ...] = ()  # the non-dominated precisions, fastest first
    speed: tuple[
        tuple[float, ...], ...
    ] = ()  # per precision: the fastest allowed latency over its own (0: not allowed)

    def __post_init__(self) -> None:
        if not self.precisions:
            raise ValueError(f"no precisions to choose from: give at least one of {', '.join(Precision)}")
        object.__setattr__(self, "precisions", tuple(Precision(p) for p in self.precisions))
        if not 0.0 < self.min_keep <= self.max_keep <= 1.0:
            raise ValueError(f"keep-ratio range {self.min_keep}..{self.max_keep} must lie in (0, 1]")
        if self.allowed and (
            len(self.allowed) != len(self.layers) or any(not a or set(a) - set(self.precisions) for a in self.allowed)
        ):
            raise ValueError("allowed: one non-empty subset of the space's precisions per layer")
        if self.speed and (
            len(self.speed) != len(self.layers) or {len(s) for s in self.speed} != {len(self.precisions)}
        ):
            raise ValueError("speed: one value per precision per layer")

    @property
    def state_dim(self) -> int:
        return 11 + len(KINDS) + len(self.precisions) * (2 if self.speed else 1)

    def allowed_at(self, t: int) -> tuple[Precision, ...]:
        """The precisions layer t may take, fastest first when the LUT ordered them."""
        return self.allowed[t] if self.allowed else self.precisions

    def mask(self, t: int) -> np.ndarray:
        """Which of `precisions` layer t may take."""
        allowed = self.allowed_at(t)
        return np.array([p in allowed for p in self.precisions])

    def legal(self, t: int, precision: Precision) -> Precision:
        """`precision`, or layer t's fastest allowed one when the LUT ruled it out there."""
        allowed = self.allowed_at(t)
        return precision if precision in allowed else allowed[0]

    def ratio_free(self) -> list[bool]:
        """Whether each layer's step decides a keep-ratio (the first layer of its group)."""
        seen: set[str] = set()
        free = []
        for layer in self.layers:
            free.append(layer.group is not None and layer.group not in seen)
            if layer.group is not None:
                seen.add(layer.group)
        return free

    def state(self, t: int, prev_keep: float, prev_precision: Precision | None) -> np.ndarray:
        """Layer t's features in ~[0, 1]: index, kind, kernel, stride, channels, feature map,
        shares of FLOPs, parameters and latency, the previous action, and the LUT's speed of each
        precision at this layer."""
        layer = self.layers[t]
        n = len(self.layers)
        max_ch = max(max(x.in_channels, x.out_channels) for x in self.layers)
        max_fmap = max(x.fmap for x in self.layers)
        flops = sum(x.flops for x in self.layers) or 1
        params = sum(x.params for x in self.layers) or 1
        kind = [1.0 if layer.kind == k else 0.0 for k in KINDS]
        prev = [1.0 if prev_precision is p else 0.0 for p in self.precisions]
        speed = self.speed[t] if self.speed else ()
        latency = self.latency_share[t] if self.latency_share else 0.0
        return np.array(
            [
                t / max(n - 1, 1),
                layer.kernel / 7.0,
                layer.stride / 2.0,
                layer.in_channels / max_ch,
                layer.out_channels / max_ch,
                layer.fmap / max_fmap,
                layer.flops / flops,
                layer.params / params,
                latency,
                float(layer.group is None),
                prev_keep,
                *kind,
                *prev,
                *speed,  # last, with a LUT prior: PPO reads its prior from here
            ],
            dtype=np.float32,
        )

    def policy(self, keeps: Sequence[float], precisions: Sequence[Precision]) -> Policy:
        """The policy of one episode's actions (follower layers take their group's ratio)."""
        group_keep: dict[str, float] = {}
        layers = {}
        for layer, keep, precision in zip(self.layers, keeps, precisions, strict=False):
            if layer.group is None:
                ratio = 1.0
            else:
                ratio = group_keep.setdefault(layer.group, round(float(keep), 4))
            layers[layer.name] = LayerAction(ratio, precision)
        return Policy(self.model, layers)


def describe_layers(
    model: nn.Module, example: torch.Tensor, limits: Sequence[LayerLimits] | None = None
) -> tuple[LayerInfo, ...]:
    """Conv2d/Linear layers in execution order with their shapes, FLOPs and pruning groups."""
    limits = list(limits) if limits is not None else layer_limits(model, example)
    group = {lim.name: lim.group for lim in limits}
    names = {m: n for n, m in model.named_modules()}
    seen: list[LayerInfo] = []
    hooks = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        name = names[module]
        if any(x.name == name for x in seen):
            return
        if isinstance(module, nn.Conv2d):
            k, s = module.kernel_size[0], module.stride[0]
            fmap = int(out.shape[2] * out.shape[3])
            depthwise = module.groups > 1 and module.groups == module.in_channels
            flops = fmap * module.out_channels * module.in_channels // module.groups * k * k
            seen.append(
                LayerInfo(
                    name,
                    "depthwise" if depthwise else "conv",
                    k,
                    s,
                    module.in_channels,
                    module.out_channels,
                    fmap,
                    flops,
                    module.weight.numel(),
                    group.get(name),
                )
            )
        else:
            seen.append(
                LayerInfo(
                    name,
                    "linear",
                    1,
                    1,
                    module.in_features,
                    module.out_features,
                    1,
                    module.in_features * module.out_features,
                    module.weight.numel(),
                    group.get(name),
                )
            )

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and names[module] in group:
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return tuple(seen)


@dataclass(frozen=True)
class _ParamTerm:
    """count = factor * width(out_group) * width(in_group) / groups; a width is the full one when
    its group is None (`groups`: a grouped convolution's)."""

    factor: int
    out_group: str | None
    out_channels: int
    in_group: str | None
    in_channels: int
    groups: int = 1
    # Inputs from several groups (behind a concatenation): (group, channels) each; the rest is fixed.
    in_parts: tuple[tuple[str, int], ...] = ()


def _channel_groups(
    model: nn.Module, example: torch.Tensor, names: dict[nn.Module, str]
) -> tuple[dict[nn.Module, str], dict[nn.Module, dict[str, int]], dict[int, tuple[str, int]]]:
    """Torch-Pruning's groups as the root each module's output channels prune with, the roots its
    input channels prune with (several behind a concatenation) and how many channels each, and
    (by id) the root and axis of each parameter outside a layer (a ViT's class token)."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    out_group: dict[nn.Module, str] = {}
    in_parts: dict[nn.Module, dict[str, int]] = {}
    roots: dict[int, str] = {}
    groups = graph.get_all_groups(ignored_layers=[classifier_of(model)], root_module_types=list(PRUNABLE_TYPES))
    for group in groups:
        root = names[group[0].dep.target.module]
        for dep, idxs in group:
            if dep.target.type == tp.ops.OPTYPE.PARAMETER:
                roots.setdefault(id(dep.target.module), root)
            elif graph.is_out_channel_pruning_fn(dep.handler):
                out_group.setdefault(dep.target.module, root)
            else:
                in_parts.setdefault(dep.target.module, {}).setdefault(root, len(idxs))
    params = {id(p): (roots[id(p)], dim) for p, dim in graph.unwrapped_parameters if id(p) in roots}
    return out_group, in_parts, params


def _layer_terms(module: nn.Module, out_g: str | None, in_g: str | None) -> list[_ParamTerm] | None:
    """A layer's parameter terms, its weight's first; None for a module that is not a layer."""
    if isinstance(module, nn.Conv2d):
        k = module.weight[0, 0].numel()
        if module.groups == 1:
            terms = [_ParamTerm(k, out_g, module.out_channels, in_g, module.in_channels)]
        elif module.groups == module.out_channels:  # depthwise: each output sees its own input
            terms = [_ParamTerm(k * (module.in_channels // module.groups), out_g, module.out_channels, None, 1)]
        else:  # grouped: each output sees its group's inputs
            terms = [_ParamTerm(k, out_g, module.out_channels, in_g, module.in_channels, module.groups)]
    elif isinstance(module, nn.Linear):
        terms = [_ParamTerm(1, out_g, module.out_features, in_g, module.in_features)]
    elif isinstance(module, nn.BatchNorm2d):
        return [_ParamTerm(2 if module.affine else 0, out_g, module.num_features, None, 1)]
    elif isinstance(module, nn.LayerNorm):  # over the embedding: it prunes with its group
        return [_ParamTerm(len(list(module.parameters(recurse=False))), out_g, module.normalized_shape[-1], None, 1)]
    else:
        return None
    if module.bias is not None:
        terms.append(_ParamTerm(1, out_g, module.bias.numel(), None, 1))
    return terms


class ParamCounter:
    """The parameter count `prune` (same `round_to`) would leave for a policy, computed from
    channel counts alone: microseconds per policy, so constraints can bisect on it."""

    def __init__(self, model: nn.Module, example: torch.Tensor, round_to: int = 8) -> None:
        self.round_to = round_to
        # A group's ratio is its member layers' (the group is keyed by its Torch-Pruning root).
        self.group_of = {lim.name: lim.group for lim in layer_limits(model, example) if lim.group is not None}
        self.heads = {name: attention.num_heads for name, attention in attention_heads(model).items()}
        names = {m: n for n, m in model.named_modules()}
        out_group, in_parts, param_group = _channel_groups(model, example, names)
        self.terms: list[_ParamTerm] = []
        self.layer_terms: dict[str, _ParamTerm] = {}  # each Conv2d/Linear's weight term, by module name
        self.fixed = 0
        for module in model.modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            parts = in_parts.get(module, {})
            terms = _layer_terms(module, out_group.get(module), next(iter(parts)) if len(parts) == 1 else None)
            if len(parts) > 1 and terms is not None:
                terms[0] = dataclasses.replace(terms[0], in_parts=tuple(parts.items()))
            if terms is None:  # parameters outside layers: pruned along one axis with their group, or fixed
                for p in own:
                    if id(p) in param_group:
                        group, dim = param_group[id(p)]
                        self.terms.append(_ParamTerm(p.numel() // p.shape[dim], group, p.shape[dim], None, 1))
                    else:
                        self.fixed += p.numel()
                continue
            if isinstance(module, PRUNABLE_TYPES):
                self.layer_terms[names[module]] = terms[0]
            self.terms += terms

    def _kept(self, keep: dict[str, float], term: _ParamTerm) -> int:
        def width(group: str | None, channels: int) -> int:
            if group is None:
                return channels
            if group in self.heads:  # an attention's qkv group keeps whole heads
                heads = self.heads[group]
                return channels // heads * kept_heads(heads, keep.get(group, 1.0))
            return kept_channels(channels, keep.get(group, 1.0), self.round_to)

        out, into = width(term.out_group, term.out_channels), width(term.in_group, term.in_channels)
        if term.in_parts:  # each part by its own group's ratio, the rest (if any) whole
            covered = sum(c for _, c in term.in_parts)
            into = sum(width(g, c) for g, c in term.in_parts) + term.in_channels - covered
        return term.factor * out * into // term.groups

    def _group_keep(self, policy: Policy) -> dict[str, float]:
        return {group: policy.layers[name].keep_ratio for name, group in self.group_of.items()}

    def __call__(self, policy: Policy) -> int:
        keep = self._group_keep(policy)
        return self.fixed + sum(self._kept(keep, t) for t in self.terms)

    def kept_weights(self, policy: Policy) -> dict[str, int]:
        """Per Conv2d/Linear layer, the weights `prune` would leave it."""
        keep = self._group_keep(policy)
        return {name: self._kept(keep, t) for name, t in self.layer_terms.items()}

    def kept_fraction(self, policy: Policy) -> dict[str, float]:
        """Per Conv2d/Linear layer, the fraction of its weights (and so of its multiply-adds) kept."""
        kept = self.kept_weights(policy)
        return {
            name: kept[name] * t.groups / (t.factor * t.out_channels * t.in_channels)
            for name, t in self.layer_terms.items()
        }
