"""``load_ldm``: one entry point for named architectures, CompVis checkpoints and saved models.

Nothing is ever downloaded: a name selects an architecture built here (random weights unless a
``checkpoint`` is given); anything else must be a path on the local disk.
"""
from __future__ import annotations

import os

import torch

from ..devices import resolve_device
from ..errors import InvalidArgumentError, InvalidTypeError, MissingFileError
from .compvis import compvis_to_state_dict
from .config import NAMED_CONFIGS, LDMConfig, get_config
from .files import is_safetensors, read_checkpoint, read_safetensors
from .ldm import LatentDiffusion, build_ldm, schedule_tensors
from .storage import is_own_file, own_config, read_diffusers_folder

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64, "fp64": torch.float64,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise InvalidArgumentError(f"dtype={dtype!r} is not a floating-point dtype: use torch.float32, torch.float64, "
                               "torch.bfloat16 or torch.float16")


def model_from_state_dict(cfg: LDMConfig, state_dict: dict, source: str) -> LatentDiffusion:
    """A model of ``cfg`` holding exactly ``state_dict`` (every key required, no extra, shapes checked)."""
    model = build_ldm(cfg, device="meta")
    want = model.state_dict(keep_vars=True)
    missing = sorted(set(want) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(want))
    misshaped = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})" for k, v in want.items()
                 if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or misshaped:
        msg = [f"{source} does not fit the {cfg.name!r} architecture it declares:"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshaped)):
            if items:
                msg.append(f"{label}: {', '.join(items[:12])}" + (f", ... ({len(items)} in all)" if len(items) > 12 else ""))
        raise InvalidArgumentError("\n".join(msg))
    model.load_state_dict(state_dict, strict=True, assign=True)
    for name, value in schedule_tensors(cfg).items():  # non-persistent buffers (still on meta): rebuilt, not loaded
        setattr(model, name, value)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"internal error: {left[:5]} were not loaded")
    return model


# Trained weights shipped inside the package, by name.
SHIPPED = {"fashion-mnist-prior": "priors/fashion_mnist_prior.safetensors"}


def shipped_path(name: str) -> str:
    """The file of a model shipped with the package (``SHIPPED``)."""
    from importlib import resources

    path = str(resources.files("ld3m_fast").joinpath(SHIPPED[name]))
    if not os.path.isfile(path):
        raise MissingFileError(f"the shipped model {name!r} ({path}) is missing: reinstall ld3m_fast, or make it with "
                                "`ld3m-fast train-prior` (README, 'The shipped prior')")
    return path


def load_ldm(name_or_path, checkpoint=None, device=None, dtype=None, *, freeze: bool = True) -> LatentDiffusion:
    """Load a class-conditional latent diffusion model.

    Args:
        name_or_path: a named architecture (``"cin256-v2"``, ``"tiny"``, ``"small"``, ``"fashion-mnist"``),
            a shipped trained model (``"fashion-mnist-prior"``), an ``LDMConfig``, or a local path: a file
            written by ``save_ldm`` (safetensors), a diffusers-format folder, or a CompVis checkpoint file
            (read as ``cin256-v2``).
        checkpoint: with a name or config, a CompVis-layout checkpoint to load into it (e.g. the
            CompVis ``cin256-v2`` ``model.ckpt``, a Lightning checkpoint). Without one, a named
            architecture gets random weights.
        device, dtype: where and in which floating dtype the model lives (default: a CUDA GPU when one is visible,
            else the CPU — ``ld3m_fast.devices``; float32).
        freeze: ``requires_grad_(False)`` and ``eval()`` (the engine differentiates latents, not weights).

    Checkpoints are read with ``torch.load(weights_only=True)``: no code from a file runs.
    """
    dtype, device = _dtype(dtype), resolve_device(device)
    if isinstance(name_or_path, str) and name_or_path in SHIPPED:
        name_or_path = shipped_path(name_or_path)
    is_name = isinstance(name_or_path, (LDMConfig, dict)) or (
        isinstance(name_or_path, str) and name_or_path in NAMED_CONFIGS)
    if is_name:
        cfg = get_config(name_or_path)
        if checkpoint is None:
            model = build_ldm(cfg)
        else:
            ckpt = os.fspath(checkpoint)
            sd = read_checkpoint(ckpt)
            model = model_from_state_dict(cfg, compvis_to_state_dict(sd, build_ldm(cfg, device="meta"), repr(ckpt)),
                                          repr(ckpt))
    elif isinstance(name_or_path, (str, os.PathLike)):
        path = os.fspath(name_or_path)
        if checkpoint is not None:
            raise InvalidArgumentError(
                "checkpoint= goes with an architecture name or LDMConfig (e.g. load_ldm('cin256-v2', "
                f"checkpoint=...)); {path!r} is already a path to load")
        model = _load_path(path)
    else:
        raise InvalidTypeError(
            f"name_or_path must be a model name, an LDMConfig or a path, not {type(name_or_path).__name__}")
    model = model.to(device=device, dtype=dtype)
    if freeze:
        model.requires_grad_(False).eval()
    return model


def _load_path(path: str) -> LatentDiffusion:
    if not os.path.exists(path):
        looks_like_path = os.sep in path or "." in os.path.basename(path)
        if looks_like_path:
            raise MissingFileError(f"{path!r} does not exist (load_ldm reads local files only; it never downloads)")
        raise InvalidArgumentError(
            f"unknown model name {path!r}: choose one of {sorted(NAMED_CONFIGS) + sorted(SHIPPED)}, "
            "or give a local path (load_ldm never downloads)")
    if os.path.isdir(path):
        cfg, sd = read_diffusers_folder(path)
        return model_from_state_dict(cfg, sd, repr(path))
    cfg = get_config("cin256-v2")  # any file but ours: a CompVis checkpoint of the model LD3M uses
    if os.path.getsize(path) > 0 and is_safetensors(path):
        sd, meta = read_safetensors(path)
        if is_own_file(meta):
            return model_from_state_dict(own_config(meta, path), sd, repr(path))
    else:
        sd = read_checkpoint(path)
    return model_from_state_dict(cfg, compvis_to_state_dict(sd, build_ldm(cfg, device="meta"), repr(path)), repr(path))
