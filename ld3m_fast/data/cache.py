"""On-disk cache of decoded image sets (uint8 tensors in safetensors files).

Decoding ImageNet JPEGs takes minutes; loading the decoded uint8 tensors takes seconds. A cache file
is named by a hash of everything the result depends on: the loader's description (root, split,
classes, resolution, Pillow's version) and every source file's path, size and modification time,
so an added, removed or edited image makes a new entry. Files are written to a temporary name and
renamed, so an interrupted run never leaves a half-written cache; an unreadable or inconsistent
cache file is reported and rebuilt. The folder (default ``~/.cache/ld3m_fast``, or
``$LD3M_FAST_CACHE``) can be deleted at any time.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable

import torch

from ..atomic import write_atomic
from ..errors import InvalidTypeError

CACHE_ENV = "LD3M_FAST_CACHE"
CACHE_FORMAT = 1  # bump when the decoding changes, so old entries are not reused


def default_cache_dir() -> Path:
    """``$LD3M_FAST_CACHE`` if set, else ``~/.cache/ld3m_fast``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ld3m_fast"


def resolve_cache_dir(cache_dir) -> Path | None:
    """The folder to use: ``None`` → default, ``False`` → no caching, else the given path."""
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise InvalidTypeError(f"`cache_dir` must be a folder path, None (default folder) or False (no cache), "
                               f"got {cache_dir!r}")
    return Path(cache_dir).expanduser()


def cache_key(description: dict, files: Iterable[str | os.PathLike]) -> str:
    """sha256 (hex) of ``description`` (JSON-able) and of each file's path, size and mtime."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, **description}, sort_keys=True).encode())
    for path in files:
        st = os.stat(path)
        digest.update(f"\n{os.fspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _unusable(path: Path, why: str) -> None:
    warnings.warn(f"ld3m_fast.data: cache file {path} is unusable ({why}); rebuilding it", stacklevel=3)


def _read_tensors(path: Path, load_file) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the tensors into memory now (not memory-mapped: I/O errors surface here, not later)."""
    try:
        tensors = load_file(str(path), backend="pread")  # safetensors >= 0.8: reads, no mmap
        return tensors["images"], tensors["labels"]
    except TypeError:  # older safetensors: memory-mapped, so copy
        tensors = load_file(str(path))
        return tensors["images"].clone(), tensors["labels"].clone()


def load_cached(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor, dict] | None:
    """(images, labels, metadata) from the cache file ``path`` if it exists and belongs to ``key``.

    A damaged or inconsistent file gives a warning and ``None`` (the caller rebuilds it).
    """
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("ld3m_fast", "{}"))
        if meta.get("key") != key:
            _unusable(path, "its key does not match its name")
            return None
        images, labels = _read_tensors(path, load_file)
    except Exception as exc:  # safetensors, JSON and I/O errors alike: rebuild
        _unusable(path, f"{type(exc).__name__}: {exc}")
        return None
    if (images.dtype != torch.uint8 or images.dim() != 4 or labels.dtype != torch.int64
            or labels.shape != (images.shape[0],)):
        _unusable(path, f"unexpected tensors {images.dtype} {tuple(images.shape)} / "
                        f"{labels.dtype} {tuple(labels.shape)}")
        return None
    return images, labels, meta


def save_cached(path: Path, key: str, images: torch.Tensor, labels: torch.Tensor, meta: dict) -> bool:
    """Write the cache file atomically (temporary file + rename); warn and return False on failure."""
    from safetensors.torch import save_file

    tensors = {"images": images.contiguous(), "labels": labels.contiguous()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"ld3m_fast": json.dumps({**meta, "key": key})}))
        return True
    except Exception as exc:  # a cache that cannot be written must not stop the run
        warnings.warn(f"ld3m_fast.data: could not write the cache file {path} ({exc}); continuing "
                      "without caching", stacklevel=3)
        return False
