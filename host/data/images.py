"""Image classification sets from a folder: the real NEU-DET or a user's own images.

Two layouts are read:
  - class sub-folders: path/<class>/*.jpg (Kaggle's NEU-DET: pass NEU-DET/train/images);
  - flat NEU-style names: path/<class>_<number>.<ext>, e.g. crazing_1.jpg, rolled-in_scale_23.bmp
    (the class is the name before the last underscore).
Files that fail to decode are left out and listed in `DataSplits.skipped_files`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image

from host.data.splits import DataError, DataSplits, build_splits, stratified_indices

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_FLAT_NAME = re.compile(r"^(?P<cls>.+)_\d+$")


def image_folder(
    path: str | Path,
    image_size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    rgb: bool = False,
) -> DataSplits:
    """Load, resize (bilinear) to image_size x image_size and split per class.

    Grey by default (NEU-DET is grey): each image is converted to one grey level in [0, 1] and
    replicated to 3 channels; rgb=True keeps colour instead. Normalised with the training split's
    mean and std (one scalar each for grey, one per channel for rgb). `test_fraction` of each
    class goes to test, then `val_fraction` of the rest to validation.
    """
    if image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist or is not a folder; pass the folder "
            "that holds the class sub-folders or the <class>_<number>.jpg files"
        )
    labelled = _list_images(root)
    classes = sorted({cls for cls, _ in labelled})
    if len(classes) < 2:
        raise DataError(
            f"{root} holds images of one class only ({classes[0]!r}); a classifier "
            "needs at least two: pass the folder that holds one sub-folder per class, "
            "or files named <class>_<number>.jpg"
        )
    index = {cls: i for i, cls in enumerate(classes)}

    pixels, labels, skipped, reasons = [], [], [], []
    for cls, file in labelled:
        try:
            with Image.open(file) as image:
                pixels.append(_decode(image, image_size, rgb))
            labels.append(index[cls])
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            skipped.append(str(file.relative_to(root)))
            reasons.append(f"{file.name}: {error}")
    if not pixels:
        raise DataError(
            f"none of the {len(labelled)} images under {root} could be decoded "
            f"(first: {'; '.join(reasons[:3])}); check that they are image files "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    if skipped:
        log.warning(
            "skipped %d of %d images that failed to decode under %s (first: %s)",
            len(skipped),
            len(labelled),
            root,
            reasons[0],
        )

    x_raw = np.stack(pixels)
    y = np.array(labels)
    found = set(y.tolist())
    if len(found) < 2:
        raise DataError(
            f"only class {classes[found.pop()]!r} has images that decode under {root}; "
            "a classifier needs at least two classes"
        )
    indices = stratified_indices(y, seed, val_fraction, test_fraction)
    channels = "RGB levels in [0, 1]" if rgb else "grey level in [0, 1], replicated to 3 channels"
    return build_splits(
        f"image-folder:{root.name}",
        classes,
        x_raw,
        y,
        indices,
        normalisation_axes=(2, 3) if rgb else (1, 2, 3),
        raw=channels,
        skipped_files=tuple(skipped),
    )


def _list_images(root: Path) -> list[tuple[str, Path]]:
    """(class, file) pairs, sorted; class sub-folders or flat <class>_<number> names."""
    loose = sorted(f for f in root.iterdir() if _is_image(f))
    folders = {
        d.name: sorted(f for f in d.iterdir() if _is_image(f))
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }
    folders = {name: files for name, files in folders.items() if files}
    if loose and folders:
        raise DataError(
            f"{root} mixes loose images ({loose[0].name}, ...) with class sub-folders "
            f"({', '.join(folders)}); keep one layout"
        )
    if folders:
        return [(cls, f) for cls, files in folders.items() for f in files]
    if not loose:
        raise DataError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root} or its sub-folders; "
            "pass the folder whose sub-folders (one per class) hold the images, "
            "e.g. NEU-DET/train/images, or the folder of <class>_<number> files"
        )
    labelled = []
    for file in loose:
        match = _FLAT_NAME.match(file.stem)
        if match is None:
            raise DataError(
                f"cannot tell the class of {file.name} in {root}: name files "
                "<class>_<number>.<ext> (e.g. crazing_12.jpg) or put them in one "
                "sub-folder per class"
            )
        labelled.append((match["cls"], file))
    return labelled


def _is_image(file: Path) -> bool:
    return file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES


def _decode(image: Image.Image, image_size: int, rgb: bool) -> np.ndarray:
    """float32 (3, image_size, image_size) in [0, 1]."""
    resized = image.convert("RGB" if rgb else "L").resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    if rgb:
        return array.transpose(2, 0, 1)
    return np.repeat(array[None], 3, axis=0)
