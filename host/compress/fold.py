"""BatchNorm around pruning: re-estimate its statistics on the pruned network, then fold it into
the convolution before it, so fake-quantized weights are the weights the runtime uses (an
unfolded BN after a QDQ conv blocks onnxruntime's QLinearConv fusion)."""

from __future__ import annotations

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every Conv2d -> BatchNorm2d pair in place (BN becomes Identity); return the count."""
    traced = torch.fx.symbolic_trace(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), nn.Conv2d)
            and len(source.users) == 1
        ):
            pairs.append((source.target, node.target))
    was_training = model.training
    model.eval()
    for conv_name, bn_name in pairs:
        fused = fuse_conv_bn_eval(modules[conv_name], modules[bn_name])
        _set(model, conv_name, fused)
        _set(model, bn_name, nn.Identity())
    model.train(was_training)
    return len(pairs)


def recalibrate_batchnorm(model: nn.Module, loader: torch.utils.data.DataLoader, batches: int = 20) -> int:
    """Re-estimate every BatchNorm's running statistics on `batches` training batches (no weight
    changes); return the number of images seen.

    Pruning a layer's input channels shifts its output distribution, so the teacher's statistics
    are stale: ResNet18 at keep-ratio 0.5 scores 17% on validation without this and 85% with it,
    before any fine-tuning (adaptive BN, EagleEye: Li et al. 2020, https://arxiv.org/abs/2007.02491).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches seen
    was_training = model.training
    model.train()
    seen = 0
    with torch.no_grad():
        for i, (x, *_) in enumerate(loader):
            if i >= batches:
                break
            model(x)
            seen += len(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return seen


def _set(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)
