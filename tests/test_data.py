"""host.data: the synthetic NEU-DET set, image folders, scikit-learn sets, CSV tables, registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import RidgeClassifierCV

from host.data import (
    DATASETS,
    NEU_CLASSES,
    DataConfig,
    DataError,
    DataSplits,
    breast_cancer,
    csv_table,
    image_folder,
    load_dataset,
    make_loaders,
    sklearn_digits,
    synthetic_neu_det,
)
from host.data.splits import Normalisation, stratified_indices
from host.data.synthetic import synthetic_neu_det_holdout


@pytest.fixture(scope="module")
def neu() -> DataSplits:
    return synthetic_neu_det(seed=0)


# --- splits ------------------------------------------------------------------------------------


def test_stratified_indices_partition_each_class_with_rounded_counts() -> None:
    labels = np.repeat([0, 1, 2], [300, 300, 10])
    parts = stratified_indices(labels, seed=3, val_fraction=0.2, test_fraction=0.2)
    everything = np.concatenate([parts.train, parts.val, parts.test])
    assert sorted(everything.tolist()) == list(range(len(labels)))
    for cls, (n_train, n_val, n_test) in {0: (192, 48, 60), 1: (192, 48, 60), 2: (6, 2, 2)}.items():
        assert (labels[parts.train] == cls).sum() == n_train
        assert (labels[parts.val] == cls).sum() == n_val
        assert (labels[parts.test] == cls).sum() == n_test
    again = stratified_indices(labels, seed=3, val_fraction=0.2, test_fraction=0.2)
    assert np.array_equal(again.test, parts.test)


def test_stratified_indices_refuse_an_empty_split_and_bad_fractions() -> None:
    with pytest.raises(DataError, match="add samples"):
        stratified_indices(np.array([0, 0, 1, 1]), seed=0, val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(DataError, match="test_fraction"):
        stratified_indices(np.array([0, 1]), seed=0, val_fraction=0.2, test_fraction=1.0)


def test_data_splits_check_dtypes_and_shapes() -> None:
    norm = Normalisation(mean=np.zeros(2, np.float32), std=np.ones(2, np.float32), raw="x")
    x, y = np.zeros((3, 2), np.float32), np.zeros(3, np.int64)
    with pytest.raises(TypeError, match="float32"):
        DataSplits("t", ("a", "b"), (2,), x.astype(np.float64), y, x, y, x, y, norm)
    with pytest.raises(ValueError, match="input_shape"):
        DataSplits("t", ("a", "b"), (3,), x, y, x, y, x, y, norm)
    with pytest.raises(ValueError, match="labels outside"):
        DataSplits("t", ("a", "b"), (2,), x, y + 2, x, y, x, y, norm)


# --- synthetic NEU-DET -------------------------------------------------------------------------


def test_synthetic_neu_det_sizes_and_class_balance(neu: DataSplits) -> None:
    assert (
        neu.classes
        == NEU_CLASSES
        == ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
    )
    assert neu.input_shape == (3, 64, 64)
    assert (len(neu.y_train), len(neu.y_val), len(neu.y_test)) == (1152, 720, 1800)
    for y, per_class in ((neu.y_train, 192), (neu.y_val, 120), (neu.y_test, 300)):
        assert np.bincount(y, minlength=6).tolist() == [per_class] * 6


def test_the_papers_split_is_the_first_draw_and_the_extra_images_are_fresh(neu: DataSplits) -> None:
    """With no extra images the split is NEU-DET's (1,152 / 288 / 360); the defaults add fresh
    images to val and test only, after those: the training split, and so a cached teacher, is the
    same, and no extra image is one of the 1,800, of the other split's extras or of the holdout."""
    paper = synthetic_neu_det(seed=0, extra_val_per_class=0, extra_test_per_class=0)
    assert (len(paper.y_train), len(paper.y_val), len(paper.y_test)) == (1152, 288, 360)
    assert np.array_equal(paper.x_train, neu.x_train) and paper.cache_id == neu.cache_id
    assert np.array_equal(paper.x_val, neu.x_val[:288]) and np.array_equal(paper.x_test, neu.x_test[:360])
    holdout = neu.normalisation.apply(synthetic_neu_det_holdout(0, 20)[0])
    for extra, others in (
        (neu.x_val[288:], [paper.x_train, paper.x_val, paper.x_test, neu.x_test[360:], holdout]),
        (neu.x_test[360:], [paper.x_train, paper.x_val, paper.x_test, holdout]),
    ):
        assert _nearest(extra[::10], np.concatenate(others)) > 0.1
    small = {"image_size": 16, "extra_val_per_class": 0, "extra_test_per_class": 6}
    data = DataConfig(name="synthetic-neu-det", factory_kwargs=small).load()  # as [data] factory_kwargs sets them
    assert (len(data.y_val), len(data.y_test), data.input_shape) == (288, 396, (3, 16, 16))
    for bad in ({"extra_val_per_class": -1}, {"extra_test_per_class": "many"}):
        with pytest.raises(DataError, match="give whole numbers, 0 or more"):
            DataConfig(name="synthetic-neu-det", factory_kwargs={**small, **bad}).load()
    with pytest.raises(DataError, match="takes no option extra_images"):
        DataConfig(name="synthetic-neu-det", factory_kwargs={"extra_images": 1}).load()


def _nearest(x: np.ndarray, seen: np.ndarray) -> float:
    """The smallest max-abs distance (on a fixed subsample of pixels) between an image of `x` and one of `seen`."""
    a, b = x.reshape(len(x), 1, -1)[:, :, ::97], seen.reshape(1, len(seen), -1)[:, :, ::97]
    return float(np.abs(a - b).max(axis=2).min())


def test_synthetic_neu_det_values(neu: DataSplits) -> None:
    for which in ("train", "val", "test"):
        x, y = neu.split(which)
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert not x.flags.writeable
        assert np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2])
        grey = x * neu.normalisation.std + neu.normalisation.mean
        assert grey.min() >= -1e-5 and grey.max() <= 1 + 1e-5
    assert abs(float(neu.x_train.mean())) < 1e-3
    assert float(neu.x_train.std()) == pytest.approx(1.0, abs=1e-3)
    assert 0.3 < float(neu.normalisation.mean.item()) < 0.7
    # Brightness is drawn independently of the class: per-class mean grey levels stay close.
    means = [float(neu.x_train[neu.y_train == c].mean()) for c in range(6)]
    assert max(means) - min(means) < 0.2


def test_synthetic_neu_det_is_deterministic_for_a_seed() -> None:
    first = synthetic_neu_det(seed=5, image_size=32)
    second = synthetic_neu_det(seed=5, image_size=32)
    other = synthetic_neu_det(seed=6, image_size=32)
    assert first.input_shape == (3, 32, 32)
    for which in ("train", "val", "test"):
        assert np.array_equal(first.split(which)[0], second.split(which)[0])
        assert np.array_equal(first.split(which)[1], second.split(which)[1])
    assert not np.allclose(first.x_train, other.x_train)


def test_the_holdout_draws_fresh_images_of_the_same_classes(neu: DataSplits) -> None:
    x_raw, y = synthetic_neu_det_holdout(0, 20)
    assert x_raw.shape == (120, 3, 64, 64) and np.array_equal(np.bincount(y), [20] * 6)
    assert np.array_equal(x_raw, synthetic_neu_det_holdout(0, 20)[0])  # deterministic for a seed
    assert not np.allclose(x_raw, synthetic_neu_det_holdout(1, 20)[0])
    x = neu.normalisation.apply(x_raw)
    assert _nearest(x, np.concatenate([neu.x_train, neu.x_val, neu.x_test])) > 0.1  # none is in the splits
    assert abs(float(x.mean())) < 0.1 and 0.8 < float(x.std()) < 1.2  # the same distribution's statistics
    with pytest.raises(DataError, match="per_class must be at least 1"):
        synthetic_neu_det_holdout(0, 0)


def test_a_linear_model_on_raw_pixels_stays_far_below_a_cnn(neu: DataSplits) -> None:
    """ResNet18 reaches >= 0.95 on this set (bench/data_difficulty.py); a linear classifier on
    raw pixels (least squares, ridge penalty chosen by cross-validation) must not come close."""
    model = RidgeClassifierCV(alphas=[1.0, 1e2, 1e4, 1e6])
    model.fit(neu.x_train[:, 0].reshape(len(neu.x_train), -1), neu.y_train)
    accuracy = model.score(neu.x_test[:, 0].reshape(len(neu.x_test), -1), neu.y_test)
    assert accuracy < 0.75


def test_loaders_shuffle_train_by_seed_only(neu: DataSplits) -> None:
    def first_labels(seed: int, split: str) -> list[int]:
        return next(iter(getattr(make_loaders(neu, batch_size=32, seed=seed), split)))[1].tolist()

    x, y = next(iter(make_loaders(neu, batch_size=32, seed=0).train))
    assert x.shape == (32, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert first_labels(0, "train") == first_labels(0, "train")
    assert first_labels(0, "train") != first_labels(1, "train")
    assert first_labels(0, "test") == neu.y_test[:32].tolist() == first_labels(1, "test")
    assert sum(len(b) for _, b in make_loaders(neu, batch_size=100).val) == 720


# --- image folders -----------------------------------------------------------------------------


def _write_image(file: Path, level: int, size: int = 20) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size), level, np.uint8)
    pixels[::4] = 255 - level
    Image.fromarray(pixels).save(file)


def _flat_folder(root: Path, per_class: int = 5) -> Path:
    for i in range(1, per_class + 1):
        _write_image(root / f"crazing_{i}.jpg", 40)
        _write_image(root / f"rolled-in_scale_{i}.bmp", 200)
        _write_image(root / f"scratches_{i}.png", 120)
    return root


def test_image_folder_reads_neu_flat_names(tmp_path: Path) -> None:
    data = image_folder(_flat_folder(tmp_path / "NEU"), image_size=16)
    assert data.classes == ("crazing", "rolled-in_scale", "scratches")
    assert data.input_shape == (3, 16, 16)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (9, 3, 3)
    assert data.skipped_files == ()
    grey = data.x_train * data.normalisation.std + data.normalisation.mean
    assert grey.min() >= -1e-5 and grey.max() <= 1 + 1e-5
    # Dark crazing images, bright rolled-in scale ones: the labels follow the files.
    crazing = grey[data.y_train == 0].mean()
    assert crazing < grey[data.y_train == 2].mean() < grey[data.y_train == 1].mean()


def test_image_folder_reads_class_subfolders_and_skips_a_corrupt_file(tmp_path: Path) -> None:
    for i in range(5):
        _write_image(tmp_path / "ok" / f"{i}.png", 30)
        _write_image(tmp_path / "defect" / f"img{i}.JPG", 220)
    (tmp_path / "defect" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "defect" / "notes.txt").write_text("ignored: not an image suffix")
    _write_image(tmp_path / ".thumbnails" / "0.png", 0)  # hidden folders are not classes
    data = image_folder(tmp_path, image_size=8, seed=1, rgb=True)
    assert data.classes == ("defect", "ok")
    assert data.input_shape == (3, 8, 8)
    assert data.normalisation.mean.shape == (3, 1, 1)
    assert data.skipped_files == (str(Path("defect") / "broken.jpg"),)
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 10


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        image_folder(tmp_path / "missing")
    # Kaggle's NEU-DET root: the images lie two levels down (train/images/<class>/).
    _write_image(tmp_path / "empty" / "train" / "images" / "crazing" / "crazing_1.jpg", 50)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images .* e.g. NEU-DET/train/images"):
        image_folder(tmp_path / "empty")
    for i in range(4):
        _write_image(tmp_path / "one" / f"crazing_{i}.png", 50)
    with pytest.raises(DataError, match="one class only"):
        image_folder(tmp_path / "one")
    for i in range(4):
        _write_image(tmp_path / "sub" / "only" / f"{i}.png", 50)
    with pytest.raises(DataError, match="one class only"):
        image_folder(tmp_path / "sub")
    _write_image(tmp_path / "odd" / "picture.png", 50)
    with pytest.raises(DataError, match="cannot tell the class of picture.png"):
        image_folder(tmp_path / "odd")
    _write_image(tmp_path / "mixed" / "a" / "1.png", 50)
    _write_image(tmp_path / "mixed" / "b_1.png", 50)
    with pytest.raises(DataError, match="keep one layout"):
        image_folder(tmp_path / "mixed")


def test_image_folder_with_every_file_corrupt_is_an_error(tmp_path: Path) -> None:
    for name in ("a_1.jpg", "a_2.png", "b_1.bmp"):
        (tmp_path / name).write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="none of the 3 images"):
        image_folder(tmp_path)


# --- scikit-learn sets and CSV tables ----------------------------------------------------------


def test_sklearn_digits_and_breast_cancer_shapes() -> None:
    digits = sklearn_digits(seed=0)
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.y_train) + len(digits.y_val) + len(digits.y_test) == 1797
    assert digits.classes[:3] == ("0", "1", "2")
    cancer = breast_cancer(seed=0)
    assert cancer.input_shape == (30,) and cancer.classes == ("malignant", "benign")
    assert len(cancer.y_train) + len(cancer.y_val) + len(cancer.y_test) == 569
    assert np.allclose(cancer.x_train.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(cancer.x_train.std(axis=0), 1, atol=1e-3)
    assert cancer.normalisation.mean.shape == (30,)


def _write_csv(file: Path, text: str, encoding: str = "utf-8") -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text, encoding=encoding)
    return file


def test_csv_table_maps_labels_and_standardises(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 3 * 1.5},{10 if i % 2 else 2}\n" for i in range(20))
    # Spreadsheet export: a byte-order mark and spaces around the header names.
    data = csv_table(
        _write_csv(tmp_path / "fraud.csv", "amount, hour ,is_fraud\n" + rows, encoding="utf-8-sig"),
        label_column="is_fraud",
    )
    assert data.classes == ("2", "10")  # numeric order, not text order
    assert data.input_shape == (2,)
    assert np.bincount(np.concatenate([data.y_train, data.y_val, data.y_test])).tolist() == [10, 10]
    assert np.allclose(data.x_train.mean(axis=0), 0, atol=1e-5)
    raw = data.x_test * data.normalisation.std + data.normalisation.mean
    amount = raw[:, 0].round().astype(int)
    assert np.array_equal(np.where(amount % 2, 1, 0), data.y_test)
    assert data.normalisation.raw == "columns amount, hour"


def test_cache_id_names_the_content_not_just_the_file_name(tmp_path: Path) -> None:
    """The baseline cache keys on it: an edited file of the same name is another data set."""
    rows = "".join(f"{i},{i % 3 * 1.5},{10 if i % 2 else 2}\n" for i in range(20))
    first = csv_table(_write_csv(tmp_path / "a" / "t.csv", "x,y,label\n" + rows), label_column="label")
    edited = csv_table(
        _write_csv(tmp_path / "b" / "t.csv", "x,y,label\n" + rows.replace("1.5", "2.5")), label_column="label"
    )
    again = csv_table(tmp_path / "a" / "t.csv", label_column="label")
    assert first.name == edited.name and first.cache_id != edited.cache_id
    assert again.cache_id == first.cache_id and first.cache_id.startswith("csv_t.csv-")


def test_csv_table_errors(tmp_path: Path) -> None:
    good = _write_csv(tmp_path / "good.csv", "a,b,label\n1,2,x\n3,4,y\n")
    with pytest.raises(DataError, match="no column 'target'.*columns present: a, b, label"):
        csv_table(good, label_column="target")
    text = "a,kind,label\n" + "".join(f"{i},{'cash' if i else 1},{i % 2}\n" for i in range(10))
    with pytest.raises(DataError, match="column 'kind' .* not numeric"):
        csv_table(_write_csv(tmp_path / "text.csv", text), label_column="label")
    with pytest.raises(DataError, match="missing .* line 3"):
        csv_table(_write_csv(tmp_path / "gap.csv", "a,label\n1,x\n,y\n"), label_column="label")
    with pytest.raises(DataError, match="label column 'label' .* empty at line 3"):
        csv_table(_write_csv(tmp_path / "nolabel.csv", "a,label\n1,x\n2,\n"), label_column="label")
    single = "a,label\n" + "".join(f"{i},only\n" for i in range(10))
    with pytest.raises(DataError, match="one class only"):
        csv_table(_write_csv(tmp_path / "single.csv", single), label_column="label")
    for name, text in (("empty.csv", ""), ("header.csv", "a,label\n")):
        with pytest.raises(DataError, match="empty or has a header only"):
            csv_table(_write_csv(tmp_path / name, text), label_column="label")
    with pytest.raises(DataError, match="does not exist"):
        csv_table(tmp_path / "nope.csv", label_column="label")


# --- registry ----------------------------------------------------------------------------------


def test_load_dataset_by_name(tmp_path: Path) -> None:
    assert list(DATASETS) == ["synthetic-neu-det", "neu-det-folder", "digits", "breast-cancer", "csv"]
    assert load_dataset("breast-cancer", seed=1).input_shape == (30,)
    assert load_dataset("neu-det-folder", path=_flat_folder(tmp_path / "NEU"), image_size=8).num_classes == 3
    with pytest.raises(
        DataError,
        match="unknown data set 'mnist'; choices: synthetic-neu-det, neu-det-folder, digits, breast-cancer, csv",
    ):
        load_dataset("mnist")
    with pytest.raises(DataError, match="needs path, label_column"):
        load_dataset("csv")
    with pytest.raises(DataError, match="no option colour"):
        load_dataset("digits", colour=True)
