"""Latent → image: the VQ straight-through quantisation and a decoder run with recomputation.

At 256² the VQ-f4 decoder keeps 128-channel full-resolution activations: storing them for N
images would dominate memory. ``recomputed_decode`` decodes without a graph and, in backward,
re-decodes one chunk at a time with gradients.
"""
from __future__ import annotations

from typing import Callable

import torch


def straight_through(quantize: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """Codebook vectors of ``z`` in the forward pass; the identity's gradient in backward (as CompVis)."""
    with torch.no_grad():
        zq = quantize(z)
    return z + (zq - z).detach()


class _RecomputedDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, decode, chunk_size, forward_chunk_size):
        with torch.no_grad():
            out = torch.cat([decode(z[s:s + forward_chunk_size]) for s in range(0, z.shape[0], forward_chunk_size)])
        ctx.decode, ctx.chunk_size = decode, chunk_size
        ctx.save_for_backward(z)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (z,) = ctx.saved_tensors
        grad = torch.empty_like(z)
        for s in range(0, z.shape[0], ctx.chunk_size):
            with torch.enable_grad():
                z_in = z[s:s + ctx.chunk_size].detach().requires_grad_(True)
                (grad[s:s + ctx.chunk_size],) = torch.autograd.grad(ctx.decode(z_in), z_in, grad_out[s:s + ctx.chunk_size])
        return grad, None, None, None


def recomputed_decode(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, chunk_size: int,
                      forward_chunk_size: int | None = None) -> torch.Tensor:
    """``decode(z)``, differentiable w.r.t. ``z``, keeping no decoder activations between forward and backward.

    Backward re-decodes ``chunk_size`` latents at a time; forward decodes ``forward_chunk_size`` at a time.
    """
    return _RecomputedDecode.apply(z, decode, chunk_size, forward_chunk_size or chunk_size)
