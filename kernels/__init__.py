"""Triton kernels of ld3m_fast (installed as ``ld3m_fast.kernels``).

Importing this package never imports Triton: ``step_forward`` and ``step_backward`` are loaded
on first access (PEP 562 ``__getattr__``) from ``.fused_step``. If Triton is not installed, that
first access raises ``ImportError`` with instructions; ``import ld3m_fast.kernels`` itself
always succeeds. Lazy loading also means ``TRITON_INTERPRET=1`` only has to be set before the
first use of a kernel, not before ``ld3m_fast`` is imported.
"""

__all__ = ["step_forward", "step_backward"]


def _load():
    try:
        from . import fused_step
    except ImportError as exc:
        if getattr(exc, "name", None) and exc.name.split(".")[0] == "triton":
            raise ImportError(
                "ld3m_fast.kernels needs Triton (pip install triton; GPU wheels ship with PyTorch "
                "on Linux). Without it use backend='torch', 'cpp' or 'cuda'."
            ) from exc
        raise
    return fused_step


def __getattr__(name):
    if name in __all__:
        return getattr(_load(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
