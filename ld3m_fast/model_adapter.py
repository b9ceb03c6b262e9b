"""Turn the models users bring into the four parts the engine needs.

The engine needs a noise predictor ``eps(z, t, context)``, a codebook lookup ``quantize(z)``, a
decoder ``decode(zq)`` → images in [-1, 1], and the unconditional context for guidance. It reads
them from, in order:

- a :class:`LatentModel` (explicit parts);
- a CompVis-style LDM (``apply_model``, ``first_stage_model.quantize/decode``, a class embedder at
  ``cond_stage_model.embedding`` whose last row is the unconditional class, ``alphas_cumprod``);
- for the noise predictor alone (``as_denoiser``): a diffusers ``UNet2DConditionModel`` (or any
  module returning an object with ``.sample``), or any callable ``eps(z, t, context)``.

Model weights are treated as frozen: the engine differentiates with respect to latents and
contexts only.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def as_denoiser(obj) -> Denoiser:
    """A callable ``eps(z, t, context)`` from a CompVis LDM, a diffusers UNet or a plain callable."""
    if hasattr(obj, "apply_model"):
        return obj.apply_model
    if hasattr(obj, "config") and "cross_attention_dim" in getattr(obj, "config", {}):
        def diffusers_eps(z, t, context, _unet=obj):
            return _unet(z, t, encoder_hidden_states=context).sample
        return diffusers_eps
    if callable(obj):
        return obj
    raise TypeError(f"cannot use a {type(obj).__name__} as a denoiser: pass a callable eps(z, t, context), "
                    "a diffusers UNet2DConditionModel or a model with apply_model(x, t, c)")


@dataclass
class LatentModel:
    """The parts of a latent diffusion model that rendering needs.

    ``quantize(z)`` returns the codebook vectors (the engine adds the straight-through gradient);
    ``unconditional`` is one context row ``(L, D)`` (the embedding of the unconditional class);
    ``alphas_cumprod`` is the training schedule (``None``: the cin256-v2 linear schedule).
    """

    denoiser: Denoiser
    quantize: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    unconditional: torch.Tensor | None = None
    alphas_cumprod: torch.Tensor | None = None
    latent_channels: int | None = None
    module: torch.nn.Module | None = None  # whose parameters tell the device/dtype, if any

    def unconditional_context(self, n: int) -> torch.Tensor | None:
        if self.unconditional is None:
            return None
        u = self.unconditional.detach()
        u = u.reshape(-1, u.shape[-1])  # (L, D)
        return u.unsqueeze(0).expand(n, -1, -1)


def _compvis_quantize(first_stage):
    def quantize(z):
        out = first_stage.quantize(z)
        return out[0] if isinstance(out, (tuple, list)) else out
    return quantize


def _compvis_decode(first_stage):
    decode = first_stage.decode
    try:
        takes_flag = "force_not_quantize" in inspect.signature(decode).parameters
    except (TypeError, ValueError):
        takes_flag = False
    if takes_flag:  # VQModelInterface.decode quantizes unless told not to; our input is quantized already
        return lambda zq: decode(zq, force_not_quantize=True)
    return decode


def _compvis_unconditional(model) -> torch.Tensor | None:
    if hasattr(model, "unconditional_embedding"):
        return model.unconditional_embedding()
    emb = getattr(getattr(model, "cond_stage_model", None), "embedding", None)
    if isinstance(emb, torch.nn.Embedding):
        return emb.weight[-1:].detach()  # (1, D): the last class is the unconditional one
    return None


def _latent_channels(model) -> int | None:
    fs = getattr(model, "first_stage_model", None)
    q = getattr(fs, "quantize", None)
    dim = getattr(q, "e_dim", None) or getattr(fs, "embed_dim", None)
    return int(dim) if dim else None


def as_latent_model(model) -> LatentModel:
    """Resolve ``model`` into a :class:`LatentModel` (see the module docstring for what fits)."""
    if isinstance(model, LatentModel):
        return model
    if hasattr(model, "apply_model") and hasattr(model, "first_stage_model"):
        fs = model.first_stage_model
        return LatentModel(
            denoiser=model.apply_model, quantize=_compvis_quantize(fs), decode=_compvis_decode(fs),
            unconditional=_compvis_unconditional(model), alphas_cumprod=getattr(model, "alphas_cumprod", None),
            latent_channels=_latent_channels(model), module=model if isinstance(model, torch.nn.Module) else None)
    raise TypeError(
        f"cannot render with a {type(model).__name__}: pass an ld3m_fast.LatentModel(denoiser, quantize, decode, ...) "
        "or a CompVis-style LDM with apply_model and first_stage_model")
