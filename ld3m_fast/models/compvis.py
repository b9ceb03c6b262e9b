"""CompVis checkpoint layout ↔ this package's modules: the key mapping, both ways, and its checks.

A CompVis ``LatentDiffusion`` checkpoint names the UNet ``model.diffusion_model.{input_blocks,
middle_block, output_blocks, time_embed, out}.*``, the VQ model ``first_stage_model.{encoder,
decoder}.{down,mid,up}.*`` plus ``quant_conv``/``post_quant_conv``/``quantize``, the class embedder
``cond_stage_model.embedding.weight``, and the schedule buffers. The mapping is generated from the
``LDMConfig`` as a table of module prefixes (CompVis → ours, with the kind of module) and, per kind,
the renaming of its sub-modules. Every checkpoint key must map onto a parameter of the same shape,
and every parameter must be covered: otherwise loading fails with the lists of missing, unexpected
and mis-shaped keys and a description of what the checkpoint seems to be.
"""
from __future__ import annotations

import re
import warnings

import torch

from ..errors import InvalidArgumentError
from .config import LDMConfig
from .ldm import SCHEDULE_BUFFERS, LatentDiffusion, schedule_tensors

UNET, VQ = "model.diffusion_model.", "first_stage_model."

# sub-module renames inside one module, per kind (CompVis name -> ours)
_SUB = {
    "same": None,
    "unet_res": {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"},
    "vq_res": {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"},
    "vq_attn": {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"},
}
_CONV_AS_LINEAR = {"to_q", "to_k", "to_v", "to_out.0"}  # CompVis VQ attention uses 1x1 convs, diffusers linears


def prefix_table(cfg: LDMConfig) -> list[tuple[str, str, str]]:
    """``(compvis_prefix, our_prefix, kind)`` for every module of the model described by ``cfg``."""
    rows = [("model.diffusion_model.time_embed.0", "model.diffusion_model.time_embedding.linear_1", "same"),
            ("model.diffusion_model.time_embed.2", "model.diffusion_model.time_embedding.linear_2", "same"),
            ("model.diffusion_model.input_blocks.0.0", "model.diffusion_model.conv_in", "same"),
            ("model.diffusion_model.out.0", "model.diffusion_model.conv_norm_out", "same"),
            ("model.diffusion_model.out.2", "model.diffusion_model.conv_out", "same")]
    u = cfg.unet
    L, levels = u.layers_per_block, len(u.block_channels)
    cv, us = "model.diffusion_model.", "model.diffusion_model."
    for lv in range(levels):
        for j in range(L):
            idx = 1 + lv * (L + 1) + j
            rows.append((f"{cv}input_blocks.{idx}.0", f"{us}down_blocks.{lv}.resnets.{j}", "unet_res"))
            if u.cross_attention[lv]:
                rows.append((f"{cv}input_blocks.{idx}.1", f"{us}down_blocks.{lv}.attentions.{j}", "same"))
        if lv < levels - 1:
            rows.append((f"{cv}input_blocks.{1 + lv * (L + 1) + L}.0.op", f"{us}down_blocks.{lv}.downsamplers.0.conv",
                         "same"))
    rows += [(f"{cv}middle_block.0", f"{us}mid_block.resnets.0", "unet_res"),
             (f"{cv}middle_block.1", f"{us}mid_block.attentions.0", "same"),
             (f"{cv}middle_block.2", f"{us}mid_block.resnets.1", "unet_res")]
    for ul in range(levels):
        lv = levels - 1 - ul
        for j in range(L + 1):
            idx = ul * (L + 1) + j
            rows.append((f"{cv}output_blocks.{idx}.0", f"{us}up_blocks.{ul}.resnets.{j}", "unet_res"))
            if u.cross_attention[lv]:
                rows.append((f"{cv}output_blocks.{idx}.1", f"{us}up_blocks.{ul}.attentions.{j}", "same"))
            if lv > 0 and j == L:
                pos = 2 if u.cross_attention[lv] else 1
                rows.append((f"{cv}output_blocks.{idx}.{pos}.conv", f"{us}up_blocks.{ul}.upsamplers.0.conv", "same"))

    v = cfg.vq
    n = len(v.ch_mult)
    for part in ("encoder", "decoder"):
        p = f"{VQ}{part}."
        rows += [(f"{p}conv_in", f"{p}conv_in", "same"), (f"{p}conv_out", f"{p}conv_out", "same"),
                 (f"{p}norm_out", f"{p}conv_norm_out", "same"),
                 (f"{p}mid.block_1", f"{p}mid_block.resnets.0", "vq_res"),
                 (f"{p}mid.attn_1", f"{p}mid_block.attentions.0", "vq_attn"),
                 (f"{p}mid.block_2", f"{p}mid_block.resnets.1", "vq_res")]
    for lv in range(n):
        for j in range(v.num_res_blocks):
            rows.append((f"{VQ}encoder.down.{lv}.block.{j}", f"{VQ}encoder.down_blocks.{lv}.resnets.{j}", "vq_res"))
        if lv < n - 1:
            rows.append((f"{VQ}encoder.down.{lv}.downsample.conv", f"{VQ}encoder.down_blocks.{lv}.downsamplers.0.conv",
                         "same"))
        for j in range(v.num_res_blocks + 1):
            rows.append((f"{VQ}decoder.up.{lv}.block.{j}", f"{VQ}decoder.up_blocks.{n - 1 - lv}.resnets.{j}", "vq_res"))
        if lv > 0:
            rows.append((f"{VQ}decoder.up.{lv}.upsample.conv", f"{VQ}decoder.up_blocks.{n - 1 - lv}.upsamplers.0.conv",
                         "same"))
    rows += [(f"{VQ}quant_conv", f"{VQ}quant_conv", "same"), (f"{VQ}post_quant_conv", f"{VQ}post_quant_conv", "same"),
             (f"{VQ}quantize", f"{VQ}quantize", "same"), ("cond_stage_model", "cond_stage_model", "same")]
    return rows


def _rename(key: str, table: list[tuple[str, str, str]], inverse: bool) -> tuple[str, str] | None:
    """``(renamed key, kind)``, or ``None`` if no module of the table owns ``key``."""
    best = None
    for cv, us, kind in table:
        src, dst = (us, cv) if inverse else (cv, us)
        if key.startswith(src + ".") and (best is None or len(src) > len(best[0])):
            best = (src, dst, kind)
    if best is None:
        return None
    src, dst, kind = best
    rest = key[len(src) + 1:]
    sub = _SUB[kind]
    if sub is not None:
        module, _, param = rest.rpartition(".")
        names = {v: k for k, v in sub.items()} if inverse else sub
        if module not in names:
            return None
        rest = f"{names[module]}.{param}"
    return f"{dst}.{rest}", kind


def _reshape(tensor: torch.Tensor, target_shape) -> torch.Tensor:
    """1×1 conv weights ↔ linear weights (CompVis VQ attention); anything else unchanged."""
    if tensor.shape != target_shape and tensor.numel() == torch.Size(target_shape).numel() and tensor.dim() in (2, 4):
        return tensor.reshape(target_shape)
    return tensor


def _fmt_list(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def compvis_to_state_dict(sd: dict[str, torch.Tensor], model: LatentDiffusion, source: str = "checkpoint") -> dict:
    """Our state dict from a CompVis-layout one, checked key by key and shape by shape against ``model``.

    Schedule buffers are compared with the model's schedule; ``model_ema.*`` (an EMA copy that
    CompVis only uses inside ``ema_scope``; one warning says it is skipped) and ``lvlb_weights``/``logvar``
    are accepted and not loaded.
    Raises ``ValueError`` listing missing, unexpected and mis-shaped keys, with a description of the file.
    """
    cfg = model.config
    table = prefix_table(cfg)
    want = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict(keep_vars=True).items()}
    out, unexpected, misshaped, seen = {}, [], [], set()
    ema = [k for k in sd if k.startswith("model_ema.")]
    if ema:
        warnings.warn(f"ld3m_fast: {source} holds an EMA copy of the UNet ({len(ema)} model_ema.* tensors); CompVis "
                      "samples with the regular weights outside ema_scope(), and so does ld3m_fast: EMA not loaded",
                      RuntimeWarning, stacklevel=3)
    for key, tensor in sd.items():
        if key in SCHEDULE_BUFFERS or key.startswith("model_ema.") or key in ("lvlb_weights", "logvar", "scale_factor"):
            continue
        renamed = _rename(key, table, inverse=False)
        if renamed is None or renamed[0] not in want:
            unexpected.append(key)
            continue
        ours = renamed[0]
        seen.add(ours)
        t = _reshape(tensor, want[ours][0]) if renamed[1] == "vq_attn" else tensor
        if tuple(t.shape) != want[ours][0]:
            misshaped.append(f"{key} {tuple(tensor.shape)} (expected {want[ours][0]})")
            continue
        out[ours] = t
    missing = [_rename(k, table, inverse=True)[0] if _rename(k, table, inverse=True) else k
               for k in want if k not in seen]
    if missing or unexpected or misshaped:
        parts = [f"{source} does not match the {cfg.name!r} architecture: {describe_compvis(sd)}; "
                 f"{cfg.name!r} has {expected_description(cfg)}."]
        if missing:
            parts.append(f"missing keys: {_fmt_list(sorted(missing))}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt_list(sorted(unexpected))}")
        if misshaped:
            parts.append(f"keys of the wrong shape: {_fmt_list(misshaped)}")
        raise InvalidArgumentError("\n".join(parts))
    _check_schedule(sd, cfg, source)
    if "scale_factor" in sd and abs(float(sd["scale_factor"]) - cfg.scale_factor) > 1e-6 * abs(cfg.scale_factor):
        raise InvalidArgumentError(f"{source} has scale_factor={float(sd['scale_factor'])} but the config says "
                                   f"{cfg.scale_factor}; use config.replace(scale_factor=...)")
    return out


def _check_schedule(sd, cfg: LDMConfig, source: str) -> None:
    ours = schedule_tensors(cfg)
    for name in SCHEDULE_BUFFERS:
        if name not in sd:
            continue
        theirs = sd[name].detach().double().cpu()
        mine = ours[name].double()
        if theirs.shape != mine.shape or not torch.allclose(theirs, mine, rtol=1e-5, atol=1e-7):
            raise InvalidArgumentError(
                f"{source} was trained with another noise schedule: its {name} differs from the linear "
                f"schedule of {cfg.num_timesteps} steps from {cfg.linear_start} to {cfg.linear_end}. "
                "Set num_timesteps/linear_start/linear_end in the config to match")


def state_dict_to_compvis(model: LatentDiffusion) -> dict[str, torch.Tensor]:
    """The model's weights in the CompVis layout (with the schedule buffers, as CompVis saves them)."""
    table = prefix_table(model.config)
    out = {}
    for key, tensor in model.state_dict().items():
        renamed = _rename(key, table, inverse=True)
        if renamed is None:
            raise RuntimeError(f"no CompVis name for {key}")  # a gap in prefix_table
        name, kind = renamed
        if kind == "vq_attn" and name.endswith(".weight") and tensor.dim() == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[name] = tensor
    for name, value in schedule_tensors(model.config).items():
        out[name] = value
    return out


def save_compvis_checkpoint(model: LatentDiffusion, path) -> None:
    """Write ``{"state_dict": ...}`` in CompVis's layout with ``torch.save`` (like a Lightning checkpoint)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict_to_compvis(model).items()}
    torch.save({"state_dict": sd}, path)


def describe_compvis(sd: dict[str, torch.Tensor]) -> str:
    """A one-line guess of what model a CompVis-style state dict holds (for error messages)."""
    keys = list(sd)
    if not any(k.startswith(UNET) for k in keys):
        top = sorted({k.split(".")[0] for k in keys})
        if any(k.startswith(("down_blocks.", "conv_in.", "encoder.down_blocks.")) for k in keys):
            return (f"it has no {UNET}* keys but diffusers-style names (top level: {_fmt_list(top, 6)}); "
                    "save diffusers models as a folder and load that folder")
        return f"it is not a CompVis LatentDiffusion state dict (no {UNET}* keys; top level: {_fmt_list(top, 6)})"
    facts = []
    w = sd.get(UNET + "input_blocks.0.0.weight")
    if w is not None and w.dim() == 4:
        facts.append(f"UNet model_channels={w.shape[0]}, in_channels={w.shape[1]}")
    ctx = next((v.shape[1] for k, v in sd.items() if k.startswith(UNET) and k.endswith("attn2.to_k.weight")), None)
    if ctx is not None:
        facts.append(f"context_dim={ctx}")
    levels = {int(m.group(1)) for k in keys if (m := re.match(re.escape(VQ) + r"encoder\.down\.(\d+)\.", k))}
    if VQ + "quantize.embedding.weight" in sd:
        n_embed, dim = sd[VQ + "quantize.embedding.weight"].shape
        facts.append(f"VQ first stage f={2 ** (max(levels, default=0))} with {n_embed} codes of size {dim}")
    elif any(k.startswith(VQ) for k in keys):
        facts.append(f"KL autoencoder first stage f={2 ** (max(levels, default=0))} (not VQ)")
    if "cond_stage_model.embedding.weight" in sd:
        facts.append(f"class embedder with {sd['cond_stage_model.embedding.weight'].shape[0]} rows")
    elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
        kind = "CLIP text encoder (a Stable Diffusion v1 checkpoint?)" if any(
            "text_model" in k for k in keys) else "text transformer"
        facts.append(f"text conditioning through a {kind}")
    elif not any(k.startswith("cond_stage_model.") for k in keys):
        facts.append("no conditioning model")
    return "it has " + ", ".join(facts) if facts else "its layout is not recognised"


def expected_description(cfg: LDMConfig) -> str:
    """The facts ``describe_compvis`` would state for a checkpoint of ``cfg``."""
    return (f"UNet model_channels={cfg.unet.block_channels[0]}, in_channels={cfg.latent_channels}, "
            f"context_dim={cfg.context_dim}, VQ first stage f={cfg.vq.factor} with {cfg.vq.n_embed} codes of size "
            f"{cfg.vq.embed_dim}, class embedder with {cfg.n_classes + 1} rows")
