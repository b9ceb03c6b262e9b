"""GroupNorm followed by SiLU as one differentiable op: Triton kernels where they run, PyTorch elsewhere.

``group_norm_silu(x, norm)`` equals ``F.silu(norm(x))`` for an affine ``nn.GroupNorm`` ``norm``.
On CUDA tensors (and on CPU tensors under ``TRITON_INTERPRET=1``, for tests) it runs the fused
kernels of ``ld3m_fast.kernels.groupnorm_silu``; for anything they do not support (no Triton, a CPU
tensor, an unsupported dtype, a norm without affine parameters) it falls back to the PyTorch
reference and says so once, in one warning line per reason.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from .. import kernels

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_warned: set[str] = set()


def reference_group_norm_silu(x, weight, bias, num_groups: int, eps: float) -> torch.Tensor:
    """The plain-PyTorch definition: ``silu(group_norm(x))``."""
    return F.silu(F.group_norm(x, num_groups, weight, bias, eps))


def kernel_unsupported_reason(x: torch.Tensor, weight, bias) -> str | None:
    """Why the fused kernel cannot run on ``x`` (``None`` if it can)."""
    if weight is None or bias is None:
        return "the GroupNorm has no affine weight/bias"
    if x.dtype not in _DTYPES:
        return f"dtype {x.dtype} is not supported by the kernel (supported: float64/32, bfloat16, float16)"
    return kernels.unavailable_reason(x.device.type)


def warn_once(message: str) -> None:
    """One warning line per distinct message, for the whole process."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(f"ld3m_fast: {message}", RuntimeWarning, stacklevel=3)


def fallback_message(reason: str) -> str:
    return f"fused GroupNorm+SiLU falls back to PyTorch: {reason}"


class _GroupNormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps):
        from ..kernels.groupnorm_silu import group_norm_silu_forward
        y, mean, rstd = group_norm_silu_forward(x, weight, bias, num_groups, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.num_groups = num_groups
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        from ..kernels.groupnorm_silu import group_norm_silu_backward
        dx, dw, db = group_norm_silu_backward(grad_y, x, weight, bias, mean, rstd, ctx.num_groups)
        return dx, dw, db, None, None


def group_norm_silu(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``silu(norm(x))``: fused kernels where supported, the PyTorch reference (with one warning) elsewhere."""
    reason = kernel_unsupported_reason(x, norm.weight, norm.bias)
    if reason is not None:
        warn_once(fallback_message(reason))
        return reference_group_norm_silu(x, norm.weight, norm.bias, norm.num_groups, norm.eps)
    return _GroupNormSiLU.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps)


class GroupNormSiLU(nn.GroupNorm):
    """An ``nn.GroupNorm`` whose output goes through SiLU, fused (same parameters and state-dict keys).

    ``optimize`` turns a ``GroupNorm`` that is always followed by SiLU into this class in place
    (and the SiLU into an identity); ``plain()`` gives back the plain ``nn.GroupNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_silu(x, self)
