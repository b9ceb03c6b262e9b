"""``optimize(model, ...)``: speed and memory switches for a ``LatentDiffusion``, each undoable and tested.

- ``bf16``: the UNet and the VQ decoder run under ``torch.autocast(bfloat16)``; their outputs are
  cast back to the input dtype, so the engine's latents and gradients stay in float32.
- ``attention``: ``"sdpa"`` (``F.scaled_dot_product_attention``: flash/memory-efficient kernels on
  GPUs), ``"xformers"`` (when installed), ``"math"`` (explicit softmax(QKᵀ)V, the reference), or
  ``"auto"`` (xformers on CUDA when installed, else sdpa); see ``attention.py``.
- ``fused_groupnorm_silu``: the residual blocks of the UNet and of the VQ autoencoder, and their
  output norms, run GroupNorm+SiLU as one Triton kernel (forward and backward). Where the kernel
  cannot run (CPU tensors, no Triton) it falls back to PyTorch with one warning line.
- ``channels_last``: convolution weights in NHWC layout (faster cuDNN kernels with bf16 on GPUs).
- ``checkpoint_decoder``: the VQ decoder keeps only the input of each residual block for backward
  and recomputes the rest (at 256², float32: 280 MiB saved per image instead of 1606 MiB);
  ``checkpoint_unet`` does the same for the UNet's blocks (diffusers' gradient checkpointing).

``None`` (the default of the first three) means: on where it helps, i.e. on a CUDA model (bf16 if
the GPU supports it and the model is float32, the fused kernel if Triton is installed), off on the
CPU. A switch asked for where it cannot work falls back with one warning line, never an error.
``torch.compile`` is not applied: the eager model with these switches is what the benchmarks measure.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import InvalidArgumentError, InvalidTypeError
from .attention import AttentionProcessor
from .dependency import require_diffusers
from .fused_norm import (
    GroupNormSiLU,
    fallback_message,
    group_norm_silu,
    kernel_unsupported_reason,
    warn_once,
)
from .ldm import LatentDiffusion

require_diffusers()
from diffusers.models.attention_processor import Attention  # noqa: E402
from diffusers.models.resnet import ResnetBlock2D  # noqa: E402

ATTENTION = ("auto", "sdpa", "xformers", "math")


class FusedResnetBlock2D(ResnetBlock2D):
    """diffusers' ``ResnetBlock2D`` (plain variant: no resampling, additive or no time embedding) with fused
    GroupNorm+SiLU; the same parameters, so a block's class can be switched back and forth in place."""

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        h = self.conv1(group_norm_silu(input_tensor, self.norm1))
        if self.time_emb_proj is not None and temb is not None:
            t = temb if self.skip_time_act else self.nonlinearity(temb)
            h = h + self.time_emb_proj(t)[:, :, None, None]
        h = self.conv2(self.dropout(group_norm_silu(h, self.norm2)))
        x = input_tensor
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x.contiguous() if self.training else x)
        return (x + h) / self.output_scale_factor


def _fusable(block: nn.Module) -> bool:
    return (type(block) in (ResnetBlock2D, FusedResnetBlock2D) and block.upsample is None and block.downsample is None
            and block.time_embedding_norm in ("default", "group")  # "group": the VQ decoder's, no time embedding
            and isinstance(block.nonlinearity, nn.SiLU)
            and type(block.norm1) is nn.GroupNorm and type(block.norm2) is nn.GroupNorm)


def _output_norms(model: LatentDiffusion):
    """``(owner, norm name, activation name)`` of the final GroupNorm → SiLU of the UNet, encoder and decoder."""
    fs = model.first_stage_model
    return [(m, "conv_norm_out", "conv_act") for m in (model.diffusion_model, fs.encoder, fs.decoder)]


def _set_fused(model: LatentDiffusion, on: bool) -> None:
    for module in model.modules():
        if on and type(module) is ResnetBlock2D and _fusable(module):
            module.__class__ = FusedResnetBlock2D
        elif not on and type(module) is FusedResnetBlock2D:
            module.__class__ = ResnetBlock2D
    for owner, norm_name, act_name in _output_norms(model):
        norm, act = getattr(owner, norm_name), getattr(owner, act_name)
        if on and type(norm) is nn.GroupNorm and isinstance(act, nn.SiLU):
            norm.__class__ = GroupNormSiLU
            setattr(owner, act_name, nn.Identity())
        elif not on and type(norm) is GroupNormSiLU:
            norm.__class__ = nn.GroupNorm
            setattr(owner, act_name, nn.SiLU())


def _xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
        return True
    except Exception:
        return False


def _attention_core(kind: str, device: torch.device) -> str:
    if kind == "auto":
        kind = "xformers" if device.type == "cuda" and _xformers_available() else "sdpa"
    if kind == "xformers" and not (_xformers_available() and device.type == "cuda"):
        warn_once("attention='xformers' needs xformers installed and a CUDA model; using 'sdpa'")
        kind = "sdpa"
    return kind


def _checkpoint_call(module, *args):
    return checkpoint(module.__call__, *args, use_reentrant=False)


def _set_unet_checkpointing(model: LatentDiffusion, on: bool) -> None:
    unet = model.diffusion_model
    if on:
        try:
            unet.enable_gradient_checkpointing(_checkpoint_call)
        except TypeError:  # diffusers < 0.32 takes no function: its blocks call non-reentrant torch checkpoint
            unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()


def optimize(model: LatentDiffusion, *, bf16: bool | None = None, fused_groupnorm_silu: bool | None = None,
             channels_last: bool | None = None, attention: str = "auto", checkpoint_decoder: bool = True,
             checkpoint_unet: bool = False) -> LatentDiffusion:
    """Apply the switches (see the module docstring) to ``model`` in place and return it.

    Calling it again with other values changes them (``optimize(model, bf16=False, fused_groupnorm_silu=False,
    channels_last=False, attention="math", checkpoint_decoder=False)`` gives back the plain model).
    The chosen settings are in ``model.optimizations``.
    """
    if not isinstance(model, LatentDiffusion):
        raise InvalidTypeError(f"optimize expects an ld3m_fast LatentDiffusion (from load_ldm/build_ldm), "
                               f"not {type(model).__name__}")
    if attention not in ATTENTION:
        raise InvalidArgumentError(f"attention={attention!r}: choose one of {ATTENTION}")
    device = model.device
    on_cuda = device.type == "cuda"

    if bf16 is None:
        bf16 = on_cuda and torch.cuda.is_bf16_supported() and model.dtype == torch.float32
    elif bf16 and on_cuda and not torch.cuda.is_bf16_supported():
        warn_once("bf16=True but this GPU has no bfloat16 support; running in the model's dtype")
        bf16 = False
    if bf16 and model.dtype != torch.float32:
        warn_once(f"bf16 autocast applies to float32 models; this one is {model.dtype}, left as it is")
        bf16 = False
    autocast = torch.bfloat16 if bf16 else None
    model.model.autocast_dtype = autocast
    model.first_stage_model.autocast_dtype = autocast

    probe = torch.empty(0, device=device, dtype=model.dtype)
    reason = kernel_unsupported_reason(probe, probe, probe)
    if fused_groupnorm_silu is None:
        fused_groupnorm_silu = on_cuda and reason is None
    elif fused_groupnorm_silu and reason is not None:
        warn_once(fallback_message(reason))  # the same single line the run-time fallback would print
    _set_fused(model, bool(fused_groupnorm_silu))

    if channels_last is None:
        channels_last = on_cuda
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.diffusion_model.to(memory_format=fmt)
    model.first_stage_model.to(memory_format=fmt)

    core = _attention_core(attention, device)
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(AttentionProcessor(core))

    model.first_stage_model.checkpoint_decoder = bool(checkpoint_decoder)
    _set_unet_checkpointing(model, checkpoint_unet)
    model.optimizations = {"bf16": bool(bf16), "fused_groupnorm_silu": bool(fused_groupnorm_silu),
                           "channels_last": bool(channels_last), "attention": core,
                           "checkpoint_decoder": checkpoint_decoder, "checkpoint_unet": checkpoint_unet}
    return model
