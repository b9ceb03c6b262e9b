"""ConvNet of the dataset-distillation field (DC, DSA, DM, MTT, GLaD, LD3M).

``depth`` blocks of conv3x3(width) -> norm -> activation -> 2x2 pooling, then one linear classifier on the
flattened feature map. Defaults: width 128, instance norm (GroupNorm(width, width)), ReLU, average pooling.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InvalidArgumentError
from .common import as_hw, canonical_norm, norm_layer, pad_to_32

ACTIVATIONS = ("relu", "sigmoid", "leakyrelu")
POOLINGS = ("avgpooling", "maxpooling", "none")


def default_depth(image_size) -> int:
    """Depth whose last feature map is about 4x4: 3 at 28/32 px, 4 at 64, 5 at 128, 6 at 256 (the field's choice)."""
    h, w = as_hw(image_size)
    if (h, w) == (28, 28):
        h = w = 32
    return max(1, round(math.log2(min(h, w) / 4)))


class _Activation(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        if self.kind == "relu":
            return F.relu(x)
        if self.kind == "sigmoid":
            return torch.sigmoid(x)
        return F.leaky_relu(x, 0.01)

    def extra_repr(self):
        return self.kind


class ConvNet(nn.Module):
    """The field's ConvNet; ``embed`` gives the flattened last feature map (DM's embedding)."""

    def __init__(self, channels: int, num_classes: int, image_size, *, width: int = 128, depth: int | None = None,
                 norm: str = "instancenorm", act: str = "relu", pooling: str = "avgpooling"):
        super().__init__()
        hw = as_hw(image_size)
        depth = default_depth(hw) if depth is None else depth
        norm = canonical_norm(norm)
        if act not in ACTIVATIONS:
            raise InvalidArgumentError(f"act={act!r} is unknown; use one of {ACTIVATIONS}")
        if pooling not in POOLINGS:
            raise InvalidArgumentError(f"pooling={pooling!r} is unknown; use one of {POOLINGS}")
        if not isinstance(depth, int) or depth < 1:
            raise InvalidArgumentError(f"depth must be a positive int, got {depth!r}")
        if not isinstance(width, int) or width < 1:
            raise InvalidArgumentError(f"width must be a positive int, got {width!r}")
        extra = pad_to_32(hw)
        h, w = hw[0] + 2 * extra, hw[1] + 2 * extra
        layers, c_in = [], channels
        for d in range(depth):
            layers.append(nn.Conv2d(c_in, width, kernel_size=3, padding=1 + (extra if d == 0 else 0)))
            layers.append(norm_layer(norm, width, (h, w)))
            layers.append(_Activation(act))
            c_in = width
            if pooling != "none":
                if min(h, w) < 2:
                    raise InvalidArgumentError(f"depth={depth} pools a {hw[0]}x{hw[1]} image below 1 pixel; "
                                               f"use depth <= {default_depth(hw)} for this image size")
                layers.append(nn.AvgPool2d(2, 2) if pooling == "avgpooling" else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.config = dict(width=width, depth=depth, norm=norm, act=act, pooling=pooling, image_size=hw)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
