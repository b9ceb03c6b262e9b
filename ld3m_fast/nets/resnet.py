"""ResNet-18 as used by DC/GLaD: a 3x3 stride-1 stem (no max-pool), four stages of two basic blocks
(64-128-256-512 channels, scaled by ``width / 128``), global average pooling and one linear classifier.
Instance norm (GroupNorm(C, C)) by default, as in GLaD; batch norm with norm='batchnorm'.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import as_hw, canonical_norm, norm_layer, scaled


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.norm2 = norm_layer(norm, c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_layer(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, channels: int, num_classes: int, image_size, *, width: int | None = None,
                 norm: str = "instancenorm"):
        super().__init__()
        as_hw(image_size)  # validates; the network itself works at any size thanks to global pooling
        norm = canonical_norm(norm)
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.norm1 = norm_layer(norm, widths[0])
        stages, c_in = [], widths[0]
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride, norm), BasicBlock(c_out, c_out, 1, norm)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = c_in
        self.classifier = nn.Linear(c_in, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
