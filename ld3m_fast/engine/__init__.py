"""The engine: LD3M rendering with a fused, recomputed reverse chain. Needs torch only (no diffusers).

- ``fused_step``: the denoising step with the skip blend — definition, reference, backends, autograd op;
- ``extension``: the compiled kernels ``ld3m_fast._C`` (C++ and CUDA);
- ``schedule``: DDIM timesteps and per-step coefficients, as the official sampler computes them;
- ``latent_model``: ``LatentModel``, the one boundary to a latent diffusion model, and input checks;
- ``chain``: the reverse chain as one autograd function, recomputed step by step in backward;
- ``decode``: VQ straight-through and a decoder recomputed in backward;
- ``memory``: budgets and the rendering plan (chunk, kept steps, latent stride);
- ``rendering``: ``render``, latents and class embeddings → images;
- ``sampler``: ``DDIMSampler``, the drop-in for the official sampler, and ``patch_ldm``;
- ``official_step``: one rendering per training step for official-style loops (``one_render_backward``);
- ``reference``: plain-PyTorch LD3M as the official code runs it (the oracle of the tests).
"""
from .fused_step import (
                         BACKEND_NAMES,
                         StepCoefficients,
                         available_backends,
                         backend_status,
                         denoise_step,
                         get_backend,
                         select_backend,
)
from .latent_model import (
                         LatentModel,
                         as_denoiser,
                         as_latent_model,
                         check_latents_and_context,
)
from .rendering import render
from .official_step import one_render_backward, render_images
from .sampler import DDIMSampler, patch_ldm
from .schedule import DDIMSchedule, ddim_timesteps, linear_alphas_cumprod

__all__ = ["BACKEND_NAMES", "StepCoefficients", "available_backends", "backend_status", "denoise_step",
           "get_backend", "select_backend", "LatentModel", "as_denoiser", "as_latent_model",
           "check_latents_and_context", "render", "DDIMSampler", "patch_ldm", "one_render_backward", "render_images",
           "DDIMSchedule", "ddim_timesteps", "linear_alphas_cumprod"]
