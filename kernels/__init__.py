"""Triton kernels of ld3m_fast (installed as ``ld3m_fast.kernels``).

Importing this package never imports Triton: the kernels are loaded on first access (PEP 562
``__getattr__``): ``step_forward`` and ``step_backward`` from ``.fused_step``,
``group_norm_silu_forward`` and ``group_norm_silu_backward`` from ``.groupnorm_silu``. If Triton
is not installed, that first access raises ``ImportError`` with instructions; ``import
ld3m_fast.kernels`` itself always succeeds. Lazy loading also means ``TRITON_INTERPRET=1`` only
has to be set before the first use of a kernel, not before ``ld3m_fast`` is imported.
"""

_MODULES = {
    "step_forward": "fused_step",
    "step_backward": "fused_step",
    "group_norm_silu_forward": "groupnorm_silu",
    "group_norm_silu_backward": "groupnorm_silu",
}
__all__ = list(_MODULES)


def _load(module_name: str = "fused_step"):
    import importlib

    try:
        return importlib.import_module(f".{module_name}", __name__)
    except ImportError as exc:
        if getattr(exc, "name", None) and exc.name.split(".")[0] == "triton":
            raise ImportError(
                "ld3m_fast.kernels needs Triton (pip install triton; GPU wheels ship with PyTorch "
                "on Linux). Without it use backend='torch', 'cpp' or 'cuda'."
            ) from exc
        raise


def __getattr__(name):
    if name in _MODULES:
        return getattr(_load(_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
