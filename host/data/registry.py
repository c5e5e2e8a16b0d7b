"""Data sets by name: load_dataset("synthetic-neu-det"), load_dataset("csv", path=..., ...), or one's
own: load_dataset("package.module:factory") / ("path/to/file.py:factory").

A data factory returns the three splits as PyTorch datasets: a (train, val, test) tuple or a dict
with those keys. Each item is (input, label): an input tensor or array of one fixed shape,
already normalised as the model expects, and an integer class. The class names are the train
dataset's `classes` attribute when it has one, else "0", "1", ... up to the largest label. The
factory is called with `factory_kwargs`, and with `seed` when it takes a parameter of that name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from host.data.images import image_folder
from host.data.splits import DataError, DataSplits, Normalisation
from host.data.synthetic import synthetic_neu_det
from host.data.tabular import breast_cancer, csv_table, sklearn_digits
from host.factory import load_factory

DATASETS: dict[str, Callable[..., DataSplits]] = {
    "synthetic-neu-det": synthetic_neu_det,
    "neu-det-folder": image_folder,
    "digits": sklearn_digits,
    "breast-cancer": breast_cancer,
    "csv": csv_table,
}


def load_dataset(name: str, **options: Any) -> DataSplits:
    """The data set `name` built with `options` (the loader's keyword arguments; a built-in loader
    also takes those in `factory_kwargs`, e.g. synthetic-neu-det's `image_size`)."""
    if name not in DATASETS and ":" in name:
        return _from_factory(name, options)
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choices: {', '.join(DATASETS)}")
    loader = DATASETS[name]
    options = {
        **{k: v for k, v in options.items() if k != "factory_kwargs"},
        **dict(options.get("factory_kwargs") or {}),
    }
    parameters = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise DataError(f"data set {name!r} takes no option {', '.join(unknown)}; options: {', '.join(parameters)}")
    missing = [p.name for p in parameters.values() if p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise DataError(f"data set {name!r} needs {', '.join(missing)}")
    return loader(**options)


def _from_factory(name: str, options: Mapping[str, Any]) -> DataSplits:
    factory = load_factory(name, DataError, "data set")
    kwargs = dict(options.get("factory_kwargs") or {})
    if "seed" in inspect.signature(factory).parameters and "seed" not in kwargs:
        kwargs["seed"] = options.get("seed", 0)
    try:
        made = factory(**kwargs)
    except Exception as exc:  # the user's code
        raise DataError(f"data set {name!r}: the factory raised {type(exc).__name__}: {exc}") from None
    if isinstance(made, Mapping):
        made = tuple(made.get(split) for split in ("train", "val", "test"))
    if not isinstance(made, tuple) or len(made) != 3 or any(d is None for d in made):
        raise DataError(
            f"data set {name!r}: the factory returned a {type(made).__name__}; return (train, val, test) datasets "
            "or a dict with those keys"
        )
    arrays = [_materialise(name, split, data) for split, data in zip(("train", "val", "test"), made, strict=True)]
    shapes = {x.shape[1:] for x, _ in arrays}
    if len(shapes) != 1:
        raise DataError(f"data set {name!r}: the splits' inputs differ in shape: {sorted(shapes)}")
    top = max(int(y.max()) for _, y in arrays if len(y))
    classes = getattr(made[0], "classes", None) or [str(c) for c in range(top + 1)]
    if top >= len(classes):
        raise DataError(f"data set {name!r}: label {top} but only {len(classes)} classes {list(classes)[:5]}")
    (xt, yt), (xv, yv), (xs, ys) = arrays
    shape = xt.shape[1:]
    identity = Normalisation(np.zeros(shape, np.float32), np.ones(shape, np.float32), "as the factory gives it")
    return DataSplits(name, tuple(map(str, classes)), shape, xt, yt, xv, yv, xs, ys, identity)


def _materialise(name: str, split: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """A split's (inputs, labels) as float32 and int64 arrays; DataError naming the first bad item."""
    xs, ys = [], []
    try:
        count = len(data)
    except TypeError:
        raise DataError(f"data set {name!r}: {split} is a {type(data).__name__}, not a dataset with a length") from None
    if count == 0:
        raise DataError(f"data set {name!r}: the {split} split is empty")
    for i in range(count):
        item = data[i]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(f"data set {name!r}: {split}[{i}] is not an (input, label) pair")
        x, y = np.asarray(item[0], dtype=np.float32), item[1]
        label = int(y.item() if hasattr(y, "item") else y)
        if xs and x.shape != xs[0].shape:
            raise DataError(f"data set {name!r}: {split}[{i}] has shape {x.shape}, {split}[0] {xs[0].shape}")
        if label < 0:
            raise DataError(f"data set {name!r}: {split}[{i}] has label {label}; classes count from 0")
        xs.append(x)
        ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


@dataclass(frozen=True)
class DataConfig:
    """`[data]`: which data set, its options, the split seed and the loaders' batch size."""

    name: str = "synthetic-neu-det"  # or one's own: "package.module:factory" / "file.py:factory"
    path: str = ""  # image folder or CSV file (neu-det-folder, csv)
    label_column: str = ""  # csv
    factory_kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of a factory or built-in loader
    seed: int = 0  # split and shuffling order
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size = {self.batch_size}: give at least 1")

    def load(self) -> DataSplits:
        """The data set, split with `seed`, with the options given (empty ones are unset)."""
        options = {"path": self.path, "label_column": self.label_column, "factory_kwargs": self.factory_kwargs}
        return load_dataset(self.name, seed=self.seed, **{k: v for k, v in options.items() if v})
