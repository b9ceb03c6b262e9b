"""ld3m_fast: a fast, memory-bounded engine for LD3M dataset distillation through a latent diffusion model."""
from .backends import available_backends
from .model_adapter import LatentModel, as_denoiser, as_latent_model
from .render import render
from .sampler import DDIMSampler, patch_ldm
from .schedule import DDIMSchedule, ddim_timesteps
from .step import denoise_step
from . import reference
from . import data
from .data import ImageDataset, load_dataset

__version__ = "0.1.0"
__all__ = ["render", "DDIMSampler", "patch_ldm", "LatentModel", "as_denoiser", "as_latent_model",
           "DDIMSchedule", "ddim_timesteps", "denoise_step", "available_backends", "reference",
           "data", "ImageDataset", "load_dataset"]
