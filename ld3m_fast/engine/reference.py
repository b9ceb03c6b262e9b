"""Plain-PyTorch LD3M as the official code runs it: the oracle of parity tests and the benchmark baseline.

- ``render_unrolled``: the reverse chain written out op by op (no fused kernel, no custom
  autograd), optionally with ``torch.utils.checkpoint`` around each UNet call, as the official
  sampler does. Plain autograd through it is the gradient the engine must reproduce.
- ``official_backward``: the official training step's rendering and back-propagation: render all
  images without gradients, take the loss's gradient w.r.t. the images, then re-render chunk by
  chunk with gradients (checkpointed UNet calls) and back-propagate each chunk's image gradient.
  With ``fresh_noise=True`` the re-render draws new start noise, as the official code does.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from .chain import guidance_contexts
from .latent_model import as_latent_model
from .rendering import make_generator, start_noise, to_unit_range
from .schedule import DDIMSchedule


def render_unrolled(model, Z: torch.Tensor, c: torch.Tensor, steps: int, guidance: float = 3.0,
                    skip: str = "official", noise: torch.Tensor | None = None,
                    step_noise: list[torch.Tensor] | None = None, eta: float = 0.0,
                    checkpoint_unet: bool = False, return_latents: bool = False) -> torch.Tensor:
    """Images (or final latents) through the unrolled chain with plain autograd.

    ``noise`` is the start noise ε (drawn from the global RNG if ``None``); ``step_noise`` the
    per-step DDIM noise when ``eta > 0``.
    """
    lm = as_latent_model(model)
    schedule = DDIMSchedule.make(steps, lm.alphas_cumprod, guidance, skip, eta)
    noise = torch.randn_like(Z) if noise is None else noise
    uc = guidance_contexts(schedule, lm.unconditional_context(Z.shape[0]))

    def eps_fn(z, t, ctx):
        if uc is None:
            return lm.denoiser(z, t, ctx)
        eps_u, eps_c = lm.denoiser(torch.cat([z, z]), torch.cat([t, t]), torch.cat([uc.to(ctx), ctx])).chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    a = schedule.start_alpha
    z = math.sqrt(a) * Z + math.sqrt(1 - a) * noise
    z_T = z
    Zq = Z + (lm.quantize(Z).detach() - Z).detach()
    n = schedule.num_steps
    for i, tau in enumerate(schedule.timesteps):
        k = n - 1 - i  # the official `index`
        cf = schedule.coefficients[i]
        t = torch.full((Z.shape[0],), tau, device=Z.device, dtype=torch.long)
        e = checkpoint(eps_fn, z, t, c, use_reentrant=False) if checkpoint_unet else eps_fn(z, t, c)
        a_t, a_prev = cf.sqrt_alpha ** 2, cf.sqrt_alpha_prev ** 2
        pred_x0 = (z - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        if skip == "official":
            pred_x0 = (1 - k / (n - 1)) * pred_x0 + (k / (n - 1)) * Zq
        z_prev = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev - cf.sigma ** 2) * e
        if skip == "paper":
            w = (k + 1) / n
            z_prev = (1 - w) * z_prev + w * z_T
        if cf.sigma:
            z_prev = z_prev + cf.sigma * step_noise[i]
        z = z_prev
    if return_latents:
        return z
    zq = z + (lm.quantize(z).detach() - z).detach()
    return to_unit_range(lm.decode(zq))


def official_backward(model, Z: torch.Tensor, c: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                      steps: int, guidance: float = 3.0, skip: str = "official", chunk_size: int = 10,
                      seed: int | None = None, fresh_noise: bool = False) -> torch.Tensor:
    """One official-style render + back-propagation; accumulates into ``Z.grad``/``c.grad``; returns the loss."""
    gen = make_generator(seed)
    eps = start_noise(Z, gen)
    with torch.no_grad():
        images = render_unrolled(model, Z, c, steps, guidance, skip, noise=eps)
    images.requires_grad_(True)
    loss = loss_fn(images)
    (image_grad,) = torch.autograd.grad(loss, images)
    for s in range(0, Z.shape[0], chunk_size):
        sl = slice(s, s + chunk_size)
        noise = start_noise(Z[sl], gen) if fresh_noise else eps[sl]
        chunk_images = render_unrolled(model, Z[sl], c[sl], steps, guidance, skip, noise=noise, checkpoint_unet=True)
        chunk_images.backward(image_grad[sl])
    return loss.detach()
