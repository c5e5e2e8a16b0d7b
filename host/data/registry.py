"""Data sets by name: load_dataset("synthetic-neu-det"), load_dataset("csv", path=..., ...)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from host.data.images import image_folder
from host.data.splits import DataError, DataSplits
from host.data.synthetic import synthetic_neu_det
from host.data.tabular import breast_cancer, csv_table, sklearn_digits

DATASETS: dict[str, Callable[..., DataSplits]] = {
    "synthetic-neu-det": synthetic_neu_det,
    "neu-det-folder": image_folder,
    "digits": sklearn_digits,
    "breast-cancer": breast_cancer,
    "csv": csv_table,
}


def load_dataset(name: str, **options: object) -> DataSplits:
    """The data set `name` built with `options` (the loader's keyword arguments)."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choices: {', '.join(DATASETS)}")
    loader = DATASETS[name]
    parameters = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise DataError(f"data set {name!r} takes no option {', '.join(unknown)}; options: {', '.join(parameters)}")
    missing = [p.name for p in parameters.values() if p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise DataError(f"data set {name!r} needs {', '.join(missing)}")
    return loader(**options)


@dataclass(frozen=True)
class DataConfig:
    """`[data]`: which data set, its options, the split seed and the loaders' batch size."""

    name: str = "synthetic-neu-det"
    path: str = ""  # image folder or CSV file (neu-det-folder, csv)
    label_column: str = ""  # csv
    seed: int = 0  # split and shuffling order
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size = {self.batch_size}: give at least 1")

    def load(self) -> DataSplits:
        """The data set, split with `seed`, with the options given (empty ones are unset)."""
        options = {"path": self.path, "label_column": self.label_column}
        return load_dataset(self.name, seed=self.seed, **{k: v for k, v in options.items() if v})
