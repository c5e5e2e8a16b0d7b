"""Data sets as typed train / validation / test splits (DataSplits), by name or by loader."""

from host.data.images import image_folder
from host.data.loaders import SplitLoaders, make_loaders, tensor_dataset
from host.data.registry import DATASETS, DataConfig, load_dataset
from host.data.splits import DataError, DataSplits, Normalisation
from host.data.synthetic import NEU_CLASSES, synthetic_neu_det
from host.data.tabular import breast_cancer, csv_table, sklearn_digits

__all__ = [
    "DATASETS",
    "DataConfig",
    "NEU_CLASSES",
    "DataError",
    "DataSplits",
    "Normalisation",
    "SplitLoaders",
    "breast_cancer",
    "csv_table",
    "image_folder",
    "load_dataset",
    "make_loaders",
    "sklearn_digits",
    "synthetic_neu_det",
    "tensor_dataset",
]
