"""Blocks (HiReLC Sec. 3.2) and their Fisher sensitivity (Eqs. 14-15).

A block is a unit of the model's own structure: the kernels (the search space's Conv2d and Linear
layers) under one element of a sequential container (a residual unit, an inverted residual, a
transformer encoder layer), found as each kernel's outermost ancestor that is such an element.
A kernel under no container element (a stem, a classifier) is a block of its own, named by its
top-level module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from host.search.space import SearchSpace


@dataclass(frozen=True)
class Block:
    name: str
    kernels: tuple[str, ...]  # the space's layer names, in execution order
    params: tuple[int, ...]  # each kernel's FP32 weight count


def _container_elements(model: nn.Module) -> set[str]:
    """Names of the modules that are elements of a Sequential or ModuleList."""
    elements = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            elements |= {f"{name}.{child}" if name else child for child, _ in module.named_children()}
    return elements


def find_blocks(model: nn.Module, space: SearchSpace) -> tuple[Block, ...]:
    """The model's blocks in the order their first kernel runs; an error for a model that is one
    block (the high-level agents allocate budgets across blocks)."""
    elements = _container_elements(model)
    order: dict[str, list[int]] = {}
    for t, layer in enumerate(space.layers):
        parts = layer.name.split(".")
        prefixes = (".".join(parts[:i]) for i in range(1, len(parts) + 1))
        block = next((p for p in prefixes if p in elements), parts[0])
        order.setdefault(block, []).append(t)
    blocks = tuple(
        Block(name, tuple(space.layers[t].name for t in ts), tuple(space.layers[t].params for t in ts))
        for name, ts in order.items()
    )
    if len(blocks) < 2:
        raise ValueError(
            f"model {space.model} is a single block ({blocks[0].name if blocks else 'no kernels'}): HiReLC "
            "allocates budgets across blocks; search it with ppo"
        )
    return blocks


def fisher_sensitivity(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    blocks: Sequence[Block],
    samples: int,
) -> dict[str, float]:
    """Eq. (14): each kernel parameter's empirical Fisher, the mean over `samples` calibration
    samples of its squared per-sample cross-entropy gradient; Eq. (15): a block's score is the sum
    over its kernels' parameters (weights and biases), divided by the largest block's (in [0, 1]).
    The model is evaluated in eval mode (BatchNorm on its running statistics); no sample, or no
    gradient at all, is an error, never a made-up score."""
    modules = dict(model.named_modules())
    params = {block.name: [p for k in block.kernels for p in modules[k].parameters(recurse=False)] for block in blocks}
    named = {id(p): p for ps in params.values() for p in ps}
    fisher = {pid: torch.zeros_like(p) for pid, p in named.items()}
    frozen = {pid: not p.requires_grad for pid, p in named.items()}
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for p in named.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            for x, y, *_ in batches:
                for i in range(len(x)):
                    if seen >= samples:
                        break
                    model.zero_grad()
                    nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
                    for pid, p in named.items():
                        if p.grad is not None:
                            fisher[pid] += p.grad.detach() ** 2
                    seen += 1
                if seen >= samples:
                    break
    finally:
        model.zero_grad()
        for pid, p in named.items():
            p.requires_grad_(not frozen[pid])
        model.train(was_training)
    totals = {name: sum(float(fisher[id(p)].sum()) for p in ps) / max(seen, 1) for name, ps in params.items()}
    top = max(totals.values(), default=0.0)
    if not seen or not top > 0:
        raise ValueError(
            f"Fisher sensitivity: {seen} calibration sample(s) gave no gradient on any block's kernels; "
            "give training samples on which the model has a loss"
        )
    return {name: total / top for name, total in totals.items()}


def take(batches: Iterable[tuple[torch.Tensor, ...]], samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `samples` inputs and labels of `batches`, concatenated."""
    xs, ys, n = [], [], 0
    for x, y, *_ in batches:
        xs.append(x)
        ys.append(y)
        n += len(x)
        if n >= samples:
            break
    if not xs:
        raise ValueError("no calibration batch: the loader gave nothing")
    return torch.cat(xs)[:samples], torch.cat(ys)[:samples]
