"""Fashion-MNIST: the full set from IDX files, and the subset shipped inside the package.

The full set (60 000 + 10 000 images, 28×28, 10 classes) is read from a folder holding the four
IDX files (gzip or not), by default Debian's package ``dataset-fashion-mnist``. The embedded subset
(``embedded/fashion-mnist/``: the first 400 training and 200 test images of every class, made by
``python scripts/make_embedded_fashion_mnist.py``) needs nothing outside the package and is the offline
default. Fashion-MNIST is © 2017 Zalando SE, MIT licence (notice beside the embedded files).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidArgumentError, MissingFileError
from .dataset import ImageDataset
from .idx import read_idx

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
# per-channel mean/std of the 60 000 training images in [0, 1] (0.28604, 0.35302)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
EMBEDDED_FASHION_MNIST = Path(__file__).resolve().parent / "embedded" / "fashion-mnist"
EMBEDDED_PER_CLASS = {"train": 400, "test": 200}  # images of every class in the embedded subset
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _check_split(split: str) -> str:
    if split not in FASHION_MNIST_FILES:
        raise InvalidArgumentError(f"Fashion-MNIST: `split` must be 'train' or 'test', got {split!r}")
    return split


def find_idx_file(folder: str | os.PathLike, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (plain first)."""
    for name in (stem, stem + ".gz"):
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def _folder_with_files(folder: Path, split: str) -> Path | None:
    """The folder among ``folder`` and its usual sub-folders that holds the split's two IDX files."""
    for cand in (folder, folder / "FashionMNIST" / "raw", folder / "fashion-mnist", folder / "raw"):
        if all(find_idx_file(cand, stem) for stem in FASHION_MNIST_FILES[split]):
            return cand
    return None


def read_fashion_mnist(folder: str | os.PathLike, split: str = "train",
                       name: str = "fashion-mnist") -> ImageDataset:
    """The ``split`` of Fashion-MNIST stored as IDX files in ``folder`` (checked for shape and labels)."""
    split = _check_split(split)
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    image_path, label_path = find_idx_file(folder, image_stem), find_idx_file(folder, label_stem)
    if image_path is None or label_path is None:
        raise MissingFileError(f"Fashion-MNIST: {Path(folder) / image_stem}[.gz] and "
                                f"{Path(folder) / label_stem}[.gz] are needed")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InvalidArgumentError(f"Fashion-MNIST: {image_path} holds {images.dtype} {images.shape}, "
                                   "expected uint8 N×28×28 images")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise InvalidArgumentError(f"Fashion-MNIST: {label_path} holds {labels.shape} labels for "
                                   f"{images.shape[0]} images in {image_path}")
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise InvalidArgumentError(f"Fashion-MNIST: {label_path} has label {int(labels.max())}; classes are 0–9")
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES, name,
                        FASHION_MNIST_MEAN, FASHION_MNIST_STD)


def fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> ImageDataset:
    """The full Fashion-MNIST ``split`` ('train': 60 000, 'test': 10 000 images) from IDX files.

    ``root``: a folder with ``train-images-idx3-ubyte[.gz]`` etc. (also found in ``root/FashionMNIST/raw``);
    default: Debian's ``/usr/share/datasets/fashion-mnist``.
    """
    split = _check_split(split)
    folder = Path(root if root is not None else DEBIAN_FASHION_MNIST).expanduser()
    hint = ("Install Debian's package (`apt-get install dataset-fashion-mnist`, files in "
            f"{DEBIAN_FASHION_MNIST}) or pass root=<folder with the IDX files>; the subset embedded in "
            "the package works offline: embedded_fashion_mnist() or load_dataset('fashion-mnist').")
    if not folder.is_dir():
        where = f"root={os.fspath(root)!r}" if root is not None else f"default folder {folder}"
        raise MissingFileError(f"Fashion-MNIST: the {where} does not exist. {hint}")
    found = _folder_with_files(folder, split)
    if found is None:
        stems = ", ".join(s + "[.gz]" for s in FASHION_MNIST_FILES[split])
        raise MissingFileError(f"Fashion-MNIST: {folder} lacks the {split} files ({stems}). {hint}")
    return read_fashion_mnist(found, split, name="fashion-mnist-full")


def embedded_fashion_mnist(split: str = "train") -> ImageDataset:
    """The Fashion-MNIST subset shipped with the package: 400 (train) or 200 (test) images per class."""
    split = _check_split(split)
    if _folder_with_files(EMBEDDED_FASHION_MNIST, split) is None:
        raise MissingFileError(f"the embedded Fashion-MNIST files are missing from {EMBEDDED_FASHION_MNIST} "
                                "(broken install?); recreate them with `python scripts/make_embedded_fashion_mnist.py`")
    return read_fashion_mnist(EMBEDDED_FASHION_MNIST, split, name="fashion-mnist")
