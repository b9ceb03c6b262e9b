"""The fused denoising step as one autograd-aware op over the four backends.

``denoise_step`` = guidance combine + x̂0 + skip blend + DDIM update (DESIGN §1.4) in one pass,
with a one-pass backward. The backend is picked per call (see ``ld3m_fast.backends``).
"""
from __future__ import annotations

import torch

from .backends import StepCoefficients, select_backend


def _prepare(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


class _FusedStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, eps_u, eps_c, anchor, noise, coef, want_x0, backend):
        impl = select_backend(z, backend)
        ctx.coef, ctx.impl, ctx.want_x0 = coef, impl, want_x0
        ctx.has_anchor = anchor is not None
        if anchor is None:
            anchor = z  # read with weight 0 by the kernels
        z_prev, x0 = impl.forward(*(_prepare(t) for t in (z, eps_u, eps_c, anchor, noise)), coef, want_x0)
        if want_x0:
            return z_prev, x0
        return z_prev

    @staticmethod
    def backward(ctx, grad_z_prev, grad_x0=None):
        if grad_z_prev is None:
            grad_z_prev = torch.zeros_like(grad_x0)
        g_z, g_eps, g_anchor = ctx.impl.backward(_prepare(grad_z_prev), _prepare(grad_x0), ctx.coef)
        return g_z, g_eps[0], g_eps[1], (g_anchor if ctx.has_anchor else None), None, None, None, None


def denoise_step(z: torch.Tensor, eps_u: torch.Tensor, eps_c: torch.Tensor, anchor: torch.Tensor | None,
                 coef: StepCoefficients, noise: torch.Tensor | None = None, return_x0: bool = False,
                 backend: str | None = None):
    """One LD3M reverse step: ``z_prev`` (and the blended ``x̂0`` if ``return_x0``).

    ``eps_u``/``eps_c`` are the unconditional/conditional noise predictions (pass the same tensor
    twice with ``coef.guidance == 1`` when there is no guidance); ``anchor`` is ``Zq`` for the
    official skip, ``z_T`` for the paper's, ``None`` for no skip. All tensors share shape, dtype
    and device. Differentiable with respect to every tensor but ``noise``.
    """
    tensors = {"z": z, "eps_u": eps_u, "eps_c": eps_c, "anchor": anchor, "noise": noise}
    for name, t in tensors.items():
        if t is None:
            continue
        if t.shape != z.shape or t.dtype != z.dtype or t.device != z.device:
            raise ValueError(f"{name} is {tuple(t.shape)} {t.dtype} on {t.device} but z is {tuple(z.shape)} "
                             f"{z.dtype} on {z.device}: all step tensors must match")
    if anchor is None and (coef.blend_x0 or coef.blend_out):
        raise ValueError("anchor is None but the coefficients blend it in (blend_x0/blend_out != 0)")
    if noise is None and coef.sigma:
        raise ValueError(f"coef.sigma={coef.sigma} needs a noise tensor")
    return _FusedStep.apply(z, eps_u, eps_c, anchor, noise, coef, return_x0, backend)
