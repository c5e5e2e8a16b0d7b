"""Data sets by name: load_dataset("synthetic-neu-det"), load_dataset("csv", path=..., ...)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

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
