"""A drop-in for the official LD3M ``DDIMSampler`` running on the engine's chain, and ``patch_ldm``.

``DDIMSampler(model).sample(S, batch_size, shape, conditioning=c, x_T=Z, unconditional_guidance_scale=g,
unconditional_conditioning=uc)`` returns the final latents of the official algorithm: the start
is the model's own ``q_sample(x_T, τ_last)``, the skip blends x̂0 with ``quantize(x_T)`` with weight
``index / (steps − 1)``. Gradients reach ``x_T`` and ``conditioning`` through the engine's chain
(per-step recomputation), on whatever device the model is on (the official one hard-codes CUDA).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from .chain import ChainSettings, reverse_chain
from .latent_model import check_latents_and_context
from .memory import DEFAULT_CHUNK
from .schedule import DDIMSchedule, ddim_timesteps

# options of the official sample() that LD3M never sets; non-default values are refused, not ignored
_UNSUPPORTED = {"normals_sequence": None, "img_callback": None, "quantize_x0": False,
                "mask": None, "x0": None, "temperature": 1.0, "noise_dropout": 0.0, "score_corrector": None,
                "corrector_kwargs": None}


class DDIMSampler:
    """Same constructor, ``make_schedule`` and ``sample`` as the official LD3M sampler."""

    def __init__(self, model, schedule: str = "linear", *, chunk_size: int | None = None,
                 backend: str | None = None, skip: str = "official", **kwargs):
        self.model = model
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule
        self.chunk_size, self.backend, self.skip = chunk_size, backend, skip

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        """Compute the DDIM timesteps and coefficients (as attributes, like the official sampler)."""
        if ddim_discretize != "uniform":
            raise NotImplementedError(f"ddim_discretize={ddim_discretize!r}: only 'uniform' (LD3M's) is supported")
        acp = self.model.alphas_cumprod
        if acp.shape[0] != self.ddpm_num_timesteps:
            raise ValueError("model.alphas_cumprod must have one value per training timestep")
        self.ddim_timesteps = np.asarray(ddim_timesteps(ddim_num_steps, self.ddpm_num_timesteps))
        if verbose:
            print(f"Selected timesteps for ddim sampler: {self.ddim_timesteps}")
        self._ddim_eta, self._ddim_num_steps = ddim_eta, ddim_num_steps
        a = acp.detach().double().cpu()
        to = dict(device=self.model.device, dtype=torch.float32)
        self.ddim_alphas = a[self.ddim_timesteps].to(**to)
        self.ddim_alphas_prev = torch.cat([a[:1], a[self.ddim_timesteps[:-1]]]).to(**to)
        self.ddim_sigmas = (ddim_eta * torch.sqrt((1 - self.ddim_alphas_prev) / (1 - self.ddim_alphas)
                                                  * (1 - self.ddim_alphas / self.ddim_alphas_prev)))
        self.ddim_sqrt_one_minus_alphas = torch.sqrt(1 - self.ddim_alphas)

    def sample(self, S: int, batch_size: int, shape, conditioning=None, eta: float = 0.0, verbose: bool = True,
               x_T: torch.Tensor | None = None, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: torch.Tensor | None = None, log_every_t: int = 100,
               callback=None, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """Final latents ``(batch_size, *shape)`` of the official LD3M sampler, differentiable."""
        for name, value in kwargs.items():
            default = _UNSUPPORTED.get(name, value)
            if not (value is default or (isinstance(value, (int, float)) and value == default)):
                raise NotImplementedError(f"{name}={value!r} is not supported by ld3m_fast.DDIMSampler "
                                          "(LD3M does not use it); leave it at its default")
        if conditioning is None or isinstance(conditioning, dict):
            raise TypeError("conditioning must be the (batch_size, L, D) class-embedding tensor "
                            "(model.get_learned_conditioning(...))")
        self.make_schedule(S, ddim_eta=eta, verbose=verbose)
        size = (batch_size, *shape)
        device = self.model.device
        skip = self.skip
        if x_T is None:  # the official LD3M sampler needs x_T; without it: plain DDIM from pure noise
            z_start, anchor, skip = torch.randn(size, generator=generator).to(device, conditioning.dtype), None, "none"
        else:
            if tuple(x_T.shape) != size:
                raise ValueError(f"x_T has shape {tuple(x_T.shape)} but batch_size and shape ask for {size}")
            check_latents_and_context(x_T, conditioning, z_name="x_T", c_name="conditioning")
            ts = torch.full((batch_size,), int(self.ddim_timesteps[-1]), device=device, dtype=torch.long)
            z_start = self.model.q_sample(x_T, ts)
            anchor = self.model.first_stage_model.quantize(x_T)[0] if skip == "official" else None
            if skip == "paper":
                anchor = z_start
        # the official sampler runs unguided when it gets no unconditional conditioning, whatever the scale
        uc = None if unconditional_conditioning is None else unconditional_conditioning.to(conditioning)
        schedule = DDIMSchedule.make(S, self.model.alphas_cumprod, 1.0 if uc is None else unconditional_guidance_scale,
                                     skip, eta)
        chunk = min(self.chunk_size or DEFAULT_CHUNK, batch_size)
        settings = ChainSettings(self.model.apply_model, schedule, uc, chunk, self.backend, generator, progress=verbose,
                                 callback=callback)
        return reverse_chain(z_start, anchor, conditioning, settings)


def patch_ldm() -> type:
    """Make an installed ``ldm.models.diffusion.ddim`` (and modules that imported from it) use this sampler.

    Returns the original class, so ``ldm.models.diffusion.ddim.DDIMSampler = original`` undoes it.
    """
    try:
        import ldm.models.diffusion.ddim as ddim_module
    except ImportError as err:
        raise ImportError("patch_ldm() needs the official code's 'ldm' package on sys.path "
                          "(run from its src/latentdiff folder or add it to PYTHONPATH)") from err
    original = ddim_module.DDIMSampler
    if original is DDIMSampler:
        return original
    for module in list(sys.modules.values()):
        if module is not None and getattr(module, "DDIMSampler", None) is original:
            module.DDIMSampler = DDIMSampler
    return original
