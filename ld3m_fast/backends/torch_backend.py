"""Plain-PyTorch denoising step: the reference every fast backend is tested against.

The step (DESIGN §1.4, generalised so that one kernel serves every skip variant)::

    eps  = eps_u + g (eps_c - eps_u)
    x0   = (z - s_t eps) / r_t
    x0'  = (1 - w_x) x0 + w_x anchor                                 # official skip: anchor = Zq
    z'   = (1 - w_o) (r_p x0' + d eps) + w_o anchor + sigma noise    # paper skip:    anchor = z_T

The step is linear in every tensor input, so its backward needs no saved tensors.
Low-precision inputs are computed in float32 and rounded once at the end, like the kernels.
"""
from __future__ import annotations

import torch

from .contract import StepCoefficients

name = "torch"


def is_available() -> bool:
    return True


def supports(tensor: torch.Tensor) -> bool:
    return tensor.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def forward(z, eps_u, eps_c, anchor, noise, coef: StepCoefficients, want_x0: bool):
    dtype, ct = z.dtype, _compute_dtype(z.dtype)
    z, eps_u, eps_c, anchor = (t.to(ct) for t in (z, eps_u, eps_c, anchor))
    eps = eps_u + coef.guidance * (eps_c - eps_u)
    x0 = (z - coef.sqrt_one_minus_alpha * eps) / coef.sqrt_alpha
    x0 = (1.0 - coef.blend_x0) * x0 + coef.blend_x0 * anchor
    mean = coef.sqrt_alpha_prev * x0 + coef.direction * eps
    z_prev = (1.0 - coef.blend_out) * mean + coef.blend_out * anchor
    if noise is not None:
        z_prev = z_prev + coef.sigma * noise.to(ct)
    return z_prev.to(dtype), (x0.to(dtype) if want_x0 else None)


def backward(grad_z_prev, grad_x0, coef: StepCoefficients):
    dtype, ct = grad_z_prev.dtype, _compute_dtype(grad_z_prev.dtype)
    G = grad_z_prev.to(ct)
    g_mean = (1.0 - coef.blend_out) * G
    g_x0b = coef.sqrt_alpha_prev * g_mean
    if grad_x0 is not None:
        g_x0b = g_x0b + grad_x0.to(ct)
    g_x0 = (1.0 - coef.blend_x0) * g_x0b
    g_anchor = coef.blend_out * G + coef.blend_x0 * g_x0b
    g_eps = coef.direction * g_mean - (coef.sqrt_one_minus_alpha / coef.sqrt_alpha) * g_x0
    g_z = g_x0 / coef.sqrt_alpha
    g_eps_pair = torch.stack(((1.0 - coef.guidance) * g_eps, coef.guidance * g_eps))
    return g_z.to(dtype), g_eps_pair.to(dtype), g_anchor.to(dtype)
