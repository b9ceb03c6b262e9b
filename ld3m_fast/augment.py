"""Differentiable Siamese augmentation (DSA, Zhao & Bilen 2021), written with torch only.

``dsa(x, strategy, seed)`` applies random colour, crop, cutout, flip, scale and rotate transformations that are
differentiable with respect to the images. With the default single-op mode of the DC/DSA code, one of the
strategy's operations ("color" counts as one: brightness, saturation, contrast) is drawn per call.

Siamese mode (``seed`` given): every random parameter is drawn once from a generator seeded with ``seed`` and
shared by the whole batch, so the same seed gives the same transformation for the real and the synthetic batch
whatever their sizes (the DSA code's ``batchmode``). Without a seed (or with ``per_sample=True``) each image gets
its own parameters, as in the DSA code when it trains networks on a synthetic set.

Random numbers are drawn on the CPU (from the seeded generator, the given ``generator``, or else the global RNG)
and moved to the images' device, so a seed gives the same transformation on every device. A seed never touches
the global random state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InvalidArgumentError, InvalidTypeError

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """The DSA code's ``ParamDiffAug`` values (VICO-UoE/DatasetCondensation, utils.py; the same in GLaD).

    single_op: draw one operation of the strategy per call (the code's ``aug_mode='S'``, its default);
    False applies every operation in order (``aug_mode='M'``).
    """
    prob_flip: float = 0.5
    ratio_scale: float = 1.2      # scale factors uniform in [1/1.2, 1.2] per axis
    ratio_rotate: float = 15.0    # angle uniform in [-15, 15] degrees
    ratio_crop_pad: float = 0.125  # translation up to round(0.125 * size) pixels, zero fill
    ratio_cutout: float = 0.5     # a zeroed square of round(0.5 * size) pixels
    brightness: float = 1.0       # x + (u - 0.5) * 1.0
    saturation: float = 2.0       # (x - mean_c) * (u * 2.0) + mean_c
    contrast: float = 0.5         # (x - mean) * (u + 0.5) + mean
    single_op: bool = True


class _Draw:
    """Source of the random parameters: ``n`` values per draw (1 in Siamese mode, the batch size otherwise)."""

    def __init__(self, n: int, generator: torch.Generator | None):
        self.n, self.generator = n, generator

    def uniform(self) -> torch.Tensor:
        return torch.rand(self.n, generator=self.generator, dtype=torch.float64)

    def integers(self, low: int, high: int) -> torch.Tensor:
        """Integers in [low, high)."""
        return torch.randint(low, high, (self.n,), generator=self.generator)


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image values as a (n, 1, 1, 1) tensor on x's device and dtype (n = 1 broadcasts over the batch)."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def color(x: torch.Tensor, draw: _Draw, p: DSAParams) -> torch.Tensor:
    x = x + (_col(draw.uniform(), x) - 0.5) * p.brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_col(draw.uniform(), x) * p.saturation) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_col(draw.uniform(), x) + p.contrast) + mean


def crop(x: torch.Tensor, draw: _Draw, p: DSAParams) -> torch.Tensor:
    """Translate by whole pixels (up to round(ratio * size)); pixels moved in from outside are zero."""
    b, _, h, w = x.shape
    sh, sw = int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)
    th, tw = draw.integers(-sh, sh + 1), draw.integers(-sw, sw + 1)
    padded = F.pad(x, (sw, sw, sh, sh))
    rows = (torch.arange(h).view(1, h) + sh + th.view(-1, 1)).to(x.device)   # (n, h)
    cols = (torch.arange(w).view(1, w) + sw + tw.view(-1, 1)).to(x.device)   # (n, w)
    if draw.n == 1:
        return padded[:, :, rows[0]][:, :, :, cols[0]]
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded[batch, :, rows.view(b, h, 1), cols.view(b, 1, w)].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, draw: _Draw, p: DSAParams) -> torch.Tensor:
    """Zero a square of round(ratio * size) pixels centred at a random pixel (clipped at the borders)."""
    _, _, h, w = x.shape
    ch, cw = int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5)
    oh, ow = draw.integers(0, h + (1 - ch % 2)), draw.integers(0, w + (1 - cw % 2))
    top, left = (oh - ch // 2).view(-1, 1), (ow - cw // 2).view(-1, 1)
    r, c = torch.arange(h).view(1, h), torch.arange(w).view(1, w)
    in_rows = (r >= top) & (r < top + ch)                      # (n, h)
    in_cols = (c >= left) & (c < left + cw)                    # (n, w)
    keep = ~(in_rows.view(-1, 1, h, 1) & in_cols.view(-1, 1, 1, w))
    return x * keep.to(device=x.device, dtype=x.dtype)


def flip(x: torch.Tensor, draw: _Draw, p: DSAParams) -> torch.Tensor:
    """Mirror left-right with probability prob_flip."""
    flag = (draw.uniform() < p.prob_flip).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flag, x.flip(3), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def scale(x: torch.Tensor, draw: _Draw, p: DSAParams) -> torch.Tensor:
    """Sample at coordinates scaled by s_x, s_y ~ U[1/ratio, ratio] (bilinear, zero outside)."""
    r = p.ratio_scale
    sx = draw.uniform() * (r - 1.0 / r) + 1.0 / r
    sy = draw.uniform() * (r - 1.0 / r) + 1.0 / r
    theta = torch.zeros(draw.n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    return _affine(x, theta)


def rotate(x: torch.Tensor, draw: _Draw, p: DSAParams) -> torch.Tensor:
    """Rotate by an angle ~ U[-ratio, ratio] degrees about the centre (bilinear, zero outside)."""
    a = (draw.uniform() - 0.5) * 2 * p.ratio_rotate / 180 * math.pi
    theta = torch.zeros(draw.n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    return _affine(x, theta)


OPS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale, "rotate": rotate}


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """The operations of a strategy string ("color_crop_..."); "none" or "" gives ()."""
    if not isinstance(strategy, str):
        raise InvalidTypeError(f"strategy must be a str like {DSA_STRATEGY!r}, got {type(strategy).__name__}")
    if strategy.lower() in ("", "none"):
        return ()
    ops = tuple(strategy.lower().split("_"))
    bad = [op for op in ops if op not in OPS]
    if bad:
        raise InvalidArgumentError(
            f"unknown DSA operation(s) {bad} in strategy {strategy!r}; use '_'-joined names from "
            f"{DSA_OPS} (e.g. {DSA_STRATEGY!r}) or 'none'")
    return ops


def dsa(x: torch.Tensor, strategy: str = DSA_STRATEGY, seed: int | None = None, params: DSAParams | None = None,
        *, per_sample: bool | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a batch of images (N, C, H, W) differentiably.

    seed: Siamese mode, one set of parameters for the whole batch drawn from a generator seeded with ``seed``
      (the same seed gives the same transformation for any batch). None: parameters from ``generator`` or,
      without one, from the global RNG, one set per image.
    per_sample: override the per-image choice (default: ``seed is None``).
    params: a DSAParams (default: the DSA code's values).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise InvalidArgumentError(f"x must be a 4-D tensor (N, C, H, W), got {type(x).__name__}"
                                   + (f" of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else ""))
    if not x.is_floating_point():
        raise InvalidTypeError(f"x has dtype {x.dtype}; DSA needs floating-point images")
    if seed is not None and generator is not None:
        raise InvalidArgumentError("pass either seed (Siamese mode) or generator, not both")
    params = DSAParams() if params is None else params
    if not isinstance(params, DSAParams):
        raise InvalidTypeError(f"params must be a DSAParams, got {type(params).__name__}")
    ops = parse_strategy(strategy)
    if not ops or x.shape[0] == 0:
        return x
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    per_sample = (seed is None) if per_sample is None else per_sample
    draw = _Draw(x.shape[0] if per_sample else 1, generator)
    if params.single_op:
        ops = (ops[int(torch.randint(0, len(ops), (1,), generator=generator))],)
    for op in ops:
        x = OPS[op](x, draw, params)
    return x.contiguous()


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A fresh seed for one Siamese augmentation (from ``generator`` or the global RNG)."""
    return int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))


__all__ = ["DSA_STRATEGY", "DSA_OPS", "DSAParams", "dsa", "draw_seed", "parse_strategy"]
