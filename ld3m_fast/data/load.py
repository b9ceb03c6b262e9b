"""``load_dataset``: every data set of the package by name, with one signature."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidArgumentError, InvalidTypeError, MissingFileError
from .classes import IMAGENET_SUBSETS
from .dataset import ImageDataset
from .fashion import embedded_fashion_mnist, fashion_mnist
from .folders import class_folder
from .imagenet import imagenet_subset

DATASETS = ("fashion-mnist", "fashion-mnist-full", *IMAGENET_SUBSETS)
_TEST_SPLITS = ("test", "val")


def _names() -> str:
    return ", ".join(DATASETS) + ", or a folder path (root/<class>/<images>)"


def _fashion(name: str, root, split: str, resolution, kw: dict) -> ImageDataset:
    if kw:
        raise InvalidTypeError(f"load_dataset({name!r}): unexpected arguments {sorted(kw)}")
    split = "test" if split in _TEST_SPLITS else split
    if name == "fashion-mnist":
        if root is not None:
            raise InvalidArgumentError(
                "load_dataset('fashion-mnist') is the subset embedded in the package and takes no "
                "root; use 'fashion-mnist-full' with root=<folder with the IDX files>")
        ds = embedded_fashion_mnist(split)
    else:
        ds = fashion_mnist(root, split)
    return ds if resolution is None else ds.resize(resolution)


def _folder_split(path: Path, split: str) -> Path:
    """``path/<split>`` (val and test standing for each other) if ``path`` has split folders, else ``path``."""
    aliases = (split,) + (tuple(s for s in _TEST_SPLITS if s != split) if split in _TEST_SPLITS else ())
    for s in aliases:
        if (path / s).is_dir():
            return path / s
    if any((path / s).is_dir() for s in ("train", *_TEST_SPLITS)):
        raise MissingFileError(f"load_dataset: {path} has split folders but no {split!r} folder")
    if split != "train":
        raise MissingFileError(f"load_dataset: {path} has no {'/'.join(aliases)} folder; a folder without "
                                "split folders serves split='train' only")
    return path


def load_dataset(name: str | os.PathLike, root: str | os.PathLike | None = None, split: str = "train",
                 resolution: int | None = None, **kw) -> ImageDataset:
    """A data set by name.

    * ``'fashion-mnist'``: the subset embedded in the package (offline); ``'fashion-mnist-full'``: the full
      IDX files from ``root`` or Debian's ``dataset-fashion-mnist``. Splits 'train'/'test'; ``resolution``
      resizes the 28² images.
    * an ImageNet subset (``IMAGENET_SUBSETS``): ``root`` = the ImageNet folder with train/ and val/;
      ``resolution`` default 128; ``**kw`` go to ``imagenet_subset`` (cache_dir, on_error, max_per_class, …).
    * a folder path (or ``'folder'`` with ``root=path``): ``class_folder`` on ``path`` (or on ``path/<split>``
      when it has split folders).

    'val' and 'test' are accepted for one another.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise InvalidTypeError(f"load_dataset: `name` must be a data set name or a folder path, got {name!r}")
    if not isinstance(split, str):
        raise InvalidTypeError(f"load_dataset: `split` must be 'train', 'val' or 'test', got {split!r}")
    key = os.fspath(name)
    if key in ("fashion-mnist", "fashion-mnist-full"):
        return _fashion(key, root, split, resolution, kw)
    if key in IMAGENET_SUBSETS:
        if root is None:
            raise InvalidArgumentError(f"load_dataset({key!r}) needs root=<ImageNet folder holding train/ and val/>")
        split = "val" if split in _TEST_SPLITS else split
        return imagenet_subset(key, root, split, 128 if resolution is None else resolution, **kw)
    if key == "folder" or isinstance(name, os.PathLike) or os.sep in key or Path(key).is_dir():
        if key == "folder" and root is None:
            raise InvalidArgumentError("load_dataset('folder') needs root=<folder holding one sub-folder per class>")
        if key != "folder" and root is not None:
            raise InvalidArgumentError(f"load_dataset: got the folder {key!r} as `name` and root={os.fspath(root)!r}; "
                                       "pass the folder once (as name, or as root with name='folder')")
        path = Path(root if key == "folder" else key).expanduser()
        if not path.is_dir():
            raise MissingFileError(f"load_dataset: folder {os.fspath(path)!r} does not exist")
        kw.setdefault("name", path.resolve().name)
        return class_folder(_folder_split(path, split), 128 if resolution is None else resolution, **kw)
    raise InvalidArgumentError(f"load_dataset: unknown data set {key!r}; known: {_names()}")
