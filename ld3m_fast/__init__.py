"""ld3m_fast: a fast, memory-bounded engine for LD3M dataset distillation through a latent diffusion model.

Engine (``ld3m_fast.engine``; torch only): ``render`` (LDM latents → images, differentiable,
recomputed per step), ``DDIMSampler`` and ``patch_ldm`` (drop-in for the official sampler),
``denoise_step`` (the fused step), ``reference`` (plain-PyTorch LD3M). Models (``ld3m_fast.models``;
diffusers): ``load_ldm``, ``build_ldm``, ``save_ldm``, ``optimize``, ``train_prior``. Distillation
(``ld3m_fast.distillation``): ``distill``, ``DistillConfig``, ``train_experts``, ``evaluate``. Data:
``load_dataset``. Networks and augmentation: ``get_network``, ``train_network``, ``dsa``.

Names are imported on first use, so ``import ld3m_fast`` is quick and needs neither diffusers nor
Triton.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # engine
    "render": "engine.rendering", "DDIMSampler": "engine.sampler", "patch_ldm": "engine.sampler",
    "LatentModel": "engine.latent_model", "as_denoiser": "engine.latent_model", "as_latent_model": "engine.latent_model",
    "DDIMSchedule": "engine.schedule", "ddim_timesteps": "engine.schedule", "denoise_step": "engine.fused_step",
    "available_backends": "engine.fused_step", "backend_status": "engine.fused_step",
    "one_render_backward": "engine.official_step", "accelerate": "models.compvis_acceleration",
    "unaccelerate": "models.compvis_acceleration",
    # models
    "LDMConfig": "models", "build_ldm": "models", "load_ldm": "models", "optimize": "models", "save_ldm": "models",
    "train_prior": "models", "sample_prior": "models",
    # distillation and evaluation
    "distill": "distillation.run", "DistillConfig": "distillation.config", "train_experts": "distillation.experts",
    "ExpertBuffer": "distillation.experts", "DistilledSet": "distillation.result",
    "evaluate": "evaluation", "EvalTable": "evaluation",
    "export_set": "export", "load_set": "export", "LoadedSet": "export", "RunLog": "tracking",
    # data, networks, augmentation
    "ImageDataset": "data", "load_dataset": "data", "NETWORKS": "nets", "get_network": "nets",
    "train_network": "nets.training", "test_accuracy": "nets.training",
    "DSA_STRATEGY": "augment", "DSAParams": "augment", "dsa": "augment",
    # errors
    "LD3MError": "errors", "DistillationDiverged": "errors", "MissingDependencyError": "errors",
}
_MODULES = {"reference": "engine.reference", "engine": "engine", "models": "models", "distillation": "distillation",
            "data": "data", "nets": "nets", "demo": "demo", "errors": "errors", "kernels": "kernels", "plots": "plots",
            "export": "export", "tracking": "tracking"}
__all__ = sorted(_EXPORTS) + sorted(_MODULES)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{_MODULES[name]}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # cached: the next access is a plain attribute
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
