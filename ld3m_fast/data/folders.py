"""Loading images stored one folder per class (``root/<class>/*.jpg``), decoded once and cached.

``load_class_folders`` is the shared engine of ``class_folder`` (any such tree) and
``imagenet_subset``: it lists the files (sorted, so the order is reproducible), decodes them in a
few threads (PIL releases the GIL while decoding and resizing) into one preallocated uint8 tensor,
and keeps the result in the on-disk cache of ``cache.py``.
"""
from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import PIL
import torch
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError, InvalidTypeError, MissingFileError
from .cache import cache_key, load_cached, resolve_cache_dir, save_cached
from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset
from .images import IMAGE_EXTENSIONS, UnreadableImageError, load_image_array

ON_ERROR = ("stop", "skip")


@dataclass(frozen=True)
class ClassSource:
    """One class: its folder and how to name it in messages."""
    folder: Path
    describe: str


def check_resolution(resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise InvalidArgumentError(f"`resolution` must be a positive int (e.g. 128 or 256), got {resolution!r}")
    return resolution


def check_options(on_error, max_per_class, num_workers) -> tuple[str, int | None, int]:
    if on_error not in ON_ERROR:
        raise InvalidArgumentError(f"`on_error` must be 'stop' (raise on an unreadable image) or 'skip' (warn and "
                                   f"leave it out), got {on_error!r}")
    if max_per_class is not None and (isinstance(max_per_class, bool) or not isinstance(max_per_class, int)
                                      or max_per_class < 1):
        raise InvalidArgumentError(
            f"`max_per_class` must be None (all images) or a positive int, got {max_per_class!r}")
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise InvalidArgumentError(f"`num_workers` must be a positive int (decoding threads), got {num_workers!r}")
    return on_error, max_per_class, num_workers


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (by extension, any case; hidden files ignored), sorted."""
    with os.scandir(folder) as entries:
        names = [e.name for e in entries
                 if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()]
    return [Path(folder) / n for n in sorted(names)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "images"


def _decode(files: list[Path], labels: torch.Tensor, resolution: int, on_error: str, num_workers: int,
            progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Decode ``files`` into uint8 N×3×r×r; returns (images, labels, [(skipped path, reason)])."""
    n = len(files)
    images = torch.empty(n, 3, resolution, resolution, dtype=torch.uint8)
    target = images.numpy()  # filled through numpy: tiny torch ops stall on busy machines (OpenMP)

    def work(i: int):
        try:
            target[i] = load_image_array(files[i], resolution)
            return None
        except UnreadableImageError as exc:
            return exc

    keep = torch.ones(n, dtype=torch.bool)
    skipped: list[tuple[str, str]] = []
    pool = ThreadPoolExecutor(num_workers, thread_name_prefix="ld3m-decode") if num_workers > 1 else None
    results = pool.map(work, range(n)) if pool is not None else map(work, range(n))
    try:
        with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for i, err in enumerate(results):
                bar.update(1)
                if err is None:
                    continue
                if on_error == "stop":
                    raise UnreadableImageError(f"{err} — pass on_error='skip' to leave unreadable images "
                                               "out with a warning", err.path) from err.__cause__
                warnings.warn(f"ld3m_fast.data: skipping unreadable image: {err}", stacklevel=4)
                keep[i] = False
                skipped.append((err.path, str(err)))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if skipped:
        images, labels = images[keep], labels[keep]
    return images, labels, skipped


def load_class_folders(sources: Sequence[ClassSource], class_names: Sequence[str], resolution: int, *,
                       name: str, description: dict, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       imagenet_ids: Sequence[int] | None = None, cache_dir=None, on_error: str = "stop",
                       max_per_class: int | None = None, progress: bool = True,
                       num_workers: int | None = None) -> ImageDataset:
    """Images of ``sources[k].folder`` get label ``k``; decoded (or read from the cache) at ``resolution``²."""
    resolution = check_resolution(resolution)
    on_error, max_per_class, num_workers = check_options(on_error, max_per_class, num_workers)
    files: list[Path] = []
    labels: list[int] = []
    for label, source in enumerate(sources):
        found = list_image_files(source.folder)
        if not found:
            raise InvalidArgumentError(f"{source.describe}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                                       f"{source.folder}")
        found = found[:max_per_class] if max_per_class else found
        files += found
        labels += [label] * len(found)
    labels_t = torch.tensor(labels, dtype=torch.int64)

    cache_root = resolve_cache_dir(cache_dir)
    cache_path = key = None
    if cache_root is not None:
        key = cache_key({**description, "folders": [str(s.folder) for s in sources], "resolution": resolution,
                         "pillow": PIL.__version__}, files)
        stem = name + (f"-{description['split']}" if "split" in description else "")
        cache_path = cache_root / f"{_slug(stem)}-{resolution}px-{key[:24]}.safetensors"
        cached = load_cached(cache_path, key)
        if cached is not None:
            images, cached_labels, meta = cached
            _report_skipped_from_cache(meta.get("skipped", []), on_error, cache_path)
            return ImageDataset(images, cached_labels, class_names, name, mean, std, imagenet_ids)

    images, labels_t, skipped = _decode(files, labels_t, resolution, on_error, num_workers, progress,
                                        desc=f"decoding {name}")
    counts = torch.bincount(labels_t, minlength=len(sources))
    for label, source in enumerate(sources):
        if int(counts[label]) == 0:
            raise InvalidArgumentError(f"{source.describe}: every image in {source.folder} was unreadable and skipped; "
                                       "the class is empty")
    if cache_path is not None:
        save_cached(cache_path, key, images, labels_t,
                    {"name": name, "class_names": list(class_names), "resolution": resolution,
                     "skipped": [list(s) for s in skipped]})
    return ImageDataset(images, labels_t, class_names, name, mean, std, imagenet_ids)


def _report_skipped_from_cache(skipped, on_error: str, cache_path: Path) -> None:
    """A cached set built with on_error='skip' remembers what it skipped: stop or warn again."""
    if not skipped:
        return
    path, reason = skipped[0]
    if on_error == "stop":
        raise UnreadableImageError(f"{reason} (recorded in the cache {cache_path}; {len(skipped)} unreadable "
                                   "file(s)) — pass on_error='skip' to leave unreadable images out", path)
    for path, reason in skipped:
        warnings.warn(f"ld3m_fast.data: skipping unreadable image: {reason}", stacklevel=4)


def class_folder(root: str | os.PathLike, resolution: int = 128, *, classes: Sequence[str] | None = None,
                 cache_dir=None, on_error: str = "stop", max_per_class: int | None = None,
                 progress: bool = True, num_workers: int | None = None, name: str | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> ImageDataset:
    """Any ``root/<class name>/*.{jpg,jpeg,png,...}`` tree as an RGB ``ImageDataset`` at ``resolution``².

    ``classes``: the class folder names in label order (default: all sub-folders, sorted).
    ``max_per_class``: the first n files (sorted by name) of each class. ``on_error``: 'stop' raises on an
    unreadable image, 'skip' warns and leaves it out. ``cache_dir``: where decoded sets are kept
    (None: ``$LD3M_FAST_CACHE`` or ``~/.cache/ld3m_fast``; False: no cache). ``mean``/``std``: the
    normalisation the set will carry (ImageNet's by default).
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise MissingFileError(f"class_folder: root {os.fspath(root)!r} is not a folder; pass root=<folder "
                                "holding one sub-folder of images per class>")
    folder = folder.resolve()
    present = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if classes is None:
        if not present:
            raise InvalidArgumentError(
                f"class_folder: {folder} has no class sub-folders (expected root/<class>/<images>)")
        classes = present
    else:
        if isinstance(classes, (str, bytes)):
            raise InvalidTypeError("class_folder: `classes` must be a list of folder names, not a single string")
        classes = [str(c) for c in classes]
        if not classes:
            raise InvalidArgumentError("class_folder: `classes` is empty")
        if len(set(classes)) != len(classes):
            raise InvalidArgumentError(f"class_folder: `classes` lists a class twice: {classes}")
        for label, cls in enumerate(classes):
            if not (folder / cls).is_dir():
                shown = ", ".join(present[:20]) + (", ..." if len(present) > 20 else "")
                raise MissingFileError(f"class_folder: class {label} {cls!r} has no folder {folder / cls}; "
                                        f"sub-folders present: {shown or 'none'}")
    sources = [ClassSource(folder / c, f"class {k} {c!r}") for k, c in enumerate(classes)]
    return load_class_folders(sources, classes, resolution, name=name or folder.name,
                              description={"kind": "class_folder", "root": str(folder)}, mean=mean, std=std,
                              cache_dir=cache_dir, on_error=on_error, max_per_class=max_per_class,
                              progress=progress, num_workers=num_workers)
