"""The record every loader returns: train / validation / test splits with their normalisation.

The search scores candidates on the validation split; the test split is kept for final models.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


class DataError(ValueError):
    """A data set that cannot be loaded as asked; the message says what to change."""


@dataclass(frozen=True, eq=False)
class Normalisation:
    """x_normalised = (x_raw - mean) / std, with statistics of the training split.

    `mean` and `std` broadcast against one sample (e.g. shape (1, 1, 1) for grey images, (30,) for
    30 tabular features); `raw` says what x_raw is, so new inputs can be prepared the same way.
    """

    mean: np.ndarray
    std: np.ndarray
    raw: str

    def apply(self, x_raw: np.ndarray) -> np.ndarray:
        return ((x_raw - self.mean) / self.std).astype(np.float32)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """A labelled data set split three ways. Inputs float32 (n, *input_shape), labels int64 (n,).

    `skipped_files` lists inputs that could not be decoded and were left out (image folders).
    The arrays are read-only.
    """

    name: str
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    normalisation: Normalisation
    skipped_files: tuple[str, ...] = field(default=())

    @cached_property
    def cache_id(self) -> str:
        """Names what a model trained on this data learned from: the data set's name and a digest
        of its training inputs and labels (another file of the same name, or an edited one, is
        another data set to the baseline cache)."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train):
            digest.update(repr((array.dtype.str, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).data)
        return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', self.name)}-{digest.hexdigest()[:12]}"

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.float32 or y.dtype != np.int64:
                raise TypeError(f"{split}: inputs must be float32 and labels int64, got {x.dtype} and {y.dtype}")
            if x.shape[1:] != self.input_shape or y.shape != (len(x),):
                raise ValueError(
                    f"{split}: inputs {x.shape} and labels {y.shape} do not match input_shape {self.input_shape}"
                )
            if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(f"{split}: labels outside 0..{len(self.classes) - 1}")
            x.setflags(write=False)
            y.setflags(write=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of "train", "val" or "test"."""
        if which not in ("train", "val", "test"):
            raise ValueError(f"unknown split {which!r}; choices: train, val, test")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")


@dataclass(frozen=True)
class SplitIndices:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def stratified_indices(labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> SplitIndices:
    """Per class: `test_fraction` of its samples to test, then `val_fraction` of the rest to val.

    Counts are rounded per class, so 300 images per class with test 0.2 and val 0.2 give
    240 train+val (192 + 48) and 60 test per class. Deterministic for a seed.
    """
    for label, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 < value < 1.0:
            raise DataError(f"{label} must lie strictly between 0 and 1, got {value}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(members) * test_fraction)
        n_val = round((len(members) - n_test) * val_fraction)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    out = {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}
    empty = [name for name, idx in out.items() if len(idx) == 0]
    if empty:
        raise DataError(
            f"{len(labels)} samples leave the {', '.join(empty)} split(s) empty; "
            "add samples or change val_fraction / test_fraction"
        )
    return SplitIndices(**out)


def build_splits(
    name: str,
    classes: Sequence[str],
    x_raw: np.ndarray,
    labels: np.ndarray,
    indices: SplitIndices,
    normalisation_axes: tuple[int, ...],
    raw: str,
    skipped_files: tuple[str, ...] = (),
) -> DataSplits:
    """Normalise with training statistics over `normalisation_axes` and cut the splits.

    `normalisation_axes` are the sample axes the statistics are pooled over besides the batch axis,
    e.g. (1, 2, 3) for one scalar per image set, (2, 3) per channel, () per tabular feature.
    """
    train = x_raw[indices.train].astype(np.float64)
    axes = (0, *normalisation_axes)
    mean = train.mean(axis=axes, keepdims=True)[0]
    std = train.std(axis=axes, keepdims=True)[0]
    std[std == 0] = 1.0
    norm = Normalisation(mean=mean.astype(np.float32), std=std.astype(np.float32), raw=raw)
    y = labels.astype(np.int64)
    return DataSplits(
        name=name,
        classes=tuple(classes),
        input_shape=tuple(x_raw.shape[1:]),
        x_train=norm.apply(x_raw[indices.train]),
        y_train=y[indices.train],
        x_val=norm.apply(x_raw[indices.val]),
        y_val=y[indices.val],
        x_test=norm.apply(x_raw[indices.test]),
        y_test=y[indices.test],
        normalisation=norm,
        skipped_files=skipped_files,
    )
