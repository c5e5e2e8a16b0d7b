"""Op keys of a model's layers under a sweep of channel widths, for `hadmc lut build --model`.

Each convolution is keyed as the runtime fuses it (BN folded; conv+relu, or conv+add+relu where
a residual joins), for every pair of (input, output) keep-ratios, so that any per-layer pruning
policy finds its kernels in the LUT. Channel counts are rounded to a multiple of `round_to`.
"""

from __future__ import annotations

from collections.abc import Sequence

from lut_store import kernels
from lut_store.opkey import OpKey

DEFAULT_KEEP_RATIOS = (0.25, 0.5, 0.75, 1.0)


def scaled(channels: int, ratio: float, round_to: int) -> int:
    """Channels kept at `ratio`, rounded to a multiple of `round_to` (at least one multiple)."""
    return max(round_to, int(round(channels * ratio / round_to)) * round_to)


def resnet_keys(
    num_classes: int = 6,
    image_size: int = 64,
    batch: int = 1,
    keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS,
    precisions: Sequence[str] = ("fp32",),
    round_to: int = 8,
) -> list[OpKey]:
    """Keys of the paper's ResNet18 (7x7 stem, BasicBlocks [2, 2, 2, 2]) at `image_size`."""
    from host.models.resnet import ResNet18

    model = ResNet18(num_classes=num_classes)
    layers: list[tuple[int, int, int, int, int, int, tuple[str, ...], bool]] = []
    size = image_size
    # (in_channels, out_channels, size, kernel, stride, padding, fuse, input_fixed)
    stem = model.conv1
    layers.append((stem.in_channels, stem.out_channels, size, 7, 2, 3, ("relu",), True))
    size = (size + 2 * 3 - 7) // 2 + 1
    pooled = (size + 2 - 3) // 2 + 1
    keys: dict[str, OpKey] = {}
    for r in keep_ratios:
        for p in precisions:
            c = scaled(64, r, round_to)
            k = kernels.pool("max", batch, c, size, size, 3, 2, 1, precision=p)
            keys.setdefault(k.hash, k)
    size = pooled
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            stride = block.conv1.stride[0]
            layers.append((block.conv1.in_channels, block.conv1.out_channels, size, 3, stride, 1, ("relu",), False))
            out_size = (size + 2 - 3) // stride + 1
            layers.append(
                (block.conv2.in_channels, block.conv2.out_channels, out_size, 3, 1, 1, ("add", "relu"), False)
            )
            if block.downsample is not None:
                ds = block.downsample[0]
                layers.append((ds.in_channels, ds.out_channels, size, 1, stride, 0, (), False))
            size = out_size
    for c_in, c_out, s, k, stride, pad, fuse, input_fixed in layers:
        in_ratios = (1.0,) if input_fixed else keep_ratios
        for r_in in in_ratios:
            for r_out in keep_ratios:
                for p in precisions:
                    ci = c_in if input_fixed else scaled(c_in, r_in, round_to)
                    key = kernels.conv(
                        batch,
                        ci,
                        s,
                        s,
                        scaled(c_out, r_out, round_to),
                        k,
                        stride,
                        pad,
                        bias=True,
                        fuse=fuse,
                        precision=p,
                    )
                    keys.setdefault(key.hash, key)
    for r in keep_ratios:
        for p in precisions:
            c = scaled(512, r, round_to)
            for key in (
                kernels.global_avg_pool(batch, c, size, size, precision=p),
                kernels.gemm(batch, c, num_classes, precision=p),
            ):
                keys.setdefault(key.hash, key)
    return list(keys.values())


MODEL_KEYS = {"resnet18": resnet_keys}


def model_keys(name: str, precisions: Sequence[str], keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS) -> list[OpKey]:
    if name not in MODEL_KEYS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(sorted(MODEL_KEYS))}")
    return MODEL_KEYS[name](precisions=precisions, keep_ratios=keep_ratios)
