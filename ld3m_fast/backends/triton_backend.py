"""Triton backend: the fused step as two Triton kernels (``ld3m_fast.kernels.fused_step``).

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (Triton's interpreter,
used by the tests; far too slow for real work, so automatic selection never picks it on CPU).
Importing this module does not import Triton; ``is_available()`` tries the import (once, cached)
and the kernels module is loaded on the first ``forward``/``backward``.
"""
from __future__ import annotations

import os

import torch

from .contract import StepCoefficients

name = "triton"

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_triton_found: bool | None = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _has_triton() -> bool:
    global _triton_found
    if _triton_found is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
            _triton_found = True
        except Exception:  # missing, or installed but broken (e.g. mismatched with torch)
            _triton_found = False
    return _triton_found


def is_available() -> bool:
    return _has_triton() and (torch.cuda.is_available() or _interpreting())


def supports(tensor: torch.Tensor) -> bool:
    if tensor.dtype not in _DTYPES:
        return False
    return tensor.is_cuda or (tensor.device.type == "cpu" and _interpreting())


def _kernels():
    from .. import kernels  # lazy: triton is imported on first use only
    return kernels


def forward(z, eps_u, eps_c, anchor, noise, coef: StepCoefficients, want_x0: bool):
    return _kernels().step_forward(z, eps_u, eps_c, anchor, noise, coef, want_x0)


def backward(grad_z_prev, grad_x0, coef: StepCoefficients):
    return _kernels().step_backward(grad_z_prev, grad_x0, coef)
