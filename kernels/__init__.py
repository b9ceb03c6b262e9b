"""Triton kernels of ld3m_fast (installed as ``ld3m_fast.kernels``).

- ``fused_step``: the fused LD3M denoising step, forward and backward (the op itself is defined
  in ``ld3m_fast.engine.fused_step``);
- ``groupnorm_silu``: GroupNorm followed by SiLU, forward and backward (used by ``ld3m_fast.optimize``).

Importing this package never imports Triton; the kernel modules import it when first used, and
are decorated then, once: whether they run compiled or in Triton's CPU interpreter is decided by
``TRITON_INTERPRET`` at that moment. ``unavailable_reason`` is the one place that says whether
Triton can run here.
"""
from __future__ import annotations

import os
import sys

_state: dict = {}


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``; the tests on CPU machines)."""
    module = sys.modules.get(__name__ + ".fused_step")
    if module is not None:  # the kernels were decorated already: their mode is fixed
        return module.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _import_error() -> str | None:
    if "error" not in _state:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
            _state["error"] = None
        except Exception as exc:  # missing, or installed but broken (e.g. mismatched with torch)
            _state["error"] = f"Triton is not importable ({type(exc).__name__}: {exc}); pip install triton"
    return _state["error"]


def unavailable_reason(device_type: str) -> str | None:
    """Why the Triton kernels cannot run on ``device_type`` tensors here; ``None`` if they can."""
    if device_type == "cpu" and not interpreting():
        return "Triton kernels run on CUDA GPUs (on CPU tensors only in the interpreter, TRITON_INTERPRET=1)"
    if device_type not in ("cpu", "cuda"):
        return f"Triton kernels run on CUDA tensors, not {device_type}"
    error = _import_error()
    if error is not None:
        return error
    if device_type == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
    return None
