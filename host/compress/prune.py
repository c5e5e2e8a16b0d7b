"""Physical channel pruning through Torch-Pruning's dependency graph.

Channels are ranked by L1 norm (as in the paper), removed from every coupled layer at once
(residual groups stay consistent) and the kept counts are rounded to a multiple of `round_to`.
The pruning history, by module name, replays the same structure on a fresh model, so a
pruned checkpoint can be reloaded.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import torch
import torch_pruning as tp
from torch import nn

from host.compress.policy import LayerLimits, Policy

log = structlog.get_logger(__name__)

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def classifier_of(model: nn.Module) -> nn.Module:
    """The last Linear layer: its output width is the number of classes and never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear classifier")
    return linears[-1]


def _graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    # Parameters outside any layer (a ViT's class token and position embedding) prune along
    # their last non-singleton axis, the embedding's: Torch-Pruning's default, not worth a warning.
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)


def _grouped_conv(module: nn.Module) -> bool:
    """A grouped convolution that is not depthwise."""
    return isinstance(module, nn.Conv2d) and 1 < module.groups != module.out_channels


# Operations that move channels to other positions: pruned through, they would misalign the
# channel groups of a grouped convolution.
_REARRANGING = frozenset(
    {
        tp.ops.OPTYPE.CONCAT,
        tp.ops.OPTYPE.SPLIT,
        tp.ops.OPTYPE.SLICE,
        tp.ops.OPTYPE.RESHAPE,
        tp.ops.OPTYPE.UNBIND,
        tp.ops.OPTYPE.EXPAND,
    }
)


def _width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _metapruner(model: nn.Module, example_inputs: torch.Tensor, ratios: dict[nn.Module, float]) -> Any:
    """Torch-Pruning's pruner for `ratios` (group root -> share of channels to remove). The ratios
    give exact kept counts, already rounded by `kept_channels`: Torch-Pruning's own rounding
    would apply per channel group of a grouped convolution and refuse to prune it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")  # see _graph
        return tp.pruner.MetaPruner(
            model,
            example_inputs,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=0.0,
            pruning_ratio_dict=ratios,
            ignored_layers=[classifier_of(model)],
        )


def _prunes_safely(model: nn.Module, example_inputs: torch.Tensor, root: str, round_to: int = 8) -> bool:
    """Whether the group rooted at `root` prunes to half its width, alone, on a copy of the model,
    and the copy still runs: how groups through a grouped convolution are vetted."""
    trial = copy.deepcopy(model)
    module = trial.get_submodule(root)
    width = _width(module)
    kept = kept_channels(width, 0.5, round_to)
    try:
        _metapruner(trial, example_inputs, {module: 1.0 - (kept + 0.5) / width}).step()
        with torch.no_grad():
            trial.eval()(example_inputs)
    except Exception as exc:  # Torch-Pruning's index errors, shape errors in the forward
        log.info("prune.kept_whole", group=root, reason=f"{type(exc).__name__}: {str(exc)[:120]}")
        return False
    if _width(module) != kept:
        log.info("prune.kept_whole", group=root, reason="the dependency graph left it unpruned")
    return _width(module) == kept


def layer_limits(model: nn.Module, example_inputs: torch.Tensor, min_keep_ratio: float = 0.1) -> list[LayerLimits]:
    """Every Conv2d/Linear by name, with the root of the group its output channels prune with;
    None (a fixed width) for the classifier and for groups that cannot be pruned safely. A group
    through a grouped (not depthwise) convolution is kept whole (and logged) when its channels
    also pass a concatenation, split or reshape (a channel shuffle): the convolution's channel
    groups would then be cut out of line. Otherwise it is pruned once on a copy first, and kept
    whole unless that works."""
    names = {m: n for n, m in model.named_modules()}
    head = classifier_of(model)
    graph = _graph(model, example_inputs)
    group_of: dict[str, str] = {}
    for group in graph.get_all_groups(ignored_layers=[head], root_module_types=list(PRUNABLE_TYPES)):
        root = names[group[0].dep.target.module]
        if any(_grouped_conv(dep.target.module) for dep, _ in group):
            rearranged = {dep.target.type for dep, _ in group} & _REARRANGING
            if rearranged:
                kinds = sorted(t.name.lower() for t in rearranged)
                log.info("prune.kept_whole", group=root, reason=f"a grouped convolution behind {', '.join(kinds)}")
                continue
            if not _prunes_safely(model, example_inputs, root):
                continue
        for dep, _ in group:
            module = dep.target.module
            if isinstance(module, PRUNABLE_TYPES) and graph.is_out_channel_pruning_fn(dep.handler):
                group_of.setdefault(names[module], root)  # depthwise convs too: they prune with their group
    limits = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            group = None if module is head else group_of.get(name)
            limits.append(LayerLimits(name, width, group, min_keep_ratio))
    return limits


def in_execution_order(model: nn.Module, example_inputs: torch.Tensor, names: Sequence[str]) -> list[str]:
    """`names` (modules of `model`) in the order a forward calls them first; those it never calls
    last, in the given order."""
    wanted = set(names)
    order: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda m, args, name=name: order.append(name))
        for name, module in model.named_modules()
        if name in wanted
    ]
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    finally:
        for h in handles:
            h.remove()
    seen = list(dict.fromkeys(order))
    return seen + [n for n in names if n not in set(seen)]


def kept_channels(channels: int, keep_ratio: float, round_to: int) -> int:
    """Channels `prune` keeps of a group of `channels` at `keep_ratio`: rounded down to a
    multiple of `round_to`, but never fewer than `round_to` (or 1) and never more than all."""
    if keep_ratio >= 1.0:
        return channels
    step = max(round_to, 1)
    kept = int(channels * keep_ratio + 1e-9)
    return min(channels, max(kept - kept % step, step))


def attention_heads(model: nn.Module) -> dict[str, nn.Module]:
    """The multi-head attention modules by the name of their `qkv` layer: modules with an integer
    `num_heads`, a Linear `qkv` (queries, keys and values of every head, in that order) and a
    Linear `proj` over the heads' outputs (the timm/DeiT layout). Their `qkv` prunes whole heads."""
    found = {}
    for name, module in model.named_modules():
        heads, qkv, proj = (
            getattr(module, "num_heads", None),
            getattr(module, "qkv", None),
            getattr(module, "proj", None),
        )
        if (
            isinstance(heads, int)
            and isinstance(qkv, nn.Linear)
            and isinstance(proj, nn.Linear)
            and qkv.out_features % (3 * heads) == 0
            and proj.in_features == qkv.out_features // 3
        ):
            found[f"{name}.qkv" if name else "qkv"] = module
    return found


def kept_heads(heads: int, keep_ratio: float) -> int:
    """Heads `prune` keeps of `heads` at `keep_ratio`: rounded down, at least one."""
    return heads if keep_ratio >= 1.0 else max(1, int(heads * keep_ratio + 1e-9))


def _prune_heads(attention: nn.Module, keep: int) -> None:
    """Keep the `keep` heads of largest L1 weight (their q, k and v rows and proj columns)."""
    heads, qkv, proj = attention.num_heads, attention.qkv, attention.proj
    dim = qkv.out_features // (3 * heads)
    weight = qkv.weight.detach().view(3, heads, dim, -1).abs().sum((0, 2, 3))
    weight += proj.weight.detach().view(proj.out_features, heads, dim).abs().sum((0, 2))
    kept = torch.topk(weight, keep).indices.sort().values
    per_head = (kept[:, None] * dim + torch.arange(dim)[None, :]).reshape(-1)
    rows = torch.cat([s * heads * dim + per_head for s in range(3)])
    new_qkv = nn.Linear(qkv.in_features, len(rows), bias=qkv.bias is not None)
    new_proj = nn.Linear(len(per_head), proj.out_features, bias=proj.bias is not None)
    with torch.no_grad():
        new_qkv.weight.copy_(qkv.weight[rows])
        new_proj.weight.copy_(proj.weight[:, per_head])
        if qkv.bias is not None:
            new_qkv.bias.copy_(qkv.bias[rows])
        if proj.bias is not None:
            new_proj.bias.copy_(proj.bias)
    attention.qkv, attention.proj, attention.num_heads = new_qkv, new_proj, keep


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module
    history: list[Any]
    params_before: int
    params_after: int
    kept_whole: tuple[str, ...] = ()  # groups the policy prunes that could not be pruned safely


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune(model: nn.Module, policy: Policy, example_inputs: torch.Tensor, round_to: int = 8) -> PruneResult:
    """Remove channels in place per the policy's keep-ratios (policy already validated); an
    attention's `qkv` keep-ratio removes whole heads."""
    limits = {lim.name: lim for lim in layer_limits(model, example_inputs)}
    before = count_params(model)
    attentions = attention_heads(model)
    for name, attention in attentions.items():
        keep = kept_heads(attention.num_heads, policy.layers[name].keep_ratio)
        if keep < attention.num_heads:
            _prune_heads(attention, keep)
    names = dict(model.named_modules())
    ratios: dict[nn.Module, float] = {}
    expected: dict[str, int] = {}
    for name, action in policy.layers.items():
        lim = limits[name]
        if lim.group is None or name in attentions:
            continue
        channels = limits[lim.group].out_channels
        kept = kept_channels(channels, action.keep_ratio, round_to)
        if kept < channels:  # the ratio Torch-Pruning turns back into exactly `kept` channels
            ratios[names[lim.group]] = 1.0 - (kept + 0.5) / channels
            expected[lim.group] = kept
    if not ratios:
        return PruneResult(model, [], before, count_params(model))
    pruner = _metapruner(model, example_inputs, ratios)
    pruner.step()
    widths = {
        n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for n, m in model.named_modules()
        if n in expected
    }
    kept_whole = tuple(n for n, kept in expected.items() if widths[n] != kept)
    if kept_whole:
        log.warning("prune.kept_whole", groups=list(kept_whole), reason="the dependency graph cannot prune them safely")
    return PruneResult(model, pruner.pruning_history(), before, count_params(model), kept_whole)


def replay(model: nn.Module, history: Sequence[Any], example_inputs: torch.Tensor) -> nn.Module:
    """Apply a pruning history to a fresh model of the same architecture (to load a checkpoint)."""
    graph = _graph(model, example_inputs)
    graph.load_pruning_history(list(history))
    return model
