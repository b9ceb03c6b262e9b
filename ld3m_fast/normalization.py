"""Per-channel normalisation of images, one definition for the whole package.

Networks and encoders see ``(x − mean) / std`` of images in [0, 1]; ``mean``/``std`` hold one value
per channel (the dataset's, or the official code's for rendered images). ``to_unit`` brings uint8
or float images to float images in [0, 1].
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .errors import InvalidArgumentError


def _per_channel(values, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(-1, 1, 1)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images − mean) / std`` per channel, for images shaped ``(..., C, H, W)``."""
    return (images - _per_channel(mean, images)) / _per_channel(std, images)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The inverse of :func:`normalize`."""
    return images * _per_channel(std, images) + _per_channel(mean, images)


def to_unit(images: torch.Tensor, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images as ``dtype`` in [0, 1] on ``device``: uint8 ones are moved first (4× smaller), then scaled."""
    if images.dtype == torch.uint8:
        return images.to(device, non_blocking=True).to(dtype) / 255
    return images.to(device=device, dtype=dtype, non_blocking=True)


def check_normalization(mean, std, channels: int, name: str = "normalize") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` as tuples of one finite value per channel (a single value is repeated), std > 0."""
    try:
        mean = tuple(float(v) for v in torch.as_tensor(mean, dtype=torch.float64).reshape(-1))
        std = tuple(float(v) for v in torch.as_tensor(std, dtype=torch.float64).reshape(-1))
    except (TypeError, ValueError, RuntimeError):
        raise InvalidArgumentError(
            f"{name} must be (mean, std) with one number or one per channel, got {mean!r}, {std!r}") \
            from None
    mean, std = (v * channels if len(v) == 1 else v for v in (mean, std))
    if len(mean) != channels or len(std) != channels:
        raise InvalidArgumentError(
            f"{name} has {len(mean)} means and {len(std)} stds for {channels}-channel images; give one "
            "value per channel")
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise InvalidArgumentError(f"{name}: mean must be finite and std finite and positive, got mean={list(mean)}, "
                                   f"std={list(std)}")
    return mean, std
