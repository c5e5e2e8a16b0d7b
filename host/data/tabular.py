"""Small real data sets shipped with scikit-learn, and users' own tables from CSV files."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits

from host.data.splits import DataError, DataSplits, build_splits, stratified_indices


def sklearn_digits(seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> DataSplits:
    """scikit-learn's 1,797 handwritten digits (10 classes), input shape (1, 8, 8).

    Raw pixels are ink levels 0..16 scaled to [0, 1], then normalised with the training split's
    mean and std (one scalar each). Flatten for an MLP (host.models' "mlp" does).
    """
    bunch = load_digits()
    x_raw = (bunch.images / 16.0).astype(np.float32)[:, None]
    indices = stratified_indices(bunch.target, seed, val_fraction, test_fraction)
    return build_splits(
        "digits",
        [str(c) for c in bunch.target_names],
        x_raw,
        bunch.target,
        indices,
        normalisation_axes=(1, 2, 3),
        raw="ink level in [0, 1]",
    )


def breast_cancer(seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> DataSplits:
    """scikit-learn's Wisconsin breast cancer table: 569 samples, 30 features, 2 classes.

    Each feature is standardised with the training split's mean and std.
    """
    bunch = load_breast_cancer()
    indices = stratified_indices(bunch.target, seed, val_fraction, test_fraction)
    return build_splits(
        "breast-cancer",
        [str(c) for c in bunch.target_names],
        bunch.data.astype(np.float32),
        bunch.target,
        indices,
        normalisation_axes=(),
        raw="features as in the source table",
    )


def csv_table(
    path: str | Path, label_column: str, seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2
) -> DataSplits:
    """A CSV file with a header row: every column but `label_column` is a numeric feature.

    Labels (any text) map to class indices in sorted order (numeric order when all labels are
    numbers). Features are standardised with the training split's mean and std.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"CSV file {file} does not exist; pass the path of a CSV with a header row")
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        rows = [(reader.line_num, row) for row in reader if row]
    if not header or not rows:
        raise DataError(
            f"{file} is empty or has a header only; it needs a header row and at least one data row per class"
        )
    header = [name.strip() for name in header]
    if label_column not in header:
        raise DataError(
            f"no column {label_column!r} in {file}; columns present: "
            f"{', '.join(header)}; pass one of them as label_column"
        )
    label_at = header.index(label_column)
    feature_at = [i for i in range(len(header)) if i != label_at]
    if not feature_at:
        raise DataError(f"{file} has only the label column {label_column!r}; add feature columns")

    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{file} line {line} has {len(row)} fields, the header has {len(header)}; fix that line")
    x_raw = np.stack([_numeric_column(rows, i, header[i], file) for i in feature_at], axis=1)
    names = [row[label_at].strip() for _, row in rows]
    if "" in names:
        raise DataError(
            f"label column {label_column!r} of {file} is empty at line "
            f"{rows[names.index('')][0]}; fill in every label or drop those rows"
        )
    classes = sorted(set(names), key=_label_order)
    if len(classes) < 2:
        raise DataError(
            f"label column {label_column!r} of {file} holds one class only "
            f"({classes[0]!r}); a classifier needs at least two"
        )
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[name] for name in names])
    indices = stratified_indices(labels, seed, val_fraction, test_fraction)
    return build_splits(
        f"csv:{file.name}",
        classes,
        x_raw,
        labels,
        indices,
        normalisation_axes=(),
        raw=f"columns {', '.join(header[i] for i in feature_at)}",
    )


def _numeric_column(rows: list[tuple[int, list[str]]], at: int, column: str, file: Path) -> np.ndarray:
    """Column `at` as float32; a DataError names the first cell that is not a finite number."""
    cells = [row[at] for _, row in rows]
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        values = np.array([_cell(text, column, file, line) for (line, _), text in zip(rows, cells, strict=True)])
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        line, text = rows[bad[0]][0], cells[bad[0]]
        raise DataError(
            f"column {column!r} of {file} has a missing or infinite value at line "
            f"{line} ({text!r}); fill it in or drop the row"
        )
    return values.astype(np.float32)


def _cell(text: str, column: str, file: Path, line: int) -> float:
    """A number, or NaN for an empty cell; text is an error."""
    if not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(
            f"column {column!r} of {file} is not numeric (line {line}: {text!r}); "
            "encode it as numbers or drop the column"
        ) from None


def _label_order(label: str) -> tuple[int, float, str]:
    """Numbers first in numeric order ("2" before "10"), then text."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
