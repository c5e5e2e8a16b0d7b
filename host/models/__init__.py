"""Model zoo by name (PyTorch; no torchvision)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn


def _resnet18(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    from host.models.resnet import ResNet18

    return ResNet18(num_classes=num_classes, in_channels=input_shape[0])


def _mobilenet_v2(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    from host.models.mobilenet import MobileNetV2

    return MobileNetV2(num_classes=num_classes, in_channels=input_shape[0])


def _mlp(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    from host.models.mlp import MLP

    return MLP(in_features=math.prod(input_shape), num_classes=num_classes)


MODELS: dict[str, Callable[[int, Sequence[int]], nn.Module]] = {
    "resnet18": _resnet18,
    "mobilenetv2": _mobilenet_v2,
    "mlp": _mlp,
}


def build_model(name: str, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """A fresh model by name; `input_shape` excludes the batch axis, e.g. (3, 64, 64)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, tuple(input_shape))
