"""``render``: learnable latents and class embeddings → images, differentiable end to end.

Pipeline (docs/design.md §2, §5): ``z_T = sqrt(ā)·Z + sqrt(1−ā)·ε`` with ``ε`` fixed for the
rendering → the reverse chain with the LD3M skip (recomputed per step in backward) → VQ
straight-through → decoder (recomputed per chunk in backward) → ``(x + 1) / 2`` clamped to
[0, 1] → optional normalisation.
"""
from __future__ import annotations

import math

import torch

from ..normalization import normalize as normalize_images
from .chain import ChainSettings, guidance_contexts, guided_eps, reverse_chain
from .decode import recomputed_decode, straight_through
from .latent_model import LatentModel, as_latent_model, check_latents_and_context
from .memory import parse_memory_budget, resolve_plan, saved_activation_bytes
from .schedule import DDIMSchedule


def make_generator(seed: int | None = None, generator: torch.Generator | None = None) -> torch.Generator | None:
    """A CPU generator seeded with ``seed``, the given ``generator``, or ``None`` (the global RNG)."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator().manual_seed(int(seed))


def start_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``ε`` drawn on the CPU (the same values on every device) and moved to ``like``'s device."""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] → images in [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1)


def cost_probe(lm: LatentModel, Z, c, uc, schedule: DDIMSchedule):
    """A function returning what the planner needs (``resolve_plan``'s ``measure``): one image's activations in a
    (guided) denoiser call and in the decoder, the bytes of one step's latents for all images, and what the rendering
    keeps for all images besides. ``uc`` is one unconditional context row or ``None``."""
    def measure():
        z1 = Z[:1].detach().requires_grad_(True)
        t = torch.full((1,), schedule.timesteps[0], device=Z.device, dtype=torch.long)
        unet_bytes, _ = saved_activation_bytes(lambda z: guided_eps(lm.denoiser, z, t, c[:1].detach(), uc), z1)
        dec_bytes, image = saved_activation_bytes(lm.decode, z1)
        n, elt = Z.shape[0], Z.element_size()
        return unet_bytes, dec_bytes, n * elt * Z[0].numel(), n * elt * (6 * Z[0].numel() + 3 * image[0].numel())
    return measure


def render(model, Z: torch.Tensor, c: torch.Tensor, steps: int, guidance: float = 3.0, skip: str = "official",
           memory_budget=None, seed: int | None = None, *, generator: torch.Generator | None = None,
           noise: torch.Tensor | None = None,
           chunk_size: int | None = None, keep_steps: int | None = None, latent_stride: int | None = None,
           eta: float = 0.0,
           backend: str | None = None, check_finite: bool = True, normalize=None,
           progress: bool = False) -> torch.Tensor:
    """Render images from latents ``Z`` (N, C, h, w) and class embeddings ``c`` (N, L, D).

    Args:
        model: a :class:`LatentModel` or a CompVis-style LDM (see ``ld3m_fast.engine.latent_model``).
        steps: DDIM steps requested (the official uniform discretisation; may run a few more).
        guidance: classifier-free guidance scale (1.0: no guidance, one denoiser call per step).
        skip: ``"official"`` (x̂0 blended with Zq, the LD3M code), ``"paper"`` (Eq. 7), ``"none"``.
        memory_budget: bytes or e.g. ``"8GiB"`` for the backward pass; picks the chunk size and, when all images
            fit in one chunk, how many steps keep their denoiser graphs (no recomputation for them).
        seed / generator: fix the start noise ε (and the DDIM noise if ``eta > 0``).
        noise: the start noise ε itself (shape of ``Z``), instead of drawing it.
        chunk_size: images per recomputed denoiser call in backward (overrides ``memory_budget``;
            default 10). The no-grad forward runs all images at once (as the official code does),
            or, under a ``memory_budget``, ``NO_GRAD_CHUNK_FACTOR`` chunks at once.
        keep_steps: how many steps (the last ones) run their denoiser with gradients in the forward pass and
            keep the graph for backward, instead of recomputing it (overrides ``memory_budget``'s choice; default 0).
        latent_stride: keep only every k-th step's latent for backward, which regenerates the others (about one
            denoiser forward more per step, ``S/k + k`` latents stored instead of ``S``; ``eta = 0`` only).
            Default 1, or what ``memory_budget`` needs.
        backend: fused-step backend (``"torch"``, ``"triton"``, ``"cpp"``, ``"cuda"``; default automatic).
        normalize: ``(mean, std)`` applied to the [0, 1] images, or ``None``.

    Returns images in [0, 1] (or normalised), differentiable w.r.t. ``Z`` and ``c``.
    """
    lm = as_latent_model(model)
    check_latents_and_context(Z, c, lm, check_finite)
    schedule = DDIMSchedule.make(steps, lm.alphas_cumprod, guidance, skip, eta)
    budget = parse_memory_budget(memory_budget)
    n = Z.shape[0]
    uc = lm.unconditional_context(n)
    if uc is not None:
        uc = uc.to(device=c.device, dtype=c.dtype)
    uc = guidance_contexts(schedule, uc)
    plan = resolve_plan(n, schedule.num_steps, budget, chunk_size=chunk_size, keep_steps=keep_steps,
                        latent_stride=latent_stride, allow_thinning=eta == 0,
                        measure=cost_probe(lm, Z, c, None if uc is None else uc[:1], schedule))
    gen = make_generator(seed, generator)
    if noise is None:
        noise = start_noise(Z, gen)
    elif noise.shape != Z.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but Z has {tuple(Z.shape)}: give one ε per latent")
    z_start = math.sqrt(schedule.start_alpha) * Z + math.sqrt(1 - schedule.start_alpha) * noise.to(Z)
    anchor = {"official": lambda: straight_through(lm.quantize, Z), "paper": lambda: z_start,
              "none": lambda: None}[skip]()
    settings = ChainSettings(lm.denoiser, schedule, uc, plan.chunk, backend, gen, progress,
                             forward_chunk_size=plan.forward_chunk,
                             keep_steps=frozenset(range(schedule.num_steps - plan.kept_steps, schedule.num_steps)),
                             latent_stride=plan.latent_stride)
    z0 = reverse_chain(z_start, anchor, c, settings)
    x = recomputed_decode(lm.decode, straight_through(lm.quantize, z0), plan.chunk, plan.forward_chunk)
    return to_unit_range(x) if normalize is None else normalize_images(to_unit_range(x), *normalize)
