"""Which device work runs on when none is named, and checking the one that is: one rule for the whole package.

The rule: an explicit ``device`` wins; else the device of the model given (its weights); else a
CUDA GPU when one is visible; else the CPU. ``load_ldm``, ``distill``, ``train_experts``,
``train_prior``, ``evaluate`` and network training all follow it.
"""
from __future__ import annotations

import torch

from .errors import DeviceError


def resolve_device(device=None, model=None) -> torch.device:
    """The device to work on (see the module docstring); a named device is checked to exist here."""
    if device is None:
        p = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
        if p is not None:
            return p.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"device={device!r} is not a device ({err}); use e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device={device!r}: no CUDA GPU is visible here; use device='cpu' (or leave it unset)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                              f"use cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    elif dev.type not in ("cpu", "meta"):
        if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"device={device!r}: MPS is not available here; use device='cpu'")
    return dev
