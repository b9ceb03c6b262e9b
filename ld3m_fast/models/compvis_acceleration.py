"""``accelerate(model)``: a CompVis ``LatentDiffusion`` gets the engine's speed and keeps its API.

``ld3m_fast.optimize`` (bf16 autocast, fused GroupNorm+SiLU, SDPA/xformers attention, channels-last, decoder
recomputation) works on ld3m_fast's own ``LatentDiffusion``. ``accelerate`` builds one from the CompVis model in
memory — its configuration read from the modules (``infer_config``), its weights mapped key by key with
``compvis_to_state_dict`` (every key and shape checked; the tensors are shared, not copied) — runs it through
``optimize``, and routes the user's model to it: ``apply_model``, ``model.model`` (the diffusion wrapper),
``decode_first_stage``, ``differentiable_decode_first_stage``, ``encode_first_stage`` and
``first_stage_model.encode/decode`` become the accelerated model's. Everything else (``q_sample``, the schedule
buffers, ``get_learned_conditioning``, ``first_stage_model.quantize``) is the CompVis model's own, computing the same
values. So the official LD3M code, and ``ld3m_fast.DDIMSampler`` given that model, run on the accelerated one; the
accelerated model is ``model.ld3m_fast_model``; ``unaccelerate(model)`` undoes the routing.

What maps: class-conditional, eps-predicting LDMs with a VQ first stage and cross-attention (``SpatialTransformer``)
— the ``cin256-v2`` family LD3M uses. Others (unconditional or KL-autoencoder LDMs, self-attention UNets) are refused
with the reason (``acceleration_unsupported_reason``); they still run, unaccelerated, through the drop-in sampler.
Weights are taken when ``accelerate`` runs: move the model to its device and dtype first.
"""
from __future__ import annotations

import re
import warnings

import torch
from torch import nn

from ..errors import InvalidArgumentError, InvalidTypeError
from .compvis import compvis_to_state_dict
from .config import LDMConfig, UNetConfig, VQConfig
from .ldm import LatentDiffusion, build_ldm
from .load import model_from_state_dict
from .speedups import optimize

UNET, VQ = "model.diffusion_model.", "first_stage_model."
ATTRIBUTE = "ld3m_fast_model"  # where the accelerated model hangs on the user's model
# (owner path, method, the accelerated model's method at the same path): what the user's model routes to it
ROUTES = (("", "apply_model", "apply_model"), ("", "decode_first_stage", "decode_first_stage"),
          ("", "differentiable_decode_first_stage", "decode_first_stage"),
          ("", "encode_first_stage", "encode_first_stage"), ("model", "forward", "forward"),
          ("first_stage_model", "encode", "encode"), ("first_stage_model", "decode", "decode"))


def _unwrap(model):
    return model.module if isinstance(model, nn.DataParallel) else model


def acceleration_unsupported_reason(model) -> str | None:
    """Why ``accelerate`` cannot map ``model`` (``None`` if it can, as far as the modules tell)."""
    model = _unwrap(model)
    if isinstance(model, LatentDiffusion):
        return None
    if not all(hasattr(model, a) for a in ("apply_model", "first_stage_model", "model")) or \
            not hasattr(model.model, "diffusion_model"):
        return (f"a {type(model).__name__} is not a CompVis LatentDiffusion (apply_model, model.diffusion_model, "
                "first_stage_model)")
    if getattr(model, "parameterization", "eps") != "eps":
        return f"it predicts {model.parameterization!r}, not the noise ('eps')"
    if not isinstance(getattr(getattr(model, "cond_stage_model", None), "embedding", None), nn.Embedding):
        return "it has no class embedder (cond_stage_model.embedding): unconditional and text-conditioned LDMs stay " \
               "CompVis's"
    key = getattr(model.model, "conditioning_key", "crossattn")
    if key != "crossattn":
        return f"its conditioning is {key!r} (ld3m_fast's models are conditioned by cross-attention on a class)"
    if not hasattr(model.first_stage_model, "quantize"):
        return "its first stage is not a VQ autoencoder (a KL autoencoder?)"
    return None


def _indices(keys, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pat.match(k))})


def _first_group_norm(module: nn.Module) -> int:
    norm = next((m for m in module.modules() if isinstance(m, nn.GroupNorm)), None)
    return 32 if norm is None else norm.num_groups


def _heads(unet: nn.Module) -> dict:
    """``num_heads`` (the same count everywhere) or ``head_dim`` (the same width everywhere) of the UNet's attention."""
    pairs = {(m.to_q.out_features, int(m.heads)) for m in unet.modules()
             if hasattr(m, "heads") and isinstance(getattr(m, "to_q", None), nn.Linear)}
    if not pairs:
        raise InvalidArgumentError("accelerate found no cross-attention layer (a module with .heads and .to_q) in "
                                   "the UNet; pass config=LDMConfig(...) describing the model")
    counts = {h for _, h in pairs}
    if len(counts) == 1:
        return dict(num_heads=counts.pop(), head_dim=None)
    widths = {inner // h for inner, h in pairs}
    if len(widths) == 1:
        return dict(num_heads=None, head_dim=widths.pop())
    raise InvalidArgumentError(f"the UNet's attention layers have neither one head count nor one head width "
                               f"({sorted(pairs)}); ld3m_fast's UNet needs one of them")


def infer_config(model) -> LDMConfig:
    """The ``LDMConfig`` of a CompVis ``LatentDiffusion``, read from its weights' shapes and its modules."""
    model = _unwrap(model)
    reason = acceleration_unsupported_reason(model)
    if reason is not None:
        raise InvalidArgumentError(f"accelerate cannot map this model: {reason}")
    sd = model.state_dict()
    keys = list(sd)
    try:
        channels, level, per_level, attention = [], 0, {}, {}
        for i in _indices(keys, UNET + "input_blocks.")[1:]:
            block = f"{UNET}input_blocks.{i}."
            if block + "0.op.weight" in sd:
                level += 1
                continue
            out = sd[block + "0.in_layers.2.weight"].shape[0]
            if level == len(channels):
                channels.append(out)
            per_level[level] = per_level.get(level, 0) + 1
            attention[level] = block + "1.proj_in.weight" in sd
        depth = len(_indices(keys, UNET + "middle_block.1.transformer_blocks."))
        if len(set(per_level.values())) != 1:
            raise InvalidArgumentError(f"the UNet has {per_level} residual blocks per level; ld3m_fast's UNet needs "
                                       "one count for all levels")
        diffusion_model = model.model.diffusion_model
        unet = UNetConfig(block_channels=tuple(channels), layers_per_block=per_level[0],
                          cross_attention=tuple(attention[lv] for lv in range(len(channels))),
                          transformer_depth=depth, norm_groups=_first_group_norm(diffusion_model.input_blocks[1]),
                          **_heads(diffusion_model))
        ch = sd[VQ + "encoder.conv_in.weight"].shape[0]
        levels = _indices(keys, VQ + "encoder.down.")
        quant_conv = sd[VQ + "quant_conv.weight"]
        fs = model.first_stage_model
        vq = VQConfig(channels=ch,
                      ch_mult=tuple(sd[f"{VQ}encoder.down.{lv}.block.0.conv2.weight"].shape[0] // ch for lv in levels),
                      num_res_blocks=len(_indices(keys, VQ + "encoder.down.0.block.")),
                      embed_dim=quant_conv.shape[0], z_channels=quant_conv.shape[1],
                      n_embed=sd[VQ + "quantize.embedding.weight"].shape[0],
                      norm_groups=_first_group_norm(fs.encoder), beta=float(getattr(fs.quantize, "beta", 0.25)))
        rows, dim = sd["cond_stage_model.embedding.weight"].shape
    except KeyError as err:
        raise InvalidArgumentError(f"accelerate cannot read this model's configuration: it has no {err.args[0]} "
                                   "(not CompVis's module layout?); pass config=LDMConfig(...) describing it") from None
    betas = model.betas.detach().double().cpu()
    scale = model.scale_factor
    return LDMConfig(
        image_channels=sd[VQ + "encoder.conv_in.weight"].shape[1],
        image_size=int(getattr(model, "image_size", 8)) * vq.factor,  # latent size × f (only names the size)
        n_classes=rows - 1, context_dim=dim, vq=vq, unet=unet,
        num_timesteps=int(model.num_timesteps),
        linear_start=float(getattr(model, "linear_start", betas[0])),
        linear_end=float(getattr(model, "linear_end", betas[-1])),
        scale_factor=float(scale.item() if isinstance(scale, torch.Tensor) else scale),
        cond_stage_key=getattr(model, "cond_stage_key", "class_label"), name="compvis")


def _owner(model, path: str):
    return getattr(model, path) if path else model


def accelerate(model, config: LDMConfig | None = None, **optimize_switches):
    """Give a CompVis ``LatentDiffusion`` ld3m_fast's speed in place (see the module docstring); returns ``model``.

    ``config``: the architecture, if ``infer_config`` cannot read it. ``optimize_switches``: passed to
    ``ld3m_fast.optimize`` (``bf16``, ``fused_groupnorm_silu``, ``channels_last``, ``attention``,
    ``checkpoint_decoder``, ``checkpoint_unet``; default: on where they help, i.e. on a CUDA model). Calling it
    again changes the switches. An ld3m_fast ``LatentDiffusion`` is simply optimised.
    """
    target = _unwrap(model)
    if isinstance(target, LatentDiffusion):
        optimize(target, **optimize_switches)
        return model
    fast = target.__dict__.get(ATTRIBUTE)
    if fast is not None:
        optimize(fast, **optimize_switches)
        return model
    cfg = infer_config(target) if config is None else config
    if not isinstance(cfg, LDMConfig):
        raise InvalidTypeError(f"config must be an ld3m_fast LDMConfig, not {type(cfg).__name__}")
    source = f"the {type(target).__name__} given to accelerate"
    params = list(target.parameters())
    device = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params else torch.float32
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*EMA copy.*")  # the EMA weights are not the ones sampling uses
        try:
            state = compvis_to_state_dict(target.state_dict(keep_vars=True), build_ldm(cfg, device="meta"), source)
        except ValueError as err:
            raise InvalidArgumentError(f"accelerate cannot map this model onto ld3m_fast's: {err}\nIt still runs, "
                                       "unaccelerated, through ld3m_fast.DDIMSampler") from None
    trainable = {id(p): p.requires_grad for p in params}
    fast = model_from_state_dict(cfg, state, source).to(device=device, dtype=dtype)
    for p in fast.parameters():  # loading set the shared parameters' flags to the new model's: the user's stay
        p.requires_grad_(trainable.get(id(p), any(trainable.values())))
    fast.train(target.training)
    optimize(fast, **optimize_switches)
    for path, name, fast_name in ROUTES:
        owner = _owner(target, path)
        if hasattr(owner, name):
            object.__setattr__(owner, name, getattr(_owner(fast, path), fast_name))
    object.__setattr__(target, ATTRIBUTE, fast)
    return model


def unaccelerate(model):
    """Undo ``accelerate``: the model computes with its own modules again; returns ``model``."""
    target = _unwrap(model)
    fast = target.__dict__.pop(ATTRIBUTE, None)
    if fast is None:
        return model
    for path, name, _ in ROUTES:
        _owner(target, path).__dict__.pop(name, None)
    return model
