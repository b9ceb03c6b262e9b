"""Pieces shared by the networks: image-size handling, normalisation layers, width scaling."""
from __future__ import annotations

import torch.nn as nn

from ..errors import InvalidArgumentError, InvalidTypeError

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
_NORM_ALIASES = {
    "instancenorm": "instancenorm", "instance": "instancenorm", "in": "instancenorm",
    "batchnorm": "batchnorm", "batch": "batchnorm", "bn": "batchnorm",
    "layernorm": "layernorm", "layer": "layernorm", "ln": "layernorm",
    "groupnorm": "groupnorm", "group": "groupnorm", "gn": "groupnorm",
    "none": "none", "nn": "none", "identity": "none",
}


def canonical_norm(norm: str | None) -> str:
    """Map a norm name or alias ('in', 'BN', 'none', None, ...) to one of ``NORMS``."""
    if norm is None:
        return "none"
    if not isinstance(norm, str) or norm.lower() not in _NORM_ALIASES:
        raise InvalidArgumentError(f"norm={norm!r} is unknown; use one of {NORMS}")
    return _NORM_ALIASES[norm.lower()]


def as_hw(image_size) -> tuple[int, int]:
    """``image_size`` as (height, width) from an int or a pair of ints."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        hw = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(isinstance(s, int) for s in image_size):
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        raise InvalidTypeError(f"image_size must be an int or a pair (height, width), got {image_size!r}")
    if min(hw) < 8:
        raise InvalidArgumentError(f"image_size={image_size!r} is too small; the networks need at least 8x8 pixels")
    return hw


def pad_to_32(hw: tuple[int, int]) -> int:
    """Extra padding of the first convolution that turns 28-pixel images (MNIST-like) into 32-pixel feature maps.

    The DC/GLaD code pads the first convolution of 28-pixel inputs by 2 more pixels on each side (its
    ``padding=3 if channel == 1``); here it follows the image size, so RGB 28-pixel images work too.
    """
    return 2 if hw == (28, 28) else 0


def norm_layer(norm: str, channels: int, shape: tuple[int, int] | None = None) -> nn.Module:
    """The normalisation layer of the DC/GLaD code for a (channels, h, w) feature map.

    instancenorm = GroupNorm(channels, channels) (per-channel, per-image statistics with a learnt affine map),
    groupnorm = GroupNorm(4, channels), layernorm = LayerNorm over (C, h, w) (needs ``shape``).
    """
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels, affine=True)
    if norm == "groupnorm":
        return nn.GroupNorm(4 if channels % 4 == 0 else 1, channels, affine=True)
    if norm == "layernorm":
        if shape is None:
            raise InvalidArgumentError(
                "norm='layernorm' is only available for ConvNet; use instancenorm, batchnorm, groupnorm "
                "or none for this network")
        return nn.LayerNorm([channels, shape[0], shape[1]], elementwise_affine=True)
    if norm == "none":
        return nn.Identity()
    raise InvalidArgumentError(f"norm={norm!r} is unknown; use one of {NORMS}")


def scaled(channels: int, width: int | None, reference: int = 128) -> int:
    """``channels`` scaled by ``width / reference`` (at least 1); ``width=None`` keeps the standard size."""
    if width is None:
        return channels
    return max(1, round(channels * width / reference))
