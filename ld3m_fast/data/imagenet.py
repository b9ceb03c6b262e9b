"""Ten-class ImageNet subsets (GLaD/LD3M's ImageNet A–E, ImageNette, ImageWoof, …) from an ImageNet folder.

Expects the standard layout ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (the
validation images sorted into wnid folders). Only the subset's class folders are read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import InvalidArgumentError, InvalidTypeError, MissingFileError
from .classes import (
    check_imagenet_classes,
    imagenet_class_names,
    imagenet_wnids,
    subset_classes,
)
from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset
from .folders import ClassSource, load_class_folders
from .images import IMAGE_EXTENSIONS

IMAGENET_SPLITS = ("train", "val")


def imagenet_subset(name: str, root: str | os.PathLike, split: str = "train", resolution: int = 128, *,
                    classes: Sequence[int] | None = None, cache_dir=None, on_error: str = "stop",
                    max_per_class: int | None = None, progress: bool = True,
                    num_workers: int | None = None) -> ImageDataset:
    """The subset ``name`` (e.g. 'imagenette', 'imagenet-a') of the ImageNet tree at ``root``.

    ``name='custom'`` with ``classes=[ImageNet-1k indices]`` takes any classes. Label k is the k-th
    class of the list. Images: RGB, shorter side resized to ``resolution`` (antialiased bilinear),
    centre crop ``resolution``². ``max_per_class``: the first n files (sorted by name) per class.
    ``on_error``: 'stop' raises on an unreadable image, 'skip' warns and leaves it out.
    ``cache_dir``: None → ``$LD3M_FAST_CACHE`` or ``~/.cache/ld3m_fast``; False → no cache.
    """
    if not isinstance(name, str):
        raise InvalidTypeError(f"imagenet_subset: `name` must be a subset name, got {name!r}")
    if name == "custom":
        if classes is None:
            raise InvalidArgumentError("imagenet_subset('custom', ...) needs classes=[ImageNet-1k class indices]")
        class_ids = check_imagenet_classes(classes)
        ds_name = "imagenet-custom"
    else:
        class_ids = subset_classes(name)
        if classes is not None and tuple(int(c) for c in classes) != class_ids:
            raise InvalidArgumentError(f"imagenet_subset: `classes` is only for name='custom'; {name!r} has its own "
                                       f"classes {list(class_ids)}")
        ds_name = name
    if split not in IMAGENET_SPLITS:
        raise InvalidArgumentError(f"imagenet_subset: `split` must be 'train' or 'val', got {split!r}")
    if root is None:
        raise InvalidArgumentError("imagenet_subset: pass root=<ImageNet folder holding train/ and val/>")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise MissingFileError(f"imagenet_subset: ImageNet root {os.fspath(root)!r} does not exist; pass "
                                "root=<folder holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG>")
    split_dir = (base / split).resolve()
    if not split_dir.is_dir():
        present = sorted(p.name for p in base.iterdir() if p.is_dir())
        raise MissingFileError(f"imagenet_subset: no {split}/ folder in {base} (sub-folders there: "
                                f"{', '.join(present[:10]) or 'none'}); expected root/{split}/<wnid>/*.JPEG")

    wnids, names = imagenet_wnids(), imagenet_class_names()
    sources = []
    for label, idx in enumerate(class_ids):
        describe = f"class {label} of {ds_name} = ImageNet class {idx} ({wnids[idx]}, {names[idx]!r})"
        folder = split_dir / wnids[idx]
        if not folder.is_dir():
            hint = ""
            if split == "val" and any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(split_dir)[:100]):
                hint = (" — val/ holds the images directly; sort them into one folder per wnid (the standard "
                        "layout) first")
            raise MissingFileError(f"imagenet_subset: {describe} has no folder {folder}{hint}")
        sources.append(ClassSource(folder, describe))
    return load_class_folders(
        sources, [names[i] for i in class_ids], resolution, name=ds_name,
        description={"kind": "imagenet", "root": str(split_dir), "split": split, "classes": list(class_ids)},
        mean=IMAGENET_MEAN, std=IMAGENET_STD, imagenet_ids=class_ids, cache_dir=cache_dir, on_error=on_error,
        max_per_class=max_per_class, progress=progress, num_workers=num_workers)
