"""Latent diffusion models for ld3m_fast: architectures, CompVis/diffusers/own-format loading, speed switches.

- ``load_ldm(name_or_path, checkpoint=None, device=None, dtype=None)``: ``"cin256-v2"`` (with the
  CompVis ``model.ckpt`` as ``checkpoint``), ``"tiny"``, ``"small"``, an ``LDMConfig``, a file from
  ``save_ldm``, or a diffusers-format folder. Never downloads.
- ``build_ldm(config)``: fresh random (trainable) weights.
- ``save_ldm(model, path, format="ld3m" | "diffusers" | "compvis")``.
- ``optimize(model, bf16=, fused_groupnorm_silu=, channels_last=, attention=, checkpoint_decoder=)``.

The model object (``LatentDiffusion``) has CompVis's surface, so ``ld3m_fast.render``,
``DDIMSampler`` and official LD3M scripts use it directly.
"""
from .config import NAMED_CONFIGS, LDMConfig, UNetConfig, VQConfig, get_config
from .ldm import LatentDiffusion, build_ldm
from .load import load_ldm
from .optimize import optimize
from .storage import save_ldm

__all__ = ["load_ldm", "save_ldm", "build_ldm", "optimize", "LDMConfig", "UNetConfig", "VQConfig",
           "LatentDiffusion", "NAMED_CONFIGS", "get_config"]
