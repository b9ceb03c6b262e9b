"""ld3m_fast: a fast, memory-bounded engine for LD3M dataset distillation through a latent diffusion model.

Engine: ``render`` (LDM latents → images, differentiable, recomputed per step), ``DDIMSampler``
(drop-in for the official sampler), ``denoise_step`` (the fused step). Models: ``load_ldm``,
``build_ldm``, ``save_ldm``, ``optimize``, ``train_prior``. Distillation: ``distill``,
``train_experts``, ``evaluate``. Data: ``load_dataset``. Networks and augmentation: ``get_network``,
``dsa``.
"""
from .backends import available_backends
from .model_adapter import LatentModel, as_denoiser, as_latent_model
from .render import render
from .sampler import DDIMSampler, patch_ldm
from .schedule import DDIMSchedule, ddim_timesteps
from .step import denoise_step
from . import reference
from . import data, nets
from .data import ImageDataset, load_dataset
from .nets import NETWORKS, get_network
from .augment import DSA_STRATEGY, DSAParams, dsa
from .train_net import test_accuracy, train_network
from .evaluate import EvalTable, evaluate
from .models import LDMConfig, build_ldm, load_ldm, optimize, save_ldm
from .distill import DistillationDiverged, DistilledSet, ExpertBuffer, distill, train_experts
from .prior import sample_prior, train_prior
from . import demo

__version__ = "0.1.0"
__all__ = ["render", "DDIMSampler", "patch_ldm", "LatentModel", "as_denoiser", "as_latent_model",
           "DDIMSchedule", "ddim_timesteps", "denoise_step", "available_backends", "reference",
           "data", "ImageDataset", "load_dataset", "nets", "NETWORKS", "get_network", "DSA_STRATEGY", "DSAParams",
           "dsa", "train_network", "test_accuracy", "EvalTable", "evaluate", "LDMConfig", "build_ldm", "load_ldm",
           "optimize", "save_ldm", "distill", "train_experts", "ExpertBuffer", "DistilledSet", "DistillationDiverged",
           "train_prior", "sample_prior", "demo"]
