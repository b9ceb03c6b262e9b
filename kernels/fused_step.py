"""Triton kernels of the fused LD3M denoising step (forward and backward) and their launchers.

What: one elementwise pass for the whole step and one for its backward, with the operation order
of ``ld3m_fast.engine.fused_step.reference_forward``/``reference_backward``::

    eps = eps_u + g (eps_c - eps_u);  x0 = (z - s_t eps) / r_t;  x0' = (1 - w_x) x0 + w_x anchor
    z'  = (1 - w_o) (r_p x0' + d eps) + w_o anchor [+ sigma noise]

Why: the step is memory-bound. Unfused it costs about a dozen full-tensor reads and writes and as
many launches; here every input is read once and every output written once, in one launch. The
backward writes both halves of ``grad_eps`` (``[(1-g) g_eps, g g_eps]``) into one contiguous
``(2, *shape)`` buffer, so the doubled-batch denoiser output ``[uncond; cond]`` gets its gradient
without a ``torch.stack``.

How:

- Flat 1-D indexing over contiguous tensors with a masked tail block, so any ``numel`` works;
  offsets are int64 (constexpr ``USE_INT64``) only when ``2 n`` could overflow int32.
- Arithmetic in float32 for float16/bfloat16/float32 tensors (load, upcast, compute, round once at
  the store) and in float64 for float64 tensors (constexpr ``COMPUTE``).
- Scalars are ``tl.float64`` arguments, so they reach the GPU unrounded, and become ``COMPUTE``
  scalars once per program; ``1 - w`` and ``s_t / r_t`` are formed on the host in double
  precision, as the reference does. IEEE division (``tl.div_rn``; Triton's fp32 ``/`` is
  approximate) and no FMA contraction: results match the reference bit for bit.
- Optional tensors (``noise``, ``grad_x0``, the ``x0`` output) are switched by constexpr flags, so
  a disabled one is never touched (a placeholder pointer is passed in its place).
- Compiled (GPUs), the block size is autotuned per power-of-two bucket of ``n`` (not per exact
  ``n``: one tuning serves all sizes of a bucket); in the interpreter (CPU tests) one fixed
  configuration runs. The kernels are decorated once, when this module is imported.
- Compiled variants: ``n`` is specialised only as Triton does by default, on divisibility by 16
  (and ``n == 1``): with it the tail mask is constant over 16-element groups and every load and
  store is a 128-bit vector, without it each element is loaded alone. Latents (``N × 3 × 64²``)
  always divide. The bucket argument is not specialised.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["step_forward", "step_backward", "INTERPRETED"]

INTERPRETED = bool(triton.knobs.runtime.interpret)  # fixed when the kernels below are decorated
_INT32_LIMIT = 2**31 - 1
_FIXED_BLOCK = 1024  # under the interpreter
_GPU_CONFIGS = [triton.Config({"BLOCK": 512}, num_warps=4), triton.Config({"BLOCK": 1024}, num_warps=4),
                triton.Config({"BLOCK": 2048}, num_warps=8), triton.Config({"BLOCK": 4096}, num_warps=8)]
_MAX_BLOCK = 4096
_COMPUTE = {torch.float32: tl.float32, torch.float16: tl.float32, torch.bfloat16: tl.float32,
            torch.float64: tl.float64}


# --- shared device helpers -------------------------------------------------------------------------

@triton.jit
def _block(n, USE_INT64: tl.constexpr, BLOCK: tl.constexpr):
    """This program's element offsets and their in-range mask."""
    pid = tl.program_id(0)
    if USE_INT64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < n


@triton.jit
def _load(ptr, offs, mask, COMPUTE: tl.constexpr):
    return tl.load(ptr + offs, mask=mask, eviction_policy="evict_first").to(COMPUTE)


@triton.jit
def _store(ptr, offs, mask, x, RNE_BF16: tl.constexpr):
    """Store ``x`` in the pointer's dtype. ``RNE_BF16`` (interpreter only): Triton's interpreter casts float32 to
    bfloat16 by truncation where GPUs and PyTorch round to nearest even, so the bits are pre-rounded (NaNs left
    alone) to make the truncating cast give the round-to-nearest-even result."""
    if RNE_BF16:
        b = x.to(tl.uint32, bitcast=True)
        x = tl.where(x == x, ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True), x)
    tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _c(x, COMPUTE: tl.constexpr):
    """A scalar argument as a ``COMPUTE`` scalar (``tl.full`` does not round a Python float through float32)."""
    return tl.full((), x, COMPUTE)


@triton.jit
def _div(a, b, COMPUTE: tl.constexpr):
    # if/else, not an early return: the compiler would still build the code after it, div_rn of float64s
    if COMPUTE == tl.float64:
        q = a / b
    else:
        q = tl.div_rn(a, b)  # IEEE division: fp32 `/` compiles to the approximate div.full.f32
    return q


# --- the kernels -----------------------------------------------------------------------------------

def _step_forward_kernel(
    z_ptr, eps_u_ptr, eps_c_ptr, anchor_ptr, noise_ptr,  # inputs (noise_ptr: placeholder if not HAS_NOISE)
    z_prev_ptr, x0_ptr,                                    # outputs (x0_ptr: placeholder if not WANT_X0)
    n, n_bucket,
    r_t: tl.float64, s_t: tl.float64, r_p: tl.float64, d: tl.float64, sigma: tl.float64,
    g: tl.float64, w_x: tl.float64, one_m_w_x: tl.float64, w_o: tl.float64, one_m_w_o: tl.float64,
    HAS_NOISE: tl.constexpr, WANT_X0: tl.constexpr, COMPUTE: tl.constexpr,
    RNE_BF16: tl.constexpr, USE_INT64: tl.constexpr, BLOCK: tl.constexpr,
):
    offs, mask = _block(n, USE_INT64, BLOCK)
    z = _load(z_ptr, offs, mask, COMPUTE)
    e_u = _load(eps_u_ptr, offs, mask, COMPUTE)
    e_c = _load(eps_c_ptr, offs, mask, COMPUTE)
    anc = _load(anchor_ptr, offs, mask, COMPUTE)
    eps = e_u + _c(g, COMPUTE) * (e_c - e_u)
    x0 = _div(z - _c(s_t, COMPUTE) * eps, _c(r_t, COMPUTE), COMPUTE)
    x0b = _c(one_m_w_x, COMPUTE) * x0 + _c(w_x, COMPUTE) * anc
    mean = _c(r_p, COMPUTE) * x0b + _c(d, COMPUTE) * eps
    z_prev = _c(one_m_w_o, COMPUTE) * mean + _c(w_o, COMPUTE) * anc
    if HAS_NOISE:
        z_prev = z_prev + _c(sigma, COMPUTE) * _load(noise_ptr, offs, mask, COMPUTE)
    _store(z_prev_ptr, offs, mask, z_prev, RNE_BF16)
    if WANT_X0:
        _store(x0_ptr, offs, mask, x0b, RNE_BF16)


def _step_backward_kernel(
    gz_prev_ptr, gx0_in_ptr,          # inputs: dL/dz_prev, dL/dx0' (placeholder if not HAS_H)
    gz_ptr, geps_ptr, ganchor_ptr,    # outputs; geps holds 2 n elements: [uncond | cond]
    n, n_bucket,
    r_t: tl.float64, r_p: tl.float64, d: tl.float64, s_over_r: tl.float64,
    g: tl.float64, one_m_g: tl.float64, w_x: tl.float64, one_m_w_x: tl.float64,
    w_o: tl.float64, one_m_w_o: tl.float64,
    HAS_H: tl.constexpr, COMPUTE: tl.constexpr, RNE_BF16: tl.constexpr,
    USE_INT64: tl.constexpr, BLOCK: tl.constexpr,
):
    offs, mask = _block(n, USE_INT64, BLOCK)
    G = _load(gz_prev_ptr, offs, mask, COMPUTE)
    g_mean = _c(one_m_w_o, COMPUTE) * G
    g_x0b = _c(r_p, COMPUTE) * g_mean
    if HAS_H:
        g_x0b = g_x0b + _load(gx0_in_ptr, offs, mask, COMPUTE)
    g_x0 = _c(one_m_w_x, COMPUTE) * g_x0b
    g_anchor = _c(w_o, COMPUTE) * G + _c(w_x, COMPUTE) * g_x0b
    g_eps = _c(d, COMPUTE) * g_mean - _c(s_over_r, COMPUTE) * g_x0
    _store(gz_ptr, offs, mask, _div(g_x0, _c(r_t, COMPUTE), COMPUTE), RNE_BF16)
    _store(ganchor_ptr, offs, mask, g_anchor, RNE_BF16)
    _store(geps_ptr, offs, mask, _c(one_m_g, COMPUTE) * g_eps, RNE_BF16)
    _store(geps_ptr + n, offs, mask, _c(g, COMPUTE) * g_eps, RNE_BF16)


def _decorate(fn):
    # n is specialised (divisibility by 16 lets masked loads vectorise: see above); the bucket key is not.
    kernel = triton.jit(fn, do_not_specialize=["n_bucket"])
    return kernel if INTERPRETED else triton.autotune(configs=_GPU_CONFIGS, key=["n_bucket"])(kernel)


_forward_kernel = _decorate(_step_forward_kernel)
_backward_kernel = _decorate(_step_backward_kernel)


# --- launchers -------------------------------------------------------------------------------------

def _launch(kernel, n: int, args: tuple, dtype: torch.dtype, **flags) -> None:
    """Launch ``kernel`` over ``n`` elements on the device of the tensors in ``args``."""
    try:
        compute = _COMPUTE[dtype]
    except KeyError:
        raise TypeError(f"the Triton step supports {tuple(_COMPUTE)} tensors, not {dtype}") from None
    # int64 offsets only if an offset (up to 2 n + a block, for the grad_eps pair) could overflow int32.
    # No a*b+c -> fma contraction: results match the op-by-op reference bit for bit (free: memory-bound).
    meta = dict(flags, COMPUTE=compute, USE_INT64=2 * n + 2 * _MAX_BLOCK > _INT32_LIMIT,
                RNE_BF16=INTERPRETED and dtype == torch.bfloat16, enable_fp_fusion=False)
    args = args[:-1] + (n, n.bit_length()) + args[-1]
    if INTERPRETED:
        kernel[(triton.cdiv(n, _FIXED_BLOCK),)](*args, **meta, BLOCK=_FIXED_BLOCK)
        return
    with torch.cuda.device(args[0].device):  # Triton launches on the current device's stream
        kernel[lambda m: (triton.cdiv(n, m["BLOCK"]),)](*args, **meta)


def _scalars(coef):
    return tuple(float(c) for c in coef)


def step_forward(z: torch.Tensor, eps_u: torch.Tensor, eps_c: torch.Tensor, anchor: torch.Tensor,
                 noise, coef, want_x0: bool):
    """Fused step forward: ``(z_prev, x0' if want_x0 else None)``, new tensors of ``z``'s dtype.

    All tensors contiguous with ``z``'s shape, dtype and device (the op checks this); ``noise`` may
    be ``None`` (then ``coef.sigma`` is ignored).
    """
    r_t, s_t, r_p, d, sigma, g, w_x, w_o = _scalars(coef)
    z_prev = torch.empty_like(z, memory_format=torch.contiguous_format)
    x0 = torch.empty_like(z_prev) if want_x0 else None
    if z.numel():
        _launch(_forward_kernel, z.numel(),
                (z, eps_u, eps_c, anchor, z if noise is None else noise, z_prev, z_prev if x0 is None else x0,
                 (r_t, s_t, r_p, d, sigma, g, w_x, 1.0 - w_x, w_o, 1.0 - w_o)),
                z.dtype, HAS_NOISE=noise is not None, WANT_X0=bool(want_x0))
    return z_prev, x0


def step_backward(grad_z_prev: torch.Tensor, grad_x0, coef):
    """Fused step backward: ``(grad_z, grad_eps of shape (2, *shape), grad_anchor)``."""
    r_t, s_t, r_p, d, _, g, w_x, w_o = _scalars(coef)
    G = grad_z_prev
    g_z = torch.empty_like(G, memory_format=torch.contiguous_format)
    g_anchor = torch.empty_like(g_z)
    g_eps = torch.empty((2, *G.shape), dtype=G.dtype, device=G.device)
    if G.numel():
        _launch(_backward_kernel, G.numel(),
                (G, G if grad_x0 is None else grad_x0, g_z, g_eps, g_anchor,
                 (r_t, r_p, d, s_t / r_t, g, 1.0 - g, w_x, 1.0 - w_x, w_o, 1.0 - w_o)),
                G.dtype, HAS_H=grad_x0 is not None)
    return g_z, g_eps, g_anchor
