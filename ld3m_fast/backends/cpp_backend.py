"""C++ backend: the fused step as the CPU kernels of the compiled extension ``ld3m_fast._C``.

Vectorised (ATen ``Vectorized``) and multi-threaded (``at::parallel_for``) loops reading each
input once and writing each output once. Available when the extension was built
(``pip install --no-build-isolation -e .``); importing this module never fails without it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch

from .contract import StepCoefficients

name = "cpp"

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_ext: ModuleType | None = None
_ext_error: BaseException | None = None
_ext_tried = False


def load_extension() -> ModuleType | None:
    """``ld3m_fast._C`` if it imports (loaded once, cached), else ``None`` (see ``extension_error``)."""
    global _ext, _ext_error, _ext_tried
    if not _ext_tried:
        _ext_tried = True
        try:
            _ext = importlib.import_module("ld3m_fast._C")
        except Exception as exc:  # not built, or built against another torch (undefined symbols)
            _ext, _ext_error = None, exc
    return _ext


def extension_error() -> BaseException | None:
    """Why ``ld3m_fast._C`` could not be imported (``None`` if it could or was not tried)."""
    return _ext_error


def _require() -> ModuleType:
    ext = load_extension()
    if ext is None:
        raise RuntimeError("the compiled extension ld3m_fast._C is not available "
                           f"({_ext_error!r}); rebuild with `pip install --no-build-isolation -e .` "
                           "or use backend='torch'")
    return ext


def _coeffs(coef: StepCoefficients) -> list[float]:
    return [float(c) for c in coef]


def is_available() -> bool:
    return load_extension() is not None


def supports(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.dtype in _DTYPES


def forward(z, eps_u, eps_c, anchor, noise, coef: StepCoefficients, want_x0: bool):
    return _require().step_forward(z, eps_u, eps_c, anchor, noise, _coeffs(coef), bool(want_x0))


def backward(grad_z_prev, grad_x0, coef: StepCoefficients):
    return _require().step_backward(grad_z_prev, grad_x0, _coeffs(coef))
