"""Seeds derived from a run's seed, so that every random draw is a function of (seed, iteration, purpose).

A distillation run draws a fresh network, real batches, augmentations and start noise at every
iteration. Deriving each from ``(seed, iteration, purpose)`` instead of a shared RNG stream makes a
run resumed at iteration ``k`` draw exactly what the uninterrupted run drew, and keeps the draws of
one purpose (say, evaluation) from shifting those of another.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    import torch

MAX_SEED = 2**63 - 1


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` if it is an int in [0, 2**63 − 1] (what ``torch.Generator.manual_seed`` takes), else a clear error."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidArgumentError(f"{name}={seed!r} must be an int between 0 and 2**63 - 1")
    return seed


def derive_seed(seed: int, *keys) -> int:
    """A 63-bit seed determined by ``seed`` and ``keys`` (ints or strings), stable across runs and machines."""
    text = repr((int(seed),) + tuple(keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def generator(seed: int, *keys) -> "torch.Generator":
    """A CPU ``torch.Generator`` seeded with ``derive_seed(seed, *keys)``."""
    import torch

    return torch.Generator().manual_seed(derive_seed(seed, *keys))
