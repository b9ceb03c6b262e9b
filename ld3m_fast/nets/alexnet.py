"""AlexNet as used by DC/GLaD for small images: five convolutions (three max-pools), one linear classifier.

Channel counts 128-192-256-192-192 (scaled by ``width / 128``); the classifier reads the flattened
(H/8 x W/8) map. 28-pixel images are padded to 32 in the first convolution as in the DC code.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import as_hw, pad_to_32, scaled


class AlexNet(nn.Module):
    def __init__(self, channels: int, num_classes: int, image_size, *, width: int | None = None):
        super().__init__()
        hw = as_hw(image_size)
        extra = pad_to_32(hw)
        c1, c2, c3, c4, c5 = (scaled(c, width) for c in (128, 192, 256, 192, 192))
        self.convs = nn.ModuleList([
            nn.Conv2d(channels, c1, kernel_size=5, padding=2 + extra),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
        ])
        h, w = (hw[0] + 2 * extra) // 8, (hw[1] + 2 * extra) // 8
        self.feature_dim = c5 * h * w
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i in (0, 1, 4):
                x = F.max_pool2d(x, 2, 2)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))
