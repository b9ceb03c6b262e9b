"""What every denoising-step backend provides (torch, triton, cpp, cuda).

A backend is a module with:

- ``name``: its name, as users pass it in ``backend=``.
- ``is_available() -> bool``: it can run in this process (package installed, extension built).
- ``supports(tensor) -> bool``: it handles this tensor's device and dtype.
- ``forward(z, eps_u, eps_c, anchor, noise, coef, want_x0) -> (z_prev, x0_or_None)``
- ``backward(grad_z_prev, grad_x0_or_None, coef) -> (grad_z, grad_eps, grad_anchor)`` where
  ``grad_eps`` has shape ``(2, *z.shape)``: ``[grad wrt eps_u, grad wrt eps_c]``, so that
  ``grad_eps.view(2 * B, ...)`` is the gradient of a doubled-batch UNet output ``[uncond; cond]``.

Callers guarantee: all tensors contiguous, same shape, dtype and device; ``noise`` is ``None`` or
such a tensor; ``grad_x0`` likewise. Outputs are new contiguous tensors of the input dtype.
Arithmetic is done in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

from typing import NamedTuple


class StepCoefficients(NamedTuple):
    """Per-step scalars of the fused denoising step (Python floats)."""

    sqrt_alpha: float            # r_t = sqrt(a_t)
    sqrt_one_minus_alpha: float  # s_t = sqrt(1 - a_t)
    sqrt_alpha_prev: float       # r_p = sqrt(a_prev)
    direction: float             # d = sqrt(1 - a_prev - sigma^2)
    sigma: float                 # noise scale (0 for LD3M's eta = 0)
    guidance: float              # g, classifier-free guidance scale
    blend_x0: float              # w_x: weight of the anchor in x0' (official skip)
    blend_out: float             # w_o: weight of the anchor in z_prev (paper skip)
