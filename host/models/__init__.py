"""Models: the built-in zoo by name (PyTorch; no torchvision), or the user's own factory.

A user model is named `"package.module:factory"` or `"path/to/file.py:factory"` (relative to the
working directory). `factory(**factory_kwargs)` must return an `nn.Module` that maps a batch of
`input_shape` inputs to `(batch, num_classes)` logits; it is also given `num_classes` and
`input_shape` when it takes parameters of those names and `factory_kwargs` does not set them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from host.factory import load_factory


class ModelError(ValueError):
    """A model that cannot be built or does not fit the data; the message names it and why."""


def _resnet18(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    from host.models.resnet import ResNet18

    return ResNet18(num_classes=num_classes, in_channels=input_shape[0])


def _mobilenet_v2(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    from host.models.mobilenet import MobileNetV2

    return MobileNetV2(num_classes=num_classes, in_channels=input_shape[0])


def _mlp(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    from host.models.mlp import MLP

    return MLP(in_features=math.prod(input_shape), num_classes=num_classes)


def _vit(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    from host.models.vit import ViT

    if len(input_shape) != 3 or input_shape[1] != input_shape[2] or input_shape[1] % 8:
        raise ModelError(f"vit takes square images whose side is a multiple of 8, not inputs of shape {input_shape}")
    return ViT(num_classes, in_channels=input_shape[0], image_size=input_shape[1])


MODELS: dict[str, Callable[[int, Sequence[int]], nn.Module]] = {
    "resnet18": _resnet18,
    "mobilenetv2": _mobilenet_v2,
    "mlp": _mlp,
    "vit": _vit,
}


def is_factory(name: str) -> bool:
    """Whether `name` names a user factory (`module:factory` or `file.py:factory`)."""
    return name not in MODELS and ":" in name


def _from_factory(
    name: str, num_classes: int, input_shape: tuple[int, ...], factory_kwargs: Mapping[str, Any]
) -> nn.Module:
    factory = load_factory(name, ModelError, "model")
    kwargs = dict(factory_kwargs)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: call it as configured
        params = {}
    for key, value in (("num_classes", num_classes), ("input_shape", input_shape)):
        if key in params and key not in kwargs:
            kwargs[key] = value
    try:
        model = factory(**kwargs)
    except Exception as exc:  # the user's code
        raise ModelError(f"model {name!r}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def check_model(model: nn.Module, name: str, num_classes: int, input_shape: Sequence[int]) -> None:
    """Raise ModelError unless `model` maps a batch of `input_shape` to (batch, num_classes)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *input_shape)))
    except Exception as exc:  # the user's forward: its own error is the message
        raise ModelError(
            f"model {name!r} rejects inputs of shape {(2, *input_shape)}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"model {name!r} gives {shape} for a batch of 2, not logits of shape (2, {num_classes}) "
            f"for the data's {num_classes} classes"
        )


def build_model(
    name: str, num_classes: int, input_shape: Sequence[int], factory_kwargs: Mapping[str, Any] | None = None
) -> nn.Module:
    """A fresh model: a built-in by name, or the user's factory (checked against the data's
    input shape and class count); `input_shape` excludes the batch axis, e.g. (3, 64, 64)."""
    shape = tuple(input_shape)
    if is_factory(name):
        model = _from_factory(name, num_classes, shape, factory_kwargs or {})
        check_model(model, name, num_classes, shape)
        return model
    if name not in MODELS:
        raise ModelError(
            f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}, or your own as "
            "'package.module:factory' or 'path/to/file.py:factory'"
        )
    if factory_kwargs:
        raise ModelError(f"factory_kwargs are for a model factory, not the built-in {name!r}")
    return MODELS[name](num_classes, shape)


def model_id(name: str, factory_kwargs: Mapping[str, Any] | None = None) -> str:
    """A file-name-safe id of a model's definition (baseline cache files carry it): a built-in's
    name, or the factory's name and a digest of its spec, kwargs and source file."""
    if not is_factory(name):
        return name
    where, _, attr = name.rpartition(":")
    digest = hashlib.sha256(json.dumps([name, dict(factory_kwargs or {})], sort_keys=True, default=str).encode())
    if where.endswith(".py") and Path(where).is_file():
        digest.update(Path(where).read_bytes())
    return f"{re.sub(r'[^A-Za-z0-9_]+', '_', attr)}-{digest.hexdigest()[:10]}"
