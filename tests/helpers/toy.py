"""Small labelled image sets that networks tell apart in a few steps, for the distillation tests."""
from __future__ import annotations

import torch

CLASSES, PER_CLASS, SIZE = 4, 12, 16
KNOBS = dict(batch_real=8, net_width=16)  # small and fast distillation settings
SMALL = dict(KNOBS, progress=False)
LATENT = dict(steps=4)  # and in an LDM's latent space: few DDIM steps


def small(model=None, **extra) -> dict:
    """``SMALL`` (plus ``LATENT`` when ``model`` is an LDM) and ``extra``: the knobs of a quick test run."""
    return dict(SMALL, **(LATENT if model is not None else {}), **extra)


def toy_data(seed=0, classes=CLASSES, per_class=PER_CLASS, size=SIZE):
    """Class k: a colour and a stripe orientation of its own, plus noise (easy to tell apart)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    colours = torch.rand(classes, 3, 1, 1, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    stripes = torch.stack([((xx + k * yy) // 3 % 2).float() for k in range(classes)])[:, None]
    images = 0.6 * colours[labels] + 0.3 * stripes[labels] + 0.1 * torch.rand(len(labels), 3, size, size, generator=gen)
    return images.clamp(0, 1), labels


def separable(n, num_classes=4, size=32, seed=0):
    """Noisy images whose class shows both as a colour and as a layout (top, bottom, horizontal or vertical
    stripes): easy to learn for every architecture, including those whose instance norm removes colour offsets."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = 0.3 * torch.rand(n, 3, size, size, generator=g)
    r = torch.arange(size)
    rows, cols = r.view(-1, 1).expand(size, size), r.view(1, -1).expand(size, size)
    layouts = torch.stack([rows < size // 2, rows >= size // 2, (rows // 4) % 2 == 0, (cols // 4) % 2 == 0]).float()
    colours = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    x += 0.35 * layouts[y].unsqueeze(1) + 0.35 * colours[y].view(n, 3, 1, 1)
    return x.clamp(0, 1), y

