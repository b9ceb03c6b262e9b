"""The fused LD3M denoising step: its definition, its PyTorch reference, its backends, its autograd op.

One reverse step of the chain (docs/design.md §4), generalised so that one kernel serves every
skip variant::

    eps  = eps_u + g (eps_c - eps_u)                                 # classifier-free guidance
    x0   = (z - s_t eps) / r_t                                       # predicted clean latent
    x0'  = (1 - w_x) x0 + w_x anchor                                 # official skip: anchor = Zq
    z'   = (1 - w_o) (r_p x0' + d eps) + w_o anchor + sigma noise    # paper skip:    anchor = z_T

The step is linear in every tensor input, so its backward needs no saved tensors. It is
memory-bound (one read per input, one write per output), hence fused. Four backends compute it:

- ``torch``: ``reference_forward``/``reference_backward`` below, op by op — the reference every
  fast backend is tested against;
- ``triton``: ``ld3m_fast.kernels.fused_step`` (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``);
- ``cpp`` and ``cuda``: the compiled extension ``ld3m_fast._C`` (``ld3m_fast.engine.extension``).

Automatic choice, fastest first: CUDA tensors ``cuda`` → ``triton`` → ``torch``; CPU tensors
``cpp`` → ``torch`` (the Triton interpreter is far too slow to be chosen on its own).
``backend=`` or the environment variable ``LD3M_FAST_BACKEND`` overrides the choice.
Arithmetic is float32 for float32/bfloat16/float16 tensors (rounded once at the end) and
float64 for float64 tensors, in every backend.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from . import extension

BACKEND_NAMES = ("torch", "triton", "cpp", "cuda")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
BACKEND_ENV = "LD3M_FAST_BACKEND"
_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}


class StepCoefficients(NamedTuple):
    """Per-step scalars of the fused step (Python floats); ``DDIMSchedule`` makes them."""

    sqrt_alpha: float            # r_t = sqrt(a_t)
    sqrt_one_minus_alpha: float  # s_t = sqrt(1 - a_t)
    sqrt_alpha_prev: float       # r_p = sqrt(a_prev)
    direction: float             # d = sqrt(1 - a_prev - sigma^2)
    sigma: float                 # noise scale (0 for LD3M's eta = 0)
    guidance: float              # g, classifier-free guidance scale (1: none)
    blend_x0: float              # w_x: weight of the anchor in x0' (official skip)
    blend_out: float             # w_o: weight of the anchor in z_prev (paper skip)


# --- the reference -----------------------------------------------------------------------------

def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_forward(z, eps_u, eps_c, anchor, noise, coef: StepCoefficients, want_x0: bool):
    """``(z_prev, x0' or None)`` op by op; the fast backends follow this operation order exactly."""
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


def reference_backward(grad_z_prev, grad_x0, coef: StepCoefficients):
    """``(grad_z, grad_eps, grad_anchor)``; ``grad_eps`` is ``(2, *shape)``: ``[∂/∂eps_u, ∂/∂eps_c]``, so that
    ``grad_eps.view(2 * B, ...)`` is the gradient of a doubled-batch denoiser output ``[uncond; cond]``."""
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


# --- the backends ------------------------------------------------------------------------------

def _triton_reason(device_type: str) -> str | None:
    from .. import kernels

    return kernels.unavailable_reason(device_type)


def _triton_forward(*args):
    from ..kernels import fused_step

    return fused_step.step_forward(*args)


def _triton_backward(*args):
    from ..kernels import fused_step

    return fused_step.step_backward(*args)


@dataclass(frozen=True)
class Backend:
    """One implementation of the step: ``forward``/``backward`` with the reference's signatures.

    Callers pass contiguous tensors of one shape, dtype and device (``noise``/``grad_x0`` may be
    ``None``); outputs are new contiguous tensors of the input dtype.
    """

    name: str
    device_types: tuple[str, ...]
    forward: Callable
    backward: Callable
    reason: Callable[[str], str | None]  # why it cannot run on a device type here (None: it can)

    def unavailable_reason(self, device_type: str | None = None) -> str | None:
        """Why this backend cannot run here (on ``device_type``, or on any of its devices); ``None`` if it can."""
        types = self.device_types if device_type is None else (device_type,)
        reasons = []
        for t in types:
            if t not in self.device_types:
                reasons.append(f"it does not run on {t} tensors (only {', '.join(self.device_types)})")
                continue
            r = self.reason(t)
            if r is None:
                return None
            reasons.append(r)
        return "; ".join(dict.fromkeys(reasons))

    def supports(self, tensor: torch.Tensor) -> bool:
        return tensor.dtype in DTYPES and self.unavailable_reason(tensor.device.type) is None


BACKENDS = {
    "torch": Backend("torch", ("cpu", "cuda"), reference_forward, reference_backward, lambda t: None),
    "triton": Backend("triton", ("cuda", "cpu"), _triton_forward, _triton_backward, _triton_reason),
    "cpp": Backend("cpp", ("cpu",), extension.step_forward, extension.step_backward, extension.unavailable_reason),
    "cuda": Backend("cuda", ("cuda",), extension.step_forward, extension.step_backward,
                    extension.unavailable_reason),
}


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (it may be unavailable here: see ``backend_status``)."""
    if name not in BACKENDS:
        raise InvalidArgumentError(f"backend={name!r} is unknown; choose one of {BACKEND_NAMES} or None for automatic")
    return BACKENDS[name]


def backend_status() -> dict[str, str | None]:
    """For every backend, why it cannot run in this installation, or ``None`` where it can."""
    return {name: b.unavailable_reason() for name, b in BACKENDS.items()}


def available_backends(tensor: torch.Tensor | None = None) -> list[str]:
    """Names of the backends that can run here (and support ``tensor``, if given)."""
    return [n for n, b in BACKENDS.items()
            if (b.unavailable_reason() is None if tensor is None else b.supports(tensor))]


def select_backend(tensor: torch.Tensor, backend: str | None = None) -> Backend:
    """The backend to run the step on ``tensor``: ``backend`` (or ``$LD3M_FAST_BACKEND``) if given, else the fastest."""
    backend = backend or os.environ.get(BACKEND_ENV) or None
    if backend is not None:
        b = get_backend(backend)
        reason = b.unavailable_reason(tensor.device.type)
        if reason is not None:
            raise InvalidArgumentError(f"backend={backend!r} cannot run on {tensor.device.type} tensors here: {reason}. "
                                       f"Available for them: {available_backends(tensor)} (README, 'Engine')")
        if tensor.dtype not in DTYPES:
            raise InvalidTypeError(f"backend={backend!r} does not support {tensor.dtype} tensors; use one of {DTYPES}")
        return b
    for name in _AUTO_ORDER.get(tensor.device.type, ("torch",)):
        if BACKENDS[name].supports(tensor):
            return BACKENDS[name]
    return BACKENDS["torch"]


# --- the autograd op ---------------------------------------------------------------------------

class _FusedStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, eps_u, eps_c, anchor, noise, coef, want_x0, backend):
        impl = select_backend(z, backend)
        ctx.coef, ctx.impl, ctx.has_anchor = coef, impl, anchor is not None
        if anchor is None:
            anchor = z  # read with weight 0 by the kernels
        z_prev, x0 = impl.forward(*(None if t is None else t.contiguous() for t in (z, eps_u, eps_c, anchor, noise)),
                                  coef, want_x0)
        return (z_prev, x0) if want_x0 else z_prev

    @staticmethod
    def backward(ctx, grad_z_prev, grad_x0=None):
        if grad_z_prev is None:
            grad_z_prev = torch.zeros_like(grad_x0)
        g_z, g_eps, g_anchor = ctx.impl.backward(grad_z_prev.contiguous(),
                                                 None if grad_x0 is None else grad_x0.contiguous(), ctx.coef)
        return g_z, g_eps[0], g_eps[1], (g_anchor if ctx.has_anchor else None), None, None, None, None


def check_step_tensors(**tensors: torch.Tensor | None) -> None:
    """Every given tensor has the shape, dtype and device of the first one (``None`` entries are skipped)."""
    present = [(name, t) for name, t in tensors.items() if t is not None]
    ref_name, ref = present[0]
    for name, t in present[1:]:
        if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
            raise InvalidArgumentError(f"{name} is {tuple(t.shape)} {t.dtype} on {t.device} but {ref_name} is "
                                       f"{tuple(ref.shape)} {ref.dtype} on {ref.device}: all step tensors must match")


def denoise_step(z: torch.Tensor, eps_u: torch.Tensor, eps_c: torch.Tensor, anchor: torch.Tensor | None,
                 coef: StepCoefficients, noise: torch.Tensor | None = None, return_x0: bool = False,
                 backend: str | None = None):
    """One LD3M reverse step: ``z_prev`` (and the blended ``x̂0'`` if ``return_x0``), as an autograd op.

    ``eps_u``/``eps_c`` are the unconditional/conditional noise predictions (pass the same tensor
    twice with ``coef.guidance == 1`` when there is no guidance); ``anchor`` is ``Zq`` for the
    official skip, ``z_T`` for the paper's, ``None`` for no skip. All tensors share shape, dtype
    and device. Differentiable with respect to every tensor but ``noise``.
    """
    check_step_tensors(z=z, eps_u=eps_u, eps_c=eps_c, anchor=anchor, noise=noise)
    if anchor is None and (coef.blend_x0 or coef.blend_out):
        raise InvalidArgumentError("anchor is None but the coefficients blend it in (blend_x0/blend_out != 0)")
    if noise is None and coef.sigma:
        raise InvalidArgumentError(f"coef.sigma={coef.sigma} needs a noise tensor")
    return _FusedStep.apply(z, eps_u, eps_c, anchor, noise, coef, return_x0, backend)
