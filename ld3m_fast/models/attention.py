"""Attention for diffusers' ``Attention`` modules with a choice of core: explicit math, SDPA or xformers.

One processor class does the projections, head split and residual for the two kinds of attention
these models have (the UNet's transformer self/cross-attention and the VQ mid-block attention with
its GroupNorm and residual); only the core ``softmax(q kᵀ / √d) v`` differs:

- ``"math"``: written out in the tensors' own dtype — the plain-PyTorch reference (diffusers' own
  ``AttnProcessor`` upcasts to float32, which a float64 reference cannot have);
- ``"sdpa"``: ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPUs);
- ``"xformers"``: ``xformers.ops.memory_efficient_attention`` (when installed; CUDA).
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..errors import InvalidArgumentError

CORES = ("math", "sdpa", "xformers")


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` for ``(B, H, L, d)`` tensors, explicitly."""
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    return scores.softmax(dim=-1) @ v


def _xformers_attention(q, k, v):
    import xformers.ops

    out = xformers.ops.memory_efficient_attention(q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
                                                  v.transpose(1, 2).contiguous())
    return out.transpose(1, 2)


_CORE_FN = {"math": math_attention, "sdpa": F.scaled_dot_product_attention, "xformers": _xformers_attention}


class AttentionProcessor:
    """A diffusers attention processor whose core is ``core`` (see the module docstring)."""

    def __init__(self, core: str = "sdpa"):
        if core not in CORES:
            raise InvalidArgumentError(f"attention core {core!r}: choose one of {CORES}")
        self.core = core

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs) -> torch.Tensor:
        if attention_mask is not None or attn.spatial_norm is not None or attn.norm_q is not None:
            raise NotImplementedError("ld3m_fast's attention processor supports unmasked attention without "
                                      "spatial/qk norms (what its models use)")
        residual = hidden_states
        image = hidden_states.dim() == 4
        if image:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.reshape(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        batch, heads = q.shape[0], attn.heads
        split = lambda t: t.reshape(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        out = _CORE_FN[self.core](split(q), split(k), split(v))
        out = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[3]).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if image:
            out = out.transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
