"""On-disk formats: this package's single-file safetensors format and diffusers-style folders.

- ``save_ldm(model, "m.safetensors")``: all weights in one safetensors file, the ``LDMConfig`` as
  JSON in its header (``safe_open(path).metadata()["config"]``).
- ``save_ldm(model, folder, format="diffusers")``: ``unet/`` (``UNet2DConditionModel``), ``vqvae/``
  (``VQModel``), ``scheduler/`` (``DDIMScheduler``) in diffusers' own layout, plus
  ``class_embedder/`` (the class embeddings) and an ``ld3m_fast`` entry in ``model_index.json``.
  Such a folder is read from the local disk only (never the Hub).
- ``save_ldm(model, "m.ckpt", format="compvis")``: a Lightning-style ``{"state_dict": ...}`` in
  CompVis's key layout (what ``load_ldm(config, checkpoint=...)`` reads).
"""
from __future__ import annotations

import json
import os

import torch

from ..errors import InvalidArgumentError, InvalidTypeError, MissingFileError
from .compvis import save_compvis_checkpoint
from .config import LDMConfig, UNetConfig, VQConfig
from .files import read_checkpoint, read_safetensors, write_safetensors
from .ldm import LatentDiffusion, build_unet

FORMAT_TAG = "ld3m_fast.ldm"
FORMAT_VERSION = "1"
WEIGHTS = "diffusion_pytorch_model.safetensors"
_PARTS = {"unet": "model.diffusion_model.", "vqvae": "first_stage_model.", "class_embedder": "cond_stage_model."}


# --- this package's format --------------------------------------------------------------------
def save_ldm(model: LatentDiffusion, path, format: str = "ld3m") -> None:
    """Save ``model``: ``format="ld3m"`` (one safetensors file), ``"diffusers"`` (a folder) or ``"compvis"``."""
    if not isinstance(model, LatentDiffusion):
        raise InvalidTypeError(f"save_ldm saves ld3m_fast LatentDiffusion models (from load_ldm/build_ldm), "
                               f"not {type(model).__name__}")
    path = os.fspath(path)
    if format == "ld3m":
        if os.path.isdir(path):
            raise InvalidArgumentError(f"{path!r} is a folder; give a file name such as model.safetensors "
                                       "(or format='diffusers' to write a folder)")
        write_safetensors(model.state_dict(), path, {"format": FORMAT_TAG, "format_version": FORMAT_VERSION,
                                                     "config": json.dumps(model.config.to_dict())})
    elif format == "diffusers":
        save_diffusers_folder(model, path)
    elif format == "compvis":
        save_compvis_checkpoint(model, path)
    else:
        raise InvalidArgumentError(f"format={format!r}: choose 'ld3m', 'diffusers' or 'compvis'")


def is_own_file(metadata: dict) -> bool:
    return metadata.get("format") == FORMAT_TAG


def own_config(metadata: dict, path: str) -> LDMConfig:
    """The ``LDMConfig`` stored in the header of a file written by ``save_ldm(..., format="ld3m")``."""
    if not is_own_file(metadata):
        raise InvalidArgumentError(f"{path!r} is a safetensors file but not one written by ld3m_fast.save_ldm")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise InvalidArgumentError(
            f"{path!r} has format version {metadata.get('format_version')!r}; this ld3m_fast reads "
            f"version {FORMAT_VERSION}: upgrade ld3m_fast")
    try:
        return LDMConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, json.JSONDecodeError) as err:
        raise InvalidArgumentError(f"{path!r}: its config header is damaged ({err})") from None


def read_own(path: str) -> tuple[LDMConfig, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a file written by ``save_ldm(..., format="ld3m")``."""
    tensors, meta = read_safetensors(path)
    return own_config(meta, path), tensors


# --- diffusers folders -------------------------------------------------------------------------
def _vq_model(cfg: LDMConfig):
    """A diffusers ``VQModel`` (on the meta device) with ``cfg``'s first-stage architecture: its config is the one saved."""
    from diffusers import VQModel

    v = cfg.vq
    with torch.device("meta"):
        return VQModel(in_channels=cfg.image_channels, out_channels=cfg.image_channels,
                       down_block_types=("DownEncoderBlock2D",) * len(v.ch_mult),
                       up_block_types=("UpDecoderBlock2D",) * len(v.ch_mult), block_out_channels=v.block_channels,
                       layers_per_block=v.num_res_blocks, act_fn="silu", latent_channels=v.z_ch,
                       sample_size=cfg.image_size, num_vq_embeddings=v.n_embed, norm_num_groups=v.norm_groups,
                       vq_embed_dim=v.embed_dim, scaling_factor=cfg.scale_factor, norm_type="group",
                       mid_block_add_attention=True)


def save_diffusers_folder(model: LatentDiffusion, folder: str) -> None:
    """Write ``model`` as a diffusers-style folder (see the module docstring)."""
    from diffusers import DDIMScheduler, __version__

    cfg = model.config
    os.makedirs(folder, exist_ok=True)
    sd = model.state_dict()
    for part, prefix in _PARTS.items():
        os.makedirs(os.path.join(folder, part), exist_ok=True)
        write_safetensors({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)},
                          os.path.join(folder, part, WEIGHTS), {"format": "pt"})
    model.diffusion_model.save_config(os.path.join(folder, "unet"))
    _vq_model(cfg).save_config(os.path.join(folder, "vqvae"))
    DDIMScheduler(num_train_timesteps=cfg.num_timesteps, beta_start=cfg.linear_start, beta_end=cfg.linear_end,
                  beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                  prediction_type="epsilon").save_config(os.path.join(folder, "scheduler"))
    _write_json(os.path.join(folder, "class_embedder", "config.json"),
                {"num_embeddings": cfg.n_classes + 1, "embedding_dim": cfg.context_dim,
                 "unconditional_class": cfg.n_classes})
    _write_json(os.path.join(folder, "model_index.json"), {
        "_class_name": "LD3MClassConditionalLDM", "_diffusers_version": __version__,
        "unet": ["diffusers", "UNet2DConditionModel"], "vqvae": ["diffusers", "VQModel"],
        "scheduler": ["diffusers", "DDIMScheduler"], "class_embedder": ["ld3m_fast", "ClassEmbedder"],
        "ld3m_fast": {"name": cfg.name, "image_size": cfg.image_size, "scale_factor": cfg.scale_factor,
                      "cond_stage_key": cfg.cond_stage_key,
                      "unet_attention": {"num_heads": cfg.unet.num_heads, "head_dim": cfg.unet.head_dim}}})


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"{path!r} is missing: a diffusers-format LDM folder needs unet/, vqvae/, "
                                "scheduler/ and class_embedder/ with their config files") from None
    except json.JSONDecodeError as err:
        raise InvalidArgumentError(f"{path!r} is not valid JSON ({err})") from None


def _part_weights(folder: str, part: str) -> dict[str, torch.Tensor]:
    d = os.path.join(folder, part)
    for name in (WEIGHTS, "diffusion_pytorch_model.bin"):
        p = os.path.join(d, name)
        if os.path.exists(p):
            return read_safetensors(p)[0] if name.endswith(".safetensors") else read_checkpoint(p)
    listing = sorted(os.listdir(d)) if os.path.isdir(d) else "no such folder"
    raise MissingFileError(f"no weights in {d!r} (looked for {WEIGHTS}; found: {listing})")


def _unet_config(c: dict, hint: dict) -> UNetConfig:
    blocks = tuple(c["block_out_channels"])
    down = tuple(c["down_block_types"])
    allowed = {"DownBlock2D": False, "CrossAttnDownBlock2D": True}
    if any(b not in allowed for b in down):
        raise InvalidArgumentError(
            f"unet down_block_types={list(down)}: ld3m_fast builds DownBlock2D/CrossAttnDownBlock2D only")
    heads = c.get("attention_head_dim") or 8
    heads = [heads] * len(blocks) if isinstance(heads, int) else list(heads)
    used = [h for h, a in zip(heads, [allowed[b] for b in down]) if a] + [heads[-1]]
    chans = [ch for ch, a in zip(blocks, [allowed[b] for b in down]) if a] + [blocks[-1]]
    fixed_count = len(set(used)) == 1
    fixed_size = len({ch // h for ch, h in zip(chans, used)}) == 1 and all(ch % h == 0 for ch, h in zip(chans, used))
    if fixed_count and fixed_size and hint.get("head_dim"):  # both readings fit: keep the one the folder records
        fixed_count = False
    if fixed_count:
        num_heads, head_dim = used[0], None
    elif fixed_size:
        num_heads, head_dim = None, chans[0] // used[0]
    else:
        raise InvalidArgumentError(f"unet attention heads {heads} are neither a fixed count nor a fixed head size")
    depth = c.get("transformer_layers_per_block", 1)
    if not isinstance(depth, int):
        if len(set(depth)) != 1:
            raise InvalidArgumentError(
                f"unet transformer_layers_per_block={depth}: one depth for all levels is supported")
        depth = depth[0]
    return UNetConfig(block_channels=blocks, layers_per_block=c["layers_per_block"],
                      cross_attention=tuple(allowed[b] for b in down), num_heads=num_heads, head_dim=head_dim,
                      transformer_depth=depth, norm_groups=c.get("norm_num_groups", 32))


def _vq_config(c: dict) -> VQConfig:
    blocks = list(c["block_out_channels"])
    if any(b % blocks[0] for b in blocks):
        raise InvalidArgumentError(
            f"vqvae block_out_channels={blocks} are not multiples of the first (CompVis ch_mult)")
    for key, want in (("norm_type", "group"), ("act_fn", "silu"), ("mid_block_add_attention", True)):
        if c.get(key, want) != want:
            raise InvalidArgumentError(f"vqvae {key}={c[key]!r} is not supported (need {want!r})")
    if any(b != "DownEncoderBlock2D" for b in c["down_block_types"]) or any(
            b != "UpDecoderBlock2D" for b in c["up_block_types"]):
        raise InvalidArgumentError("vqvae blocks must be DownEncoderBlock2D/UpDecoderBlock2D (no per-level attention)")
    latent = c.get("latent_channels", 3)
    embed_dim = c.get("vq_embed_dim") or latent
    return VQConfig(channels=blocks[0], ch_mult=tuple(b // blocks[0] for b in blocks),
                    num_res_blocks=c.get("layers_per_block", 1), embed_dim=embed_dim,
                    n_embed=c.get("num_vq_embeddings", 256), z_channels=None if latent == embed_dim else latent,
                    norm_groups=c.get("norm_num_groups", 32))


def read_diffusers_folder(folder: str) -> tuple[LDMConfig, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a diffusers-format class-conditional LDM folder on the local disk."""
    unet_c = _read_json(os.path.join(folder, "unet", "config.json"))
    vq_c = _read_json(os.path.join(folder, "vqvae", "config.json"))
    sched_c = _read_json(os.path.join(folder, "scheduler", "scheduler_config.json"))
    emb_c = _read_json(os.path.join(folder, "class_embedder", "config.json"))
    index = _read_json(os.path.join(folder, "model_index.json")) if os.path.exists(
        os.path.join(folder, "model_index.json")) else {}
    extra = index.get("ld3m_fast", {})
    if sched_c.get("beta_schedule") != "scaled_linear" or sched_c.get("prediction_type", "epsilon") != "epsilon":
        raise InvalidArgumentError(
            f"{folder!r}: scheduler beta_schedule={sched_c.get('beta_schedule')!r}, prediction_type="
            f"{sched_c.get('prediction_type')!r}; ld3m_fast needs CompVis's linear schedule "
            "('scaled_linear') and noise prediction ('epsilon')")
    vq = _vq_config(vq_c)
    image_size = extra.get("image_size") or unet_c.get("sample_size", 32) * vq.factor
    cfg = LDMConfig(image_channels=vq_c.get("in_channels", 3), image_size=image_size,
                    n_classes=emb_c["num_embeddings"] - 1, context_dim=emb_c["embedding_dim"], vq=vq,
                    unet=_unet_config(unet_c, extra.get("unet_attention", {})),
                    num_timesteps=sched_c.get("num_train_timesteps", 1000),
                    linear_start=sched_c["beta_start"], linear_end=sched_c["beta_end"],
                    scale_factor=extra.get("scale_factor", 1.0),
                    cond_stage_key=extra.get("cond_stage_key", "class_label"), name=extra.get("name", "custom"))
    _check_unet_config(unet_c, cfg, folder)
    sd = {}
    for part, prefix in _PARTS.items():
        sd.update({prefix + k: v for k, v in _part_weights(folder, part).items()})
    return cfg, sd


def _check_unet_config(theirs: dict, cfg: LDMConfig, folder: str) -> None:
    """Every setting of the folder's UNet config must equal what ``build_unet(cfg)`` builds."""
    with torch.device("meta"):
        ours = dict(build_unet(cfg).config)
    ignore = {"sample_size", "attention_head_dim", "transformer_layers_per_block"}
    for key, value in theirs.items():
        if key.startswith("_") or key in ignore or key not in ours:
            continue
        mine = ours[key]
        norm = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)
        if norm(value) != norm(mine):
            raise InvalidArgumentError(
                f"{folder!r}: unet {key}={value!r} is not supported by ld3m_fast (it builds {mine!r})")
