"""Images in [0, 1] → one PNG grid (PIL, no torchvision)."""
from __future__ import annotations

import math
import os

import torch

from .errors import InvalidArgumentError


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """Tile ``images`` (N, C, H, W), values in [0, 1] (clamped), into one uint8 (H', W', C) array."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise InvalidArgumentError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    x = images.detach().float().cpu().clamp(0, 1)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 1) -> None:
    """Write ``images`` as a PNG grid to ``path`` (each image enlarged ``scale`` times, nearest neighbour)."""
    from PIL import Image

    arr = make_grid(images, nrow).numpy()
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
