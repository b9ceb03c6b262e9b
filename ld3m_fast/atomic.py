"""Atomic file writes: write to a temporary name beside the target, then rename onto it.

A run killed mid-write leaves the previous file (or none), never a truncated one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` (the temporary name keeps the suffix)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
