"""Memory budgets: parse them, measure what one image costs, choose the chunk size, kept steps and latent stride.

The cost of one image is measured, not guessed: one guided denoiser call and one decode run on a
single latent with gradients, while a saved-tensor hook adds up the bytes autograd keeps for
backward. That works on any device and for any model. The chunk is the largest number of images
whose activations, with a safety factor for backward's temporaries, fit beside what the rendering
keeps for all images (the per-step latents and the images); memory left once every image fits in
one chunk keeps the graphs of whole steps, so that backward need not recompute them. When not even
one image fits beside every step's latent, only every k-th latent is kept (k ≈ √S; backward
regenerates the others), so the memory no longer grows with the number of steps.
``resolve_plan`` turns a rendering's knobs (budget, or chunk size, kept steps and stride by hand)
into one ``RenderPlan``.
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple

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


class RenderPlan(NamedTuple):
    chunk: int          # images per recomputed denoiser call in backward
    kept_steps: int     # last steps whose denoiser graphs the forward keeps
    latent_stride: int  # keep every k-th step's latent (1: all)
    forward_chunk: int  # images per no-grad denoiser call in forward


def thinning_stride(steps: int) -> int:
    """``⌈√S⌉``: the latent stride that keeps fewest latents alive (``S/k + k``)."""
    return math.isqrt(steps - 1) + 1 if steps > 1 else 1


def stored_latents(steps: int, stride: int) -> int:
    """Step latents alive at once with ``latent_stride = stride``: the kept ones plus one regenerated segment."""
    return steps if stride == 1 else -(-steps // stride) + stride


def plan_rendering(n_images: int, steps: int, budget: int, unet_bytes: int, decoder_bytes: int,
                   latent_bytes: int, fixed_bytes: int, allow_thinning: bool = True) -> RenderPlan:
    """Chunk, kept steps and latent stride for a budget.

    ``latent_bytes`` is one step's latents for all images, ``fixed_bytes`` the rest rendering keeps for all
    images. The largest chunk that fits beside every step's latent (``plan_chunk_size``); once all images fit in
    one chunk, what is left keeps whole steps' denoiser graphs (``unet_bytes`` per image each), which spares their
    recomputation in backward. If not even one image fits, only every ``⌈√S⌉``-th latent is kept
    (unless ``allow_thinning`` is false: with DDIM noise, ``eta > 0``, the dropped latents cannot be regenerated).
    """
    per_image = max(unet_bytes, decoder_bytes)
    try:
        chunk = plan_chunk_size(n_images, budget, per_image, fixed_bytes + steps * latent_bytes)
    except ValueError as err:
        stride = thinning_stride(steps)
        if stride == 1:
            raise
        if not allow_thinning:
            raise ValueError(f"{err}. Keeping only some steps' latents would fit, but with eta > 0 they cannot be "
                             "regenerated: use eta=0") from None
        stored = stored_latents(steps, stride) * latent_bytes
        chunk = plan_chunk_size(n_images, budget, per_image, fixed_bytes + stored)
        return RenderPlan(chunk, 0, stride, min(n_images, NO_GRAD_CHUNK_FACTOR * chunk))
    forward = min(n_images, NO_GRAD_CHUNK_FACTOR * chunk)
    if chunk < n_images or unet_bytes <= 0:
        return RenderPlan(chunk, 0, 1, forward)
    left = budget - fixed_bytes - steps * latent_bytes - BACKWARD_SAFETY * n_images * per_image
    return RenderPlan(chunk, int(max(0, min(steps, left // (n_images * unet_bytes)))), 1, forward)


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")
    return value


def resolve_plan(n_images: int, steps: int, budget: int | None, *, chunk_size: int | None = None,
                 keep_steps: int | None = None, latent_stride: int | None = None, allow_thinning: bool = True,
                 measure=None) -> RenderPlan:
    """The plan of one rendering from its knobs.

    ``chunk_size`` given: that chunk (forward runs all images at once without a budget, four chunks at once
    with one). Else a ``budget`` is planned by ``plan_rendering`` from ``measure()`` →
    ``(unet_bytes, decoder_bytes, latent_bytes, fixed_bytes)``; else the official chunk of 10. ``keep_steps``
    and ``latent_stride`` given by hand override the plan's.
    """
    keep, stride = 0, 1
    if chunk_size is not None:
        chunk = min(_check_count("chunk_size", chunk_size, 1), n_images)
        forward = n_images if budget is None else min(n_images, NO_GRAD_CHUNK_FACTOR * chunk)
    elif budget is not None:
        chunk, keep, stride, forward = plan_rendering(n_images, steps, budget, *measure(), allow_thinning=allow_thinning)
    else:
        chunk, forward = min(n_images, DEFAULT_CHUNK), n_images
    if keep_steps is not None:
        keep = min(_check_count("keep_steps", keep_steps, 0), steps)
    if latent_stride is not None:
        stride = _check_count("latent_stride", latent_stride, 1)
    return RenderPlan(chunk, keep, stride, forward)


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
