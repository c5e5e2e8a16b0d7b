"""Fold BatchNorm into the convolution before it, so fake-quantized weights are the weights the
runtime uses (an unfolded BN after a QDQ conv blocks onnxruntime's QLinearConv fusion)."""

from __future__ import annotations

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
        if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and isinstance(modules.get(source.target), nn.Conv2d) and len(source.users) == 1):
            pairs.append((source.target, node.target))
    was_training = model.training
    model.eval()
    for conv_name, bn_name in pairs:
        fused = fuse_conv_bn_eval(modules[conv_name], modules[bn_name])
        _set(model, conv_name, fused)
        _set(model, bn_name, nn.Identity())
    model.train(was_training)
    return len(pairs)


def _set(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)
