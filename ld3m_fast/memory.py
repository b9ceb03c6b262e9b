"""Memory budgets: parse them, measure what one image costs, choose the chunk size and the kept steps.

The cost of one image is measured, not guessed: one guided denoiser call and one decode run on a
single latent with gradients, while a saved-tensor hook adds up the bytes autograd keeps for
backward. That works on any device and for any model. The chunk is the largest number of images
whose activations, with a safety factor for backward's temporaries, fit beside what the rendering
keeps for all images (the per-step latents and the images); memory left once every image fits in
one chunk keeps the graphs of whole steps, so that backward need not recompute them.
"""
from __future__ import annotations

import re

import torch

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
BACKWARD_SAFETY = 2.0  # backward holds gradients about as large as the saved activations
DEFAULT_CHUNK = 10     # the official code's rendering chunk
NO_GRAD_CHUNK_FACTOR = 4  # a no-grad call's transient memory is well under 1/4 of what a grad call saves


def parse_memory_budget(budget) -> int | None:
    """Bytes from an int or a string such as ``"16GiB"``, ``"512MB"``, ``"2e9"``; ``None`` stays ``None``."""
    if budget is None:
        return None
    if isinstance(budget, bool):
        raise TypeError("memory_budget must be a number of bytes or a string like '16GiB', not a bool")
    if isinstance(budget, (int, float)):
        value = float(budget)
    elif isinstance(budget, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", budget)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"memory_budget={budget!r} is not understood: write bytes or e.g. '16GiB', '512MB'")
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise TypeError(f"memory_budget must be bytes or a string like '16GiB', not {type(budget).__name__}")
    if not value > 0:
        raise ValueError(f"memory_budget={budget!r} must be positive")
    return int(value)


def saved_activation_bytes(fn, *args) -> tuple[int, object]:
    """Bytes autograd saves for backward while running ``fn(*args)`` (each storage counted once), and its output."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            seen[(id(t), t.device)] = t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    input_ptrs = {(a.untyped_storage().data_ptr(), a.device) for a in args if isinstance(a, torch.Tensor)}
    return sum(v for k, v in seen.items() if k not in input_ptrs), out


def plan_chunk_size(n_images: int, budget: int, per_image_bytes: int, fixed_bytes: int) -> int:
    """Largest chunk (≤ ``n_images``) with ``fixed + SAFETY × chunk × per_image ≤ budget``; raises if none."""
    need_one = fixed_bytes + BACKWARD_SAFETY * per_image_bytes
    if need_one > budget:
        raise ValueError(
            f"memory_budget={_fmt(budget)} is too small for one image: rendering these {n_images} images needs "
            f"{_fmt(fixed_bytes)} for latents and images plus about {_fmt(BACKWARD_SAFETY * per_image_bytes)} per image "
            f"in a chunk, so at least {_fmt(need_one)}. Raise memory_budget, or use fewer steps or images")
    return int(max(1, min(n_images, (budget - fixed_bytes) // (BACKWARD_SAFETY * per_image_bytes))))


def plan_rendering(n_images: int, steps: int, budget: int, unet_bytes: int, decoder_bytes: int,
                   fixed_bytes: int) -> tuple[int, int]:
    """``(chunk, kept_steps)`` for a budget: the largest chunk that fits (``plan_chunk_size``); once all images fit
    in one chunk, what is left keeps whole steps' denoiser graphs (``unet_bytes`` per image each), which spares
    their recomputation in backward."""
    chunk = plan_chunk_size(n_images, budget, max(unet_bytes, decoder_bytes), fixed_bytes)
    if chunk < n_images or unet_bytes <= 0:
        return chunk, 0
    left = budget - fixed_bytes - BACKWARD_SAFETY * n_images * max(unet_bytes, decoder_bytes)
    return chunk, int(max(0, min(steps, left // (n_images * unet_bytes))))


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
