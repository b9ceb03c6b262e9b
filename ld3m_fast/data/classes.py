"""ImageNet-1k classes (index → wnid, names) and the ten-class ImageNet subsets used by GLaD/LD3M.

The index → wnid list ships as ``imagenet_classes.txt`` (the standard order: wnids sorted, index 0 =
n01440764 "tench"). A subset's label of a class is its position in the subset's list.
"""
from __future__ import annotations

import functools
import operator
from pathlib import Path
from typing import Sequence

from ..errors import InvalidArgumentError, InvalidTypeError

IMAGENET_SUBSETS: dict[str, tuple[int, ...]] = {
    "imagenet-a": (255, 376, 984, 364, 500, 986, 333, 576, 148, 135),
    "imagenet-b": (129, 916, 90, 275, 995, 874, 102, 259, 685, 139),
    "imagenet-c": (565, 94, 554, 535, 92, 392, 291, 136, 324, 11),
    "imagenet-d": (9, 258, 13, 262, 19, 339, 321, 24, 93, 322),
    "imagenet-e": (816, 96, 100, 145, 739, 713, 783, 76, 688, 326),
    "imagenette": (0, 217, 482, 491, 497, 566, 569, 571, 574, 701),
    "imagewoof": (193, 182, 258, 162, 155, 167, 159, 273, 207, 229),
    "imagefruit": (953, 954, 949, 950, 951, 957, 952, 945, 943, 948),
    "imagemeow": (281, 282, 283, 284, 285, 291, 292, 290, 289, 287),
    "imagesquawk": (84, 130, 88, 144, 145, 22, 96, 9, 100, 89),
    "imageyellow": (309, 986, 954, 951, 987, 779, 599, 291, 72, 11),
}
NUM_IMAGENET_CLASSES = 1000
_CLASS_FILE = Path(__file__).resolve().parent / "imagenet_classes.txt"


@functools.lru_cache(maxsize=1)
def _imagenet_table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    wnids, names = [], []
    for line in _CLASS_FILE.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        wnid, _, synonyms = line.partition("\t")
        wnids.append(wnid.strip())
        names.append(synonyms.split(",")[0].strip())
    if len(wnids) != NUM_IMAGENET_CLASSES or len(set(wnids)) != NUM_IMAGENET_CLASSES:
        raise RuntimeError(f"{_CLASS_FILE} is damaged: {len(wnids)} lines, {len(set(wnids))} distinct wnids "
                           f"(expected {NUM_IMAGENET_CLASSES})")
    return tuple(wnids), tuple(names)


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in index order."""
    return _imagenet_table()[0]


def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (first synonym) in index order."""
    return _imagenet_table()[1]


def class_index(c, count: int, what: str) -> int:
    """``c`` as a class index in ``[0, count)`` (an int, not a bool), or a clear error naming ``what``."""
    try:
        if isinstance(c, bool):
            raise TypeError
        c = operator.index(c)
    except TypeError:
        raise InvalidTypeError(f"{what} must be an int class index in 0..{count - 1}, got {c!r}") from None
    if not 0 <= c < count:
        raise InvalidArgumentError(f"{what}: class index {c} is out of range 0..{count - 1}")
    return c


def check_imagenet_classes(classes: Sequence[int], arg: str = "classes") -> tuple[int, ...]:
    """``classes`` as a tuple of distinct ImageNet-1k indices, or a ValueError naming ``arg``."""
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise InvalidTypeError(f"`{arg}` must be a list of ImageNet-1k class indices (ints), got {classes!r}")
    out = [class_index(c, NUM_IMAGENET_CLASSES, f"`{arg}` (ImageNet-1k classes 0–999)") for c in classes]
    if not out:
        raise InvalidArgumentError(f"`{arg}` is empty")
    if len(set(out)) != len(out):
        raise InvalidArgumentError(f"`{arg}` lists a class twice: {out}")
    return tuple(out)


def subset_classes(name: str) -> tuple[int, ...]:
    """ImageNet-1k indices of the subset ``name`` (label k = the k-th)."""
    try:
        return IMAGENET_SUBSETS[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown ImageNet subset {name!r}; known: {', '.join(IMAGENET_SUBSETS)} "
                                   "(or 'custom' with classes=[ImageNet indices])") from None
