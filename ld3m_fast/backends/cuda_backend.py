"""CUDA backend: the fused step as the CUDA kernels of the compiled extension ``ld3m_fast._C``.

Grid-stride kernels computing in float32 (float64 for float64) with 128-bit loads and stores
when the tensors are 16-byte aligned. Available when the extension was built with CUDA
(PyTorch with CUDA and a CUDA toolkit at build time) and a GPU is present.
"""
from __future__ import annotations

import torch

from .contract import StepCoefficients
from .cpp_backend import _coeffs, _require, load_extension

name = "cuda"

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def is_available() -> bool:
    ext = load_extension()
    if ext is None:
        return False
    try:
        return bool(ext.has_cuda()) and torch.cuda.is_available()
    except Exception:
        return False


def supports(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cuda" and tensor.dtype in _DTYPES


def forward(z, eps_u, eps_c, anchor, noise, coef: StepCoefficients, want_x0: bool):
    return _require().step_forward(z, eps_u, eps_c, anchor, noise, _coeffs(coef), bool(want_x0))


def backward(grad_z_prev, grad_x0, coef: StepCoefficients):
    return _require().step_backward(grad_z_prev, grad_x0, _coeffs(coef))
