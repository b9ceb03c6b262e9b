"""Latent diffusion models for ld3m_fast: architectures, CompVis/diffusers/own-format loading, speed switches,
prior training.

- ``load_ldm(name_or_path, checkpoint=None, device=None, dtype=None)``: ``"cin256-v2"`` (with the
  CompVis ``model.ckpt`` as ``checkpoint``), ``"tiny"``, ``"small"``, ``"fashion-mnist"``, the shipped
  ``"fashion-mnist-prior"``, an ``LDMConfig``, a file from ``save_ldm``, or a diffusers-format
  folder. Never downloads.
- ``build_ldm(config)``: fresh random (trainable) weights.
- ``save_ldm(model, path, format="ld3m" | "diffusers" | "compvis")``.
- ``optimize(model, bf16=, fused_groupnorm_silu=, channels_last=, attention=, checkpoint_decoder=)``.
- ``train_prior(dataset, out)``: train a class-conditional LDM for a dataset (``prior``).
- ``accelerate(compvis_model)``: give a CompVis ``LatentDiffusion`` this package's speed, same weights
  (``compvis_acceleration``).

The model object (``LatentDiffusion``) has CompVis's surface, so ``ld3m_fast.render``,
``DDIMSampler`` and official LD3M scripts use it directly. It is built from diffusers' modules:
importing this package needs nothing, using a model class without diffusers raises one
``MissingDependencyError`` naming it. ``parts`` (class embedder, vector quantiser) needs torch only.
"""
import importlib

_EXPORTS = {
    "LDMConfig": "config", "UNetConfig": "config", "VQConfig": "config", "NAMED_CONFIGS": "config",
    "get_config": "config", "LatentDiffusion": "ldm", "build_ldm": "ldm", "load_ldm": "load",
    "optimize": "speedups", "save_ldm": "storage", "train_prior": "prior", "sample_prior": "prior",
    "accelerate": "compvis_acceleration", "unaccelerate": "compvis_acceleration", "infer_config": "compvis_acceleration",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
