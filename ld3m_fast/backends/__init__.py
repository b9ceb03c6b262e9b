"""Backends of the fused denoising step and how one is chosen.

Automatic choice, fastest first among those available that support the tensor:
CUDA tensors: ``cuda`` (compiled extension) → ``triton`` → ``torch``;
CPU tensors: ``cpp`` (compiled extension) → ``torch``. Triton runs on the CPU only under
``TRITON_INTERPRET=1`` (tests), so it is never picked automatically there.
``backend=`` or the environment variable ``LD3M_FAST_BACKEND`` overrides the choice.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from .contract import StepCoefficients

__all__ = ["StepCoefficients", "BACKEND_NAMES", "get_backend", "available_backends", "select_backend"]

BACKEND_NAMES = ("torch", "triton", "cpp", "cuda")
_MODULES = {
    "torch": ".torch_backend",
    "triton": ".triton_backend",
    "cpp": ".cpp_backend",
    "cuda": ".cuda_backend",
}
_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}


def get_backend(name: str) -> ModuleType:
    """The backend module called ``name`` (it may be unavailable: check ``is_available()``)."""
    if name not in _MODULES:
        raise ValueError(f"backend={name!r} is unknown; choose one of {BACKEND_NAMES} or None for automatic")
    return importlib.import_module(_MODULES[name], __name__)


def available_backends(tensor: torch.Tensor | None = None) -> list[str]:
    """Names of the backends that can run here (and support ``tensor``, if given)."""
    names = []
    for n in BACKEND_NAMES:
        b = get_backend(n)
        if b.is_available() and (tensor is None or b.supports(tensor)):
            names.append(n)
    return names


def select_backend(tensor: torch.Tensor, backend: str | None = None) -> ModuleType:
    """The backend to run the step on ``tensor``: ``backend`` if given, else the fastest available."""
    backend = backend or os.environ.get("LD3M_FAST_BACKEND") or None
    if backend is not None:
        b = get_backend(backend)
        if not b.is_available():
            raise RuntimeError(f"backend={backend!r} is not available in this installation; "
                               f"available: {available_backends()} (see README, 'Backends')")
        if not b.supports(tensor):
            raise ValueError(f"backend={backend!r} does not support {tensor.dtype} tensors on {tensor.device}; "
                             f"use one of {available_backends(tensor)}")
        return b
    for n in _AUTO_ORDER.get(tensor.device.type, ("torch",)):
        b = get_backend(n)
        if b.is_available() and b.supports(tensor):
            return b
    return get_backend("torch")
