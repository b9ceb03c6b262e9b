"""``render``: learnable latents and class embeddings → images, differentiable end to end.

Pipeline (docs/design.md §2, §5): ``z_T = sqrt(ā)·Z + sqrt(1−ā)·ε`` with ``ε`` fixed for the
rendering → the reverse chain with the LD3M skip (recomputed per step in backward) → VQ
straight-through → decoder (recomputed per chunk in backward) → ``(x + 1) / 2`` clamped to
[0, 1] → optional normalisation.
"""
from __future__ import annotations

import math

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from ..normalization import check_normalization, normalize as normalize_images
from ..seeding import check_seed
from .chain import ChainSettings, guidance_contexts, guided_eps, reverse_chain
from .decode import recomputed_decode, straight_through
from .latent_model import LatentModel, as_latent_model, check_latents_and_context
from .memory import CallCost, RenderCosts, measure_call, parse_memory_budget, resolve_plan
from .schedule import DDIMSchedule


def make_generator(seed: int | None = None, generator: torch.Generator | None = None) -> torch.Generator | None:
    """A CPU generator seeded with ``seed``, the given ``generator``, or ``None`` (the global RNG)."""
    if seed is not None and generator is not None:
        raise InvalidArgumentError("pass either seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise InvalidTypeError(f"generator must be a torch.Generator, not {type(generator).__name__}")
        return generator
    if seed is None:
        return None
    return torch.Generator().manual_seed(check_seed(seed))


def start_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``ε`` drawn on the CPU (the same values on every device) and moved to ``like``'s device."""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] → images in [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1)


def cost_probe(lm: LatentModel, Z, c, uc, schedule: DDIMSchedule, *, decode: bool = True):
    """A function returning what the planner needs (``resolve_plan``'s ``measure``): a ``RenderCosts`` with one
    image's (guided) denoiser call and decode measured by ``measure_call`` (peaks with and without gradients, what
    stays alive until backward; per call and per image), and the bytes of one image's latent, image and context.
    ``uc`` is one unconditional context row or ``None``; ``decode=False`` leaves the decoder out (a chain without
    decoding)."""
    def measure() -> RenderCosts:
        z1 = Z[:1].detach().requires_grad_(True)
        c1 = c[:1].detach().requires_grad_(c.requires_grad)
        t = torch.full((1,), schedule.timesteps[0], device=Z.device, dtype=torch.long)
        batch = (z1, t, c1) if uc is None else (z1, t, c1, uc)
        denoiser, _ = measure_call(lambda z, t, c, u=None: guided_eps(lm.denoiser, z, t, c, u), *batch)
        if decode:
            decoder, image = measure_call(lm.decode, z1)
            image_bytes = image[0].numel() * image.element_size()
        else:
            decoder, image_bytes = CallCost((), (0, 0), ()), 0
        return RenderCosts(denoiser, decoder, Z[0].numel() * Z.element_size(), image_bytes,
                           c[0].numel() * c.element_size())
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
        memory_budget: bytes or e.g. ``"8GiB"``: the most device memory this rendering may allocate, forward and
            the backward through it, above what is allocated when ``render`` is called (the model's weights and the
            caller's tensors are not part of it; see ``ld3m_fast.engine.memory``). One image's denoiser call and
            decode are measured first; the plan is the largest chunk of images that fits, then, when all images fit
            in one chunk, how many steps keep their denoiser graphs (no recomputation for them), and when not even
            one image fits beside every step's latent, the latent stride. A budget too small for one image is refused.
        seed / generator: fix the start noise ε (and the DDIM noise if ``eta > 0``).
        noise: the start noise ε itself (shape of ``Z``), instead of drawing it.
        chunk_size: images per recomputed denoiser call in backward (overrides ``memory_budget``;
            default 10). The no-grad forward runs all images at once (as the official code does), under a
            ``memory_budget`` as many as fit, or, with both, ``NO_GRAD_CHUNK_FACTOR`` chunks at once.
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
    if normalize is not None:  # checked now for form and values, against the images' channels once decoded
        mean, std = _pair(normalize)
        normalize = check_normalization(mean, std, channels=max(_length(mean), _length(std)))
    if noise is not None:
        if not isinstance(noise, torch.Tensor):
            raise InvalidTypeError(f"noise must be a torch.Tensor shaped like Z, not {type(noise).__name__}")
        if noise.shape != Z.shape:
            raise InvalidArgumentError(f"noise has shape {tuple(noise.shape)} but Z has {tuple(Z.shape)}: give one ε "
                                       "per latent")
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
    z_start = math.sqrt(schedule.start_alpha) * Z + math.sqrt(1 - schedule.start_alpha) * noise.to(Z)
    anchor = {"official": lambda: straight_through(lm.quantize, Z), "paper": lambda: z_start,
              "none": lambda: None}[skip]()
    settings = ChainSettings(lm.denoiser, schedule, uc, plan.chunk, backend, gen, progress,
                             forward_chunk_size=plan.forward_chunk,
                             keep_steps=frozenset(range(schedule.num_steps - plan.kept_steps, schedule.num_steps)),
                             latent_stride=plan.latent_stride)
    z0 = reverse_chain(z_start, anchor, c, settings)
    x = recomputed_decode(lm.decode, straight_through(lm.quantize, z0), plan.chunk, plan.forward_chunk)
    if check_finite and not torch.isfinite(x).all():
        raise InvalidArgumentError(
            f"rendering gave NaN/Inf images from finite Z and c (largest |Z| = {Z.detach().abs().max().item():.3g}, "
            f"|c| = {c.detach().abs().max().item():.3g}): the latents or embeddings are far outside the model's range "
            "(its latents are about unit scale); rescale Z or c")
    if normalize is None:
        return to_unit_range(x)
    return normalize_images(to_unit_range(x), *check_normalization(*normalize, channels=x.shape[1]))


def _pair(normalize) -> tuple:
    """``normalize`` as ``(mean, std)``, or a clear error."""
    if isinstance(normalize, (str, bytes)) or not hasattr(normalize, "__len__") or len(normalize) != 2:
        raise InvalidArgumentError(f"normalize={normalize!r} must be (mean, std), e.g. ((0.485, 0.456, 0.406), "
                                   "(0.229, 0.224, 0.225)), or None")
    return tuple(normalize)


def _length(values) -> int:
    return len(values) if hasattr(values, "__len__") and not isinstance(values, str) else 1
