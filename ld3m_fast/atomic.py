"""Atomic file writes: write to a unique temporary file beside the target, then rename onto it.

A run killed mid-write leaves the previous file (or none), never a truncated one; several
processes writing the same file (ranks of a distributed run) never see each other's half-files.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` (the temporary name keeps the suffix)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it a new file's usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_writable_folder(path, argument: str) -> Path:
    """Create folder ``path`` if needed and prove that files can be written there, before any work starts.

    Raises ``InvalidArgumentError`` naming ``argument`` when ``path`` is a file, cannot be created or is not writable.
    """
    from .errors import InvalidArgumentError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"{argument}={str(path)!r} is a file, not a folder: give a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidArgumentError(f"{argument}={str(path)!r} cannot be written ({exc.strerror or exc}): choose a "
                                   "folder you can write to") from None
    return path
