"""VGG-11 as used by DC/GLaD: eight conv3x3 -> norm -> ReLU layers and five max-pools, one linear classifier.

Up to 32 px (the CIFAR variant) the final 1x1 map gives 512 features; from 64 px on (the ImageNet variant of
GLaD) an adaptive max-pool to 7x7 gives 512*7*7 features. Channel counts scale with ``width / 128``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InvalidArgumentError
from .common import as_hw, canonical_norm, norm_layer, pad_to_32, scaled

VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    def __init__(self, channels: int, num_classes: int, image_size, *, width: int | None = None,
                 norm: str = "instancenorm"):
        super().__init__()
        hw = as_hw(image_size)
        norm = canonical_norm(norm)
        extra = pad_to_32(hw)
        layers, c_in, first = [], channels, True
        for item in VGG11_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            c_out = scaled(item, width)
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1 + (extra if first else 0)),
                       norm_layer(norm, c_out), nn.ReLU()]
            c_in, first = c_out, False
        self.features = nn.Sequential(*layers)
        self.imagenet_head = min(hw) > 32
        self.feature_dim = c_in * (49 if self.imagenet_head else ((hw[0] + 2 * extra) // 32) * ((hw[1] + 2 * extra) // 32))
        if self.feature_dim == 0:
            raise InvalidArgumentError(f"VGG11 needs images of at least 32x32 pixels (or 28x28), got {hw}")
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.imagenet_head:
            x = F.adaptive_max_pool2d(x, (7, 7))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
