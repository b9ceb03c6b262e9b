"""``LatentModel``: the one boundary between a latent diffusion model and everything that renders with it.

The engine and the distillation algorithms need, from a class-conditional LDM: a noise predictor
``eps(z, t, context)``, a codebook lookup ``quantize(z)``, a decoder ``decode(zq)`` → images in
[-1, 1], an encoder ``encode(images)`` → latents, the class contexts of class ids and of the
unconditional class (for guidance), the training schedule, and the device and dtype of the
weights. ``as_latent_model`` reads them from, in order:

- a :class:`LatentModel` (explicit parts);
- a CompVis-style LDM (``apply_model``, ``first_stage_model.encode/quantize/decode``,
  ``get_learned_conditioning`` with a class embedder at ``cond_stage_model.embedding`` whose last
  row is the unconditional class, ``alphas_cumprod``) — the official code's ``LatentDiffusion``,
  and ``ld3m_fast.models.LatentDiffusion`` which has the same surface.

``as_denoiser`` also takes a diffusers ``UNet2DConditionModel`` (any module returning an object
with ``.sample``) or a plain callable. Model weights are treated as frozen: the engine
differentiates with respect to latents and contexts only. Nothing here imports diffusers.

``check_latents_and_context`` validates what users pass in, naming the argument and the fix.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InvalidArgumentError, InvalidTypeError

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
    raise InvalidTypeError(f"cannot use a {type(obj).__name__} as a denoiser: pass a callable eps(z, t, context), "
                           "a diffusers UNet2DConditionModel or a model with apply_model(x, t, c)")


@dataclass
class LatentModel:
    """The parts of a latent diffusion model that rendering and distillation use.

    ``quantize(z)`` returns the codebook vectors (the engine adds the straight-through gradient);
    ``encode(x)`` the pre-quantisation latents of images; ``class_contexts(ids)`` the contexts
    ``(N, L, D)`` of class ids; ``unconditional`` one context row ``(L, D)`` (the unconditional
    class); ``alphas_cumprod`` the training schedule (``None``: the cin256-v2 linear schedule).
    ``device``/``dtype`` default to those of ``module``'s parameters (else CPU, float32).
    """

    denoiser: Denoiser
    quantize: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    unconditional: torch.Tensor | None = None
    alphas_cumprod: torch.Tensor | None = None
    latent_channels: int | None = None
    module: torch.nn.Module | None = None
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None
    class_contexts: Callable[[torch.Tensor], torch.Tensor] | None = None
    num_classes: int | None = None  # classes the class contexts know (the unconditional one not counted)
    device: torch.device | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self):
        p = next(iter(self.module.parameters()), None) if self.module is not None else None
        if self.device is None:
            self.device = p.device if p is not None else torch.device("cpu")
        if self.dtype is None:
            self.dtype = p.dtype if p is not None else torch.float32
        self.device = torch.device(self.device)

    def unconditional_context(self, n: int) -> torch.Tensor | None:
        """The unconditional context repeated for ``n`` images ``(n, L, D)``, or ``None`` if the model has none."""
        if self.unconditional is None:
            return None
        u = self.unconditional.detach()
        u = u.reshape(-1, u.shape[-1])  # (L, D)
        return u.unsqueeze(0).expand(n, -1, -1)

    def contexts(self, class_ids: torch.Tensor) -> torch.Tensor:
        """Contexts ``(N, L, D)`` of the class ids ``class_ids`` (checked against the classes the model knows)."""
        if self.class_contexts is None:
            raise InvalidTypeError(
                "this model has no class embedder: class-conditional rendering needs one "
                "(a CompVis-style LDM with get_learned_conditioning, or LatentModel(class_contexts=...))")
        ids = torch.as_tensor(class_ids)
        if self.num_classes is not None and ids.numel() and (int(ids.max()) >= self.num_classes or int(ids.min()) < 0):
            bad = sorted({int(i) for i in ids.flatten() if not 0 <= int(i) < self.num_classes})
            raise InvalidArgumentError(
                f"the LDM's class embedder knows classes 0..{self.num_classes - 1} (plus the "
                f"unconditional one), not {bad}; pass class_ids=... mapping each label to a class of "
                "the model")
        with torch.no_grad():
            c = self.class_contexts(ids.to(self.device))
        return c if c.dim() == 3 else c.unsqueeze(1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents of ``images`` (as the encoder expects them), without gradients."""
        if self.encode is None:
            raise InvalidTypeError("this model has no encoder (first_stage_model.encode): start the latents from noise "
                                   "(init='noise') or give LatentModel(encode=...)")
        with torch.no_grad():
            z = self.encode(images.to(self.device, self.dtype))
        return z[0] if isinstance(z, (tuple, list)) else z


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


def _class_embedding(model) -> torch.nn.Embedding | None:
    emb = getattr(getattr(model, "cond_stage_model", None), "embedding", None)
    return emb if isinstance(emb, torch.nn.Embedding) else None


def _compvis_unconditional(model) -> torch.Tensor | None:
    if hasattr(model, "unconditional_embedding"):
        return model.unconditional_embedding()
    emb = _class_embedding(model)
    return None if emb is None else emb.weight[-1:].detach()  # (1, D): the last class is the unconditional one


def _compvis_contexts(model):
    if not hasattr(model, "get_learned_conditioning"):
        return None
    key = getattr(model, "cond_stage_key", None)

    def contexts(ids):
        return model.get_learned_conditioning({key: ids} if key else ids)
    return contexts


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
        emb = _class_embedding(model)
        return LatentModel(
            denoiser=model.apply_model, quantize=_compvis_quantize(fs), decode=_compvis_decode(fs),
            unconditional=_compvis_unconditional(model), alphas_cumprod=getattr(model, "alphas_cumprod", None),
            latent_channels=_latent_channels(model), module=model if isinstance(model, torch.nn.Module) else None,
            encode=getattr(fs, "encode", None), class_contexts=_compvis_contexts(model),
            num_classes=None if emb is None else emb.num_embeddings - 1)
    raise InvalidTypeError(
        f"cannot render with a {type(model).__name__}: pass an ld3m_fast.LatentModel(denoiser, quantize, decode, ...) "
        "or a CompVis-style LDM with apply_model and first_stage_model")


def check_latents_and_context(Z: torch.Tensor, c: torch.Tensor, model: LatentModel | None = None,
                              check_finite: bool = True, z_name: str = "Z", c_name: str = "c") -> None:
    """Shapes, dtypes, devices and finiteness of the latents ``Z`` (N, C, h, w) and contexts ``c`` (N, L, D)."""
    for name, t in ((z_name, Z), (c_name, c)):
        if not isinstance(t, torch.Tensor):
            raise InvalidTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise InvalidTypeError(f"{name} has dtype {t.dtype}; pass a floating-point tensor (e.g. {name}.float())")
    if Z.dim() != 4:
        raise InvalidArgumentError(f"{z_name} must be (N, C, h, w), got shape {tuple(Z.shape)}")
    if c.dim() != 3:
        raise InvalidArgumentError(
            f"{c_name} must be (N, L, D) class embeddings (cin256-v2: (N, 1, 512)), got shape "
            f"{tuple(c.shape)}" + ("; add the token axis with c.unsqueeze(1)" if c.dim() == 2 else ""))
    if Z.shape[0] != c.shape[0]:
        raise InvalidArgumentError(f"{z_name} has {Z.shape[0]} latents but {c_name} has {c.shape[0]} embeddings: "
                                   f"pass one embedding per latent ({c_name}.shape[0] == {z_name}.shape[0])")
    if Z.shape[0] == 0:
        raise InvalidArgumentError(f"{z_name} is empty: there is nothing to render")
    if model is not None and model.unconditional is not None:
        u = model.unconditional.reshape(-1, model.unconditional.shape[-1])  # (L, D)
        if c.shape[-1] != u.shape[-1] or c.shape[1] != u.shape[0]:
            raise InvalidArgumentError(
                f"{c_name} has {c.shape[1]} tokens of width {c.shape[-1]} but the model's class embeddings have "
                f"{u.shape[0]} of width {u.shape[-1]} (cin256-v2: 1 × 512); make {c_name} with the model's "
                "get_learned_conditioning(class_ids)")
    if model is not None and model.latent_channels is not None and Z.shape[1] != model.latent_channels:
        raise InvalidArgumentError(
            f"{z_name} has {Z.shape[1]} channels but the model's latent space has {model.latent_channels} "
            f"(cin256-v2: 3); pass latents of shape (N, {model.latent_channels}, h, w)")
    if Z.device != c.device:
        raise InvalidArgumentError(f"{z_name} is on {Z.device} but {c_name} is on {c.device}: move both to one device")
    if Z.dtype != c.dtype:
        raise InvalidTypeError(f"{z_name} is {Z.dtype} but {c_name} is {c.dtype}: use one dtype for both "
                               f"(e.g. {c_name} = {c_name}.to({z_name}.dtype))")
    if model is not None and model.module is not None:
        if model.device != Z.device:
            raise InvalidArgumentError(f"the model is on {model.device} but {z_name} is on {Z.device}: "
                                       f"move them to one device (model.to(device) or {z_name}.to(device))")
        if model.dtype != Z.dtype:
            raise InvalidTypeError(f"the model's weights are {model.dtype} but {z_name} is {Z.dtype}: "
                                   f"convert one of them (model.to({z_name}.dtype) or {z_name}.to({model.dtype}))")
    if check_finite:
        for name, t in ((z_name, Z), (c_name, c)):
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise InvalidArgumentError(
                    f"{name} has {bad} NaN/Inf values; fix the input (or the learning rate that produced it). "
                    "Pass check_finite=False to skip this check")
