"""A synthetic NEU-DET-like steel-surface defect set, built in seconds with numpy.

Six classes of 300 grey images each (NEU-DET's classes and size), drawn procedurally on a rolled
steel texture: low-frequency shading, streaks along the rolling direction and grain noise. Each
image has its own brightness (independent of class), contrast, defect strength, position,
orientation and scale, and a random flip / transpose, so that a linear model on raw pixels does
poorly while a CNN learns the task (bench/data_difficulty.py measures both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from host.data.splits import DataError, DataSplits, build_splits, stratified_indices

NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
IMAGES_PER_CLASS = 300
# 60 of 300 per class: 1,440 train / 360 test as in the paper.
TEST_FRACTION = 0.2
# Fresh images per class added to the validation and test splits, so that half a point is more
# than one or two images: 288 / 360 images make one image 0.35 / 0.28 points, 720 / 1,800 make it
# 0.14 / 0.06. The training split (and so a cached teacher) is the same either way.
EXTRA_VAL_PER_CLASS = 72
EXTRA_TEST_PER_CLASS = 240
# Which children of the seed draw what: one per class for the 1,800 images, one for their split,
# then one per class for each of: `synthetic_neu_det_holdout`, the extra validation images, the
# extra test images.
_N = len(NEU_CLASSES)
_IMAGES, _SPLIT, _HOLDOUT, _EXTRA_VAL, _EXTRA_TEST = 0, _N, _N + 1, 2 * _N + 1, 3 * _N + 1


def synthetic_neu_det(
    seed: int = 0,
    image_size: int = 64,
    val_fraction: float = 0.2,
    extra_val_per_class: int = EXTRA_VAL_PER_CLASS,
    extra_test_per_class: int = EXTRA_TEST_PER_CLASS,
) -> DataSplits:
    """1,800 images (3, image_size, image_size) split as NEU-DET, 1,440 train+val / 360 test with
    val carved from train, then `extra_val_per_class` and `extra_test_per_class` fresh images of
    each class added to val and test (0 and 0: the paper's split).

    With the defaults: 1,152 train / 720 val / 1,800 test, balanced per class.
    Pixels are grey levels in [0, 1] replicated to 3 channels, then normalised with the training
    split's mean and std (one scalar each, in `normalisation`; about 0.50 and 0.15 at 64x64).
    Deterministic for a seed.
    """
    if image_size < 16:
        raise DataError(f"image_size must be at least 16 pixels, got {image_size}")
    if not all(isinstance(n, int) and n >= 0 for n in (extra_val_per_class, extra_test_per_class)):
        raise DataError(
            f"extra_val_per_class = {extra_val_per_class} and extra_test_per_class = {extra_test_per_class}: "
            "give whole numbers, 0 or more"
        )
    x_raw, labels = _drawn(seed, _IMAGES, IMAGES_PER_CLASS, image_size)
    split_seed = int(_children(seed, _SPLIT, 1)[0].generate_state(1)[0])
    indices = stratified_indices(labels, split_seed, val_fraction, TEST_FRACTION)
    for split, first, per_class in (
        ("val", _EXTRA_VAL, extra_val_per_class),
        ("test", _EXTRA_TEST, extra_test_per_class),
    ):
        if per_class:
            x_new, y_new = _drawn(seed, first, per_class, image_size)
            added = np.arange(len(labels), len(labels) + len(y_new))
            x_raw, labels = np.concatenate([x_raw, x_new]), np.concatenate([labels, y_new])
            indices = replace(indices, **{split: np.concatenate([getattr(indices, split), added])})
    return build_splits(
        "synthetic-neu-det",
        NEU_CLASSES,
        x_raw,
        labels,
        indices,
        normalisation_axes=(1, 2, 3),
        raw="grey level in [0, 1], replicated to 3 channels",
    )


def synthetic_neu_det_holdout(seed: int, per_class: int, image_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` more images of each class from the same generator and `seed`, none of them among
    `synthetic_neu_det(seed)`'s splits (their random streams are other children of the seed's):
    raw inputs (grey levels replicated to 3 channels; normalise them with the splits'
    `normalisation`) and labels. For measuring accuracy beyond the test split."""
    if per_class < 1:
        raise DataError(f"per_class must be at least 1, got {per_class}")
    return _drawn(seed, _HOLDOUT, per_class, image_size)


def _children(seed: int, first: int, count: int) -> list[np.random.SeedSequence]:
    """Children `first` .. `first + count - 1` of the seed (the same ones however many are drawn)."""
    return np.random.SeedSequence(seed).spawn(first + count)[first:]


def _drawn(seed: int, first: int, per_class: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` images of each class from the seed's children `first` .. `first + 5`: raw
    inputs (grey levels replicated to 3 channels) and labels."""
    streams = _children(seed, first, _N)
    grey = np.concatenate(
        [
            _render(np.random.default_rng(stream), name, per_class, size)
            for stream, name in zip(streams, NEU_CLASSES, strict=True)
        ]
    )
    return np.repeat(grey[:, None], 3, axis=1), np.repeat(np.arange(_N), per_class)


def _render(rng: np.random.Generator, name: str, n: int, size: int) -> np.ndarray:
    """n images of one class, float32 (n, size, size) in [0, 1]."""
    texture = _background(rng, n, size)
    defect = _DEFECTS[name](rng, n, size)
    strength = rng.uniform(1.2, 2.0, (n, 1, 1))
    image = texture + strength * defect
    image -= image.mean(axis=(1, 2), keepdims=True)
    brightness = rng.uniform(0.35, 0.65, (n, 1, 1))
    contrast = rng.uniform(0.08, 0.14, (n, 1, 1))
    image = np.clip(brightness + contrast * image, 0.0, 1.0)
    return _random_dihedral(rng, image).astype(np.float32)


def _background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Steel texture with unit-scale components: shading, rolling streaks (along x), grain."""
    shading = _filtered_noise(rng, n, size, sigma_x=rng.uniform(1, 3, (n, 1, 1)), sigma_y=rng.uniform(1, 3, (n, 1, 1)))
    streaks = _filtered_noise(
        rng, n, size, sigma_x=rng.uniform(0.5, 2, (n, 1, 1)), sigma_y=rng.uniform(8, 20, (n, 1, 1)) * size / 64
    )
    grain = rng.standard_normal((n, size, size))
    return (
        rng.uniform(0.3, 0.8, (n, 1, 1)) * shading
        + rng.uniform(0.2, 0.5, (n, 1, 1)) * streaks
        + rng.uniform(0.1, 0.3, (n, 1, 1)) * grain
    )


def _filtered_noise(
    rng: np.random.Generator, n: int, size: int, sigma_x: np.ndarray, sigma_y: np.ndarray
) -> np.ndarray:
    """White noise low-passed by a Gaussian of sigma_x / sigma_y cycles per image; unit std."""
    fx, fy = _frequencies(size)
    return _shaped_noise(rng, n, size, np.exp(-0.5 * ((fx / sigma_x) ** 2 + (fy / sigma_y) ** 2)))


def _bandpass_noise(
    rng: np.random.Generator, n: int, size: int, centre: np.ndarray, width: np.ndarray, stretch: np.ndarray
) -> np.ndarray:
    """White noise band-passed around `centre` cycles per image; x frequencies scaled by
    `stretch` (> 1 elongates structures along x). Unit std."""
    fx, fy = _frequencies(size)
    radius = np.sqrt((fx * stretch) ** 2 + fy**2)
    return _shaped_noise(rng, n, size, np.exp(-0.5 * ((radius - centre) / width) ** 2))


def _frequencies(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (cycles per image) of rfft2 bins along x (columns) and y (rows)."""
    return np.fft.rfftfreq(size, 1.0 / size)[None, :], np.fft.fftfreq(size, 1.0 / size)[:, None]


def _shaped_noise(rng: np.random.Generator, n: int, size: int, envelope: np.ndarray) -> np.ndarray:
    """n white-noise fields filtered by `envelope` (rfft2 layout); zero mean, unit std each."""
    spectrum = np.fft.rfft2(rng.standard_normal((n, size, size))) * envelope
    return _unit(np.fft.irfft2(spectrum, s=(size, size)))


def _unit(field: np.ndarray) -> np.ndarray:
    field = field - field.mean(axis=(1, 2), keepdims=True)
    return field / field.std(axis=(1, 2), keepdims=True)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return xx, yy


class _BlobShape(NamedTuple):
    """Ranges blobs are drawn from: the long axis's sigma (pixels at 64x64), the ratio of the
    long sigma to the short one, and the orientation."""

    sigma_long_px: tuple[float, float]
    aspect: tuple[float, float]
    angle_rad: tuple[float, float]


def _blobs(
    rng: np.random.Generator,
    n: int,
    size: int,
    count: np.ndarray,
    max_count: int,
    shape: _BlobShape,
    centres: Callable[[int], tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """(n, size, size): per image, the sum of `count` oriented Gaussian blobs of peak 1."""
    xx, yy = _grid(size)
    out = np.zeros((n, size, size))
    scale = size / 64
    for k in range(max_count):
        cx, cy = centres(n)
        theta = rng.uniform(*shape.angle_rad, (n, 1, 1))
        s_long = rng.uniform(*shape.sigma_long_px, (n, 1, 1)) * scale
        s_short = s_long / rng.uniform(*shape.aspect, (n, 1, 1))
        dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        on = (k < count)[:, None, None]
        out += on * np.exp(-0.5 * ((u / s_long) ** 2 + (v / s_short) ** 2))
    return out


def _uniform_centres(
    rng: np.random.Generator,
    size: int,
    margin_px: float,
) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        return (rng.uniform(margin_px, size - margin_px, n), rng.uniform(margin_px, size - margin_px, n))

    return draw


def _cluster_centres(
    rng: np.random.Generator,
    size: int,
    n_images: int,
) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """Centres scattered around one random focus per image (clustered defects)."""
    fx = rng.uniform(0.25, 0.75, n_images) * size
    fy = rng.uniform(0.25, 0.75, n_images) * size
    spread = rng.uniform(0.12, 0.35, n_images) * size

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.clip(fx + spread * rng.standard_normal(n), 0, size - 1),
            np.clip(fy + spread * rng.standard_normal(n), 0, size - 1),
        )

    return draw


def _crazing(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Fine crack networks: thin dark lines on the zero set of band-passed noise, over a region."""
    field = _bandpass_noise(
        rng,
        n,
        size,
        centre=rng.uniform(4, 7, (n, 1, 1)) * size / 64,
        width=rng.uniform(1.0, 2.0, (n, 1, 1)) * size / 64,
        stretch=rng.uniform(1.0, 2.5, (n, 1, 1)),
    )
    cracks = np.exp(-((field / rng.uniform(0.18, 0.28, (n, 1, 1))) ** 2))
    region = _soft_region(rng, n, size, coverage=(0.6, 1.0))
    return -2.0 * cracks * region


def _inclusion(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """A few small dark elongated blobs at any orientation."""
    count = rng.integers(1, 4, n)
    return -2.5 * _blobs(
        rng,
        n,
        size,
        count,
        3,
        _BlobShape(sigma_long_px=(3.5, 7.0), aspect=(2.5, 5.0), angle_rad=(0, np.pi)),
        centres=_uniform_centres(rng, size, 8 * size / 64),
    )


def _patches(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Large irregular brighter or darker regions."""
    sign = rng.choice([-1.0, 1.0], (n, 1, 1))
    return sign * 2.0 * _soft_region(rng, n, size, coverage=(0.25, 0.5))


def _pitted_surface(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Many small dark round pits, clustered."""
    count = rng.integers(20, 50, n)
    return -2.5 * _blobs(
        rng,
        n,
        size,
        count,
        50,
        _BlobShape(sigma_long_px=(0.8, 1.4), aspect=(1.0, 1.3), angle_rad=(0, np.pi)),
        centres=_cluster_centres(rng, size, n),
    )


def _rolled_in_scale(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Scattered flaky scale marks aligned with the rolling direction (x), with a rough edge."""
    count = rng.integers(12, 25, n)
    flakes = _blobs(
        rng,
        n,
        size,
        count,
        24,
        _BlobShape(sigma_long_px=(3.0, 5.5), aspect=(2.5, 4.5), angle_rad=(-0.2, 0.2)),
        centres=_uniform_centres(rng, size, 2),
    )
    rough = 0.75 + 0.25 * _filtered_noise(rng, n, size, sigma_x=np.array(16.0), sigma_y=np.array(16.0))
    return -2.5 * np.clip(flakes * rough, 0, 1.5)


def _scratches(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """One to three long thin straight lines, brighter or darker, at any orientation."""
    xx, yy = _grid(size)
    count = rng.integers(1, 4, n)
    out = np.zeros((n, size, size))
    for k in range(3):
        cx = rng.uniform(0.2, 0.8, (n, 1, 1)) * size
        cy = rng.uniform(0.2, 0.8, (n, 1, 1)) * size
        theta = rng.uniform(0, np.pi, (n, 1, 1))
        half_length = rng.uniform(0.3, 0.7, (n, 1, 1)) * size
        width = rng.uniform(0.5, 1.0, (n, 1, 1)) * size / 64
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        along = np.clip(u, -half_length, half_length)
        distance = np.sqrt((u - along) ** 2 + v**2)
        out += (k < count)[:, None, None] * np.exp(-0.5 * (distance / width) ** 2)
    sign = rng.choice([-1.0, 1.0], (n, 1, 1))
    return sign * 2.0 * np.clip(out, 0, 1)


def _soft_region(rng: np.random.Generator, n: int, size: int, coverage: tuple[float, float]) -> np.ndarray:
    """A smooth irregular mask in [0, 1] covering about `coverage` of the image."""
    field = _filtered_noise(
        rng, n, size, sigma_x=rng.uniform(1.5, 3, (n, 1, 1)), sigma_y=rng.uniform(1.5, 3, (n, 1, 1))
    )
    target = rng.uniform(*coverage, (n, 1, 1))
    ranked = np.sort(field.reshape(n, -1), axis=1)
    rank = ((1 - target[:, 0, 0]) * (size * size - 1)).astype(int)
    threshold = ranked[np.arange(n), rank][:, None, None]
    return 1 / (1 + np.exp(-(field - threshold) / 0.15))


def _random_dihedral(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """Per image: random transpose and flips (rolling direction horizontal or vertical)."""
    out = images.copy()
    transpose = rng.random(len(out)) < 0.5
    out[transpose] = out[transpose].transpose(0, 2, 1)
    flip_y = rng.random(len(out)) < 0.5
    out[flip_y] = out[flip_y, ::-1]
    flip_x = rng.random(len(out)) < 0.5
    out[flip_x] = out[flip_x, :, ::-1]
    return out


_DEFECTS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "crazing": _crazing,
    "inclusion": _inclusion,
    "patches": _patches,
    "pitted_surface": _pitted_surface,
    "rolled-in_scale": _rolled_in_scale,
    "scratches": _scratches,
}
