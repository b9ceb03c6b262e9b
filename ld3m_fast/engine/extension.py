"""The compiled extension ``ld3m_fast._C`` (``csrc/``): the fused step's C++ (CPU) and CUDA kernels.

One wrapper for both: the extension dispatches on the tensors' device itself, so the ``cpp`` and
``cuda`` backends differ only in where they can run. The C++ kernels are vectorised
(``at::vec::Vectorized``) and multi-threaded (``at::parallel_for``); the CUDA kernels are
grid-stride loops with 128-bit loads and stores where the tensors are 16-byte aligned. Both read
each input once and write each output once.

Importing this module never fails: the extension is loaded on first use, and where it is
missing (not built, or built against another torch) ``unavailable_reason`` says why — including
the build's own reason when ``setup.py`` recorded one (``ld3m_fast/_build_failed.txt``).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

BUILD_FAILED_FILE = "_build_failed.txt"  # written beside the package by setup.py when a build part fails
_state: dict = {}


def load() -> ModuleType | None:
    """``ld3m_fast._C`` if it imports (loaded once, cached), else ``None`` (see ``unavailable_reason``)."""
    if "module" not in _state:
        try:
            _state["module"], _state["error"] = importlib.import_module("ld3m_fast._C"), None
        except Exception as exc:  # not built, or built against another torch (undefined symbols)
            _state["module"], _state["error"] = None, exc
    return _state["module"]


def _build_failure() -> str | None:
    """What ``setup.py`` recorded when building the extension (or its CUDA part) failed, if anything."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), BUILD_FAILED_FILE)
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def unavailable_reason(device_type: str) -> str | None:
    """Why the extension cannot run the step on ``device_type`` tensors here; ``None`` if it can."""
    ext = load()
    if ext is None:
        failure = _build_failure()
        why = f"the build failed: {failure}" if failure else f"{type(_state['error']).__name__}: {_state['error']}"
        return (f"the compiled extension ld3m_fast._C is not importable ({why}); rebuild it with "
                "`pip install --no-build-isolation -e .`")
    if device_type == "cuda":
        import torch

        if not ext.has_cuda():
            failure = _build_failure()
            return ("ld3m_fast._C was built without its CUDA kernels"
                    + (f" ({failure})" if failure else " (torch without CUDA, no CUDA toolkit, or LD3M_FAST_NO_CUDA)"))
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
        return None
    if device_type != "cpu":
        return f"ld3m_fast._C runs on CPU and CUDA tensors, not {device_type}"
    return None


def _coefficients(coef) -> list[float]:
    return [float(c) for c in coef]


def step_forward(z, eps_u, eps_c, anchor, noise, coef, want_x0: bool):
    """The fused step's forward in the extension (see ``fused_step.reference_forward``)."""
    return load().step_forward(z, eps_u, eps_c, anchor, noise, _coefficients(coef), bool(want_x0))


def step_backward(grad_z_prev, grad_x0, coef):
    """The fused step's backward in the extension (see ``fused_step.reference_backward``)."""
    return load().step_backward(grad_z_prev, grad_x0, _coefficients(coef))
