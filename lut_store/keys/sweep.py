"""Op keys of a model's layers under a sweep of channel widths, so that any per-layer pruning
policy finds its kernels in the LUT.

A model is described at full width as a sequence of layers: convolutions as the runtime fuses
them (batch-norm folded into the bias; conv+relu, or conv+add+relu where a residual joins),
pools and the classifier head. Every layer is keyed at every pair of (input, output)
keep-ratios and every precision, channel counts rounded to a multiple of `round_to`; the
channels of the model's own input are never pruned.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

from lut_store.keys import ops
from lut_store.keys.ops import NCHW, ConvSpec, conv_out_size
from lut_store.opkey import OpKey

DEFAULT_KEEP_RATIOS = (0.25, 0.5, 0.75, 1.0)


def scaled(channels: int, ratio: float, round_to: int) -> int:
    """Channels kept at `ratio`, rounded to a multiple of `round_to` (at least one multiple)."""
    return max(round_to, int(round(channels * ratio / round_to)) * round_to)


@dataclass(frozen=True)
class ConvLayer:
    """A convolution of input `x` with the ops fused into it; `fixed_input` when it reads the
    model's input, whose channels no policy prunes."""

    x: NCHW
    spec: ConvSpec
    fuse: tuple[str, ...] = ()
    fixed_input: bool = False

    @property
    def output(self) -> NCHW:
        return self.spec.output(self.x)

    def keys(self, in_ratio: float, out_ratio: float, round_to: int, precision: str) -> tuple[OpKey, ...]:
        in_channels = self.x.channels if self.fixed_input else scaled(self.x.channels, in_ratio, round_to)
        spec = replace(self.spec, out_channels=scaled(self.spec.out_channels, out_ratio, round_to))
        return (ops.conv(self.x._replace(channels=in_channels), spec, self.fuse, precision),)


@dataclass(frozen=True)
class PoolLayer:
    """A max or average pool ('max' / 'avg') of input `x`: its channels are pruned with its input's."""

    kind: str
    x: NCHW
    kernel: int
    stride: int
    padding: int = 0

    @property
    def output(self) -> NCHW:
        height = conv_out_size(self.x.height, self.kernel, self.stride, self.padding, self.padding)
        width = conv_out_size(self.x.width, self.kernel, self.stride, self.padding, self.padding)
        return self.x._replace(height=height, width=width)

    def keys(self, in_ratio: float, out_ratio: float, round_to: int, precision: str) -> tuple[OpKey, ...]:
        x = self.x._replace(channels=scaled(self.x.channels, in_ratio, round_to))
        return (ops.pool(self.kind, x, self.kernel, self.stride, self.padding, precision),)


@dataclass(frozen=True)
class HeadLayer:
    """Global average pooling of input `x`, then the fully connected classifier to `classes`."""

    x: NCHW
    classes: int

    def keys(self, in_ratio: float, out_ratio: float, round_to: int, precision: str) -> tuple[OpKey, ...]:
        channels = scaled(self.x.channels, in_ratio, round_to)
        return (
            ops.global_avg_pool(self.x._replace(channels=channels), precision),
            ops.gemm(self.x.batch, channels, self.classes, precision=precision),
        )


Layer = ConvLayer | PoolLayer | HeadLayer


def sweep_keys(
    layers: Sequence[Layer],
    precisions: Sequence[str],
    keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS,
    round_to: int = 8,
) -> list[OpKey]:
    """The keys of `layers` at every (input, output) keep-ratio pair and precision, deduplicated,
    in layer order."""
    keys: dict[str, OpKey] = {}
    for layer in layers:
        for in_ratio, out_ratio, precision in itertools.product(keep_ratios, keep_ratios, precisions):
            for key in layer.keys(in_ratio, out_ratio, round_to, precision):
                keys.setdefault(key.hash, key)
    return list(keys.values())
