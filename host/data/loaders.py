"""PyTorch views of a DataSplits: TensorDatasets and DataLoaders (training split shuffled)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, TensorDataset

from host.data.splits import DataSplits


class SplitLoaders(NamedTuple):
    train: DataLoader
    val: DataLoader
    test: DataLoader


def tensor_dataset(splits: DataSplits, which: str) -> TensorDataset:
    """(inputs float32, labels int64) of "train", "val" or "test" as tensors (copies)."""
    x, y = splits.split(which)
    return TensorDataset(torch.tensor(x), torch.tensor(y))


def make_loaders(splits: DataSplits, batch_size: int = 32, seed: int = 0) -> SplitLoaders:
    """Loaders for the three splits; only train shuffles, in an order fixed by `seed`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return SplitLoaders(
        train=DataLoader(tensor_dataset(splits, "train"), batch_size=batch_size, shuffle=True, generator=generator),
        val=DataLoader(tensor_dataset(splits, "val"), batch_size=batch_size),
        test=DataLoader(tensor_dataset(splits, "test"), batch_size=batch_size),
    )
