"""The models `hadmc lut build --model` sweeps, described as lut_store's width sweep reads them
(lut_store/keys/sweep.py), taken from the PyTorch definitions so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lut_store.keys.ops import NCHW, ConvSpec
from lut_store.keys.sweep import DEFAULT_KEEP_RATIOS, ConvLayer, HeadLayer, Layer, PoolLayer, sweep_keys
from lut_store.opkey import OpKey


def _spec(conv: Any) -> ConvSpec:
    """An nn.Conv2d as the runtime runs it: batch-norm folded into a bias."""
    return ConvSpec(
        conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups
    )


def resnet18_layers(num_classes: int = 6, image_size: int = 64, batch: int = 1) -> list[Layer]:
    """The paper's ResNet18 (7x7 stem, max-pool, BasicBlocks [2, 2, 2, 2]) at `image_size`."""
    from host.models.resnet import ResNet18

    model = ResNet18(num_classes=num_classes)
    stem = ConvLayer(NCHW(batch, model.conv1.in_channels, image_size, image_size), _spec(model.conv1), ("relu",), True)
    pool = model.maxpool
    layers: list[Layer] = [stem, PoolLayer("max", stem.output, pool.kernel_size, pool.stride, pool.padding)]
    x = layers[-1].output
    for block in (b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage):
        first = ConvLayer(x, _spec(block.conv1), ("relu",))
        second = ConvLayer(first.output, _spec(block.conv2), ("add", "relu"))
        layers += [first, second]
        if block.downsample is not None:
            layers.append(ConvLayer(x, _spec(block.downsample[0])))
        x = second.output
    return [*layers, HeadLayer(x, model.fc.out_features)]


MODEL_LAYERS = {"resnet18": resnet18_layers}


def model_keys(name: str, precisions: Sequence[str], keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS) -> list[OpKey]:
    """The keys of model `name`'s layers under the width sweep."""
    if name not in MODEL_LAYERS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(sorted(MODEL_LAYERS))}")
    return sweep_keys(MODEL_LAYERS[name](), precisions, keep_ratios)
