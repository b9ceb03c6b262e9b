"""Triton kernels of the fused LD3M denoising step (forward and backward).

What: one elementwise pass for the whole step (``ld3m_fast.backends.torch_backend`` is the
reference; the formulas are repeated in the kernels below)::

    eps = eps_u + g (eps_c - eps_u);  x0 = (z - s_t eps) / r_t;  x0' = (1 - w_x) x0 + w_x anchor
    z'  = (1 - w_o) (r_p x0' + d eps) + w_o anchor [+ sigma noise]

and its backward, which needs no saved tensors because the step is linear in every input.

Why: the step is memory-bound. Unfused it costs about a dozen full-tensor reads and writes and
as many launches; here every input is read once and every output written once, in one launch.
The backward writes both halves of ``grad_eps`` (``[(1-g) g_eps, g g_eps]``) into one contiguous
``(2, *shape)`` buffer, so the doubled-batch UNet output ``[uncond; cond]`` gets its gradient
without a ``torch.stack``/``torch.cat``.

How:

- Flat 1-D indexing over contiguous tensors, masked tail block, so any ``numel`` works.
  Offsets are int64 (constexpr ``USE_INT64``) only when ``2 * numel`` could overflow int32.
- Arithmetic in float32 for float16/bfloat16/float32 tensors (load, upcast, compute, round once
  at the store) and in float64 for float64 tensors (constexpr ``COMPUTE``).
- Scalars are kernel arguments annotated ``tl.float64`` so they reach the GPU unrounded; each is
  turned into a ``COMPUTE`` scalar once per program. (An unannotated Python float would be passed
  as fp32, which silently breaks the float64 path.) ``1 - w_x``, ``1 - w_o``, ``1 - g`` and
  ``s_t / r_t`` are formed on the host in double precision, as the PyTorch reference does, and
  the operations follow the reference's order, with IEEE division (``tl.div_rn``; Triton's fp32
  ``/`` is approximate) and FMA contraction off, so results match the reference bit for bit
  (verified under the interpreter for all four dtypes).
- Optional tensors (``noise``, ``grad_x0``, the ``x0`` output) are switched by constexpr flags,
  so a disabled one is never read or written (a placeholder pointer is passed in its place).
- On GPUs the block size is autotuned over a few configurations keyed on ``n``; under
  ``TRITON_INTERPRET=1`` (CPU tests) one fixed configuration is used so tests stay fast.

The kernels are decorated lazily, once per mode (compiled / interpreted), at their first launch,
so ``TRITON_INTERPRET`` only has to be set before a launch, not before this module is imported.
"""
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

if TYPE_CHECKING:
    from ..backends.contract import StepCoefficients

__all__ = ["step_forward", "step_backward", "interpreting"]

_INT32_LIMIT = 2**31 - 1
_FIXED_CONFIG = {"BLOCK": 1024, "num_warps": 4}  # under the interpreter (num_warps is ignored there)
_GPU_CONFIGS = [
    triton.Config({"BLOCK": 512}, num_warps=4),
    triton.Config({"BLOCK": 1024}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=8),
    triton.Config({"BLOCK": 4096}, num_warps=8),
]
_MAX_BLOCK = max(c.kwargs["BLOCK"] for c in _GPU_CONFIGS)


def interpreting() -> bool:
    """Whether Triton would run a kernel decorated now through its CPU interpreter."""
    return bool(triton.knobs.runtime.interpret)


# The kernels are plain functions here, turned into Triton kernels on first launch by _kernel():
# triton.jit picks the interpreter or the compiler when it decorates, so decorating lazily (once
# per mode) makes the module independent of when TRITON_INTERPRET is set. For the same reason the
# kernels call no other @triton.jit helpers. ``tl.full((), x, COMPUTE)`` turns a scalar argument
# (fp64 when compiled; a Python float under the interpreter, which tl.full does not round through
# float32 the way implicit conversion would) into a COMPUTE scalar, once per program.

# RNE_BF16: Triton's interpreter (3.x) casts float32 -> bfloat16 by truncating the mantissa, where
# GPUs (and PyTorch) round to nearest even, so interpreted bf16 results would be 1 ulp off on about
# half of the elements. With RNE_BF16 (set only when interpreting with bfloat16 outputs) the kernels
# pre-round the float32 bits (add 0x7FFF + lsb, clear the low half; NaNs left alone) so that the
# truncating cast gives the round-to-nearest-even result. Compiled kernels never take this branch.


def _step_forward_kernel(
    z_ptr, eps_u_ptr, eps_c_ptr, anchor_ptr, noise_ptr,  # inputs (noise_ptr: placeholder if not HAS_NOISE)
    z_prev_ptr, x0_ptr,                                    # outputs (x0_ptr: placeholder if not WANT_X0)
    n,
    r_t: tl.float64, s_t: tl.float64, r_p: tl.float64, d: tl.float64, sigma: tl.float64,
    g: tl.float64, w_x: tl.float64, one_m_w_x: tl.float64, w_o: tl.float64, one_m_w_o: tl.float64,
    HAS_NOISE: tl.constexpr, WANT_X0: tl.constexpr, COMPUTE: tl.constexpr,
    RNE_BF16: tl.constexpr, USE_INT64: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if USE_INT64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n

    z = tl.load(z_ptr + offs, mask=mask, eviction_policy="evict_first").to(COMPUTE)
    e_u = tl.load(eps_u_ptr + offs, mask=mask, eviction_policy="evict_first").to(COMPUTE)
    e_c = tl.load(eps_c_ptr + offs, mask=mask, eviction_policy="evict_first").to(COMPUTE)
    anc = tl.load(anchor_ptr + offs, mask=mask, eviction_policy="evict_first").to(COMPUTE)

    eps = e_u + tl.full((), g, COMPUTE) * (e_c - e_u)
    if COMPUTE == tl.float64:
        x0 = (z - tl.full((), s_t, COMPUTE) * eps) / tl.full((), r_t, COMPUTE)
    else:  # IEEE division: fp32 `/` compiles to the approximate div.full.f32
        x0 = tl.div_rn(z - tl.full((), s_t, COMPUTE) * eps, tl.full((), r_t, COMPUTE))
    x0b = tl.full((), one_m_w_x, COMPUTE) * x0 + tl.full((), w_x, COMPUTE) * anc
    mean = tl.full((), r_p, COMPUTE) * x0b + tl.full((), d, COMPUTE) * eps
    z_prev = tl.full((), one_m_w_o, COMPUTE) * mean + tl.full((), w_o, COMPUTE) * anc
    if HAS_NOISE:
        noise = tl.load(noise_ptr + offs, mask=mask, eviction_policy="evict_first").to(COMPUTE)
        z_prev = z_prev + tl.full((), sigma, COMPUTE) * noise

    if RNE_BF16:  # interpreter only, see the RNE_BF16 note above
        b = z_prev.to(tl.uint32, bitcast=True)
        z_prev = tl.where(z_prev == z_prev, ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True), z_prev)
        b = x0b.to(tl.uint32, bitcast=True)
        x0b = tl.where(x0b == x0b, ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True), x0b)
    tl.store(z_prev_ptr + offs, z_prev.to(z_prev_ptr.dtype.element_ty), mask=mask)
    if WANT_X0:
        tl.store(x0_ptr + offs, x0b.to(x0_ptr.dtype.element_ty), mask=mask)


def _step_backward_kernel(
    gz_prev_ptr, gx0_in_ptr,          # inputs: dL/dz_prev, dL/dx0' (placeholder if not HAS_H)
    gz_ptr, geps_ptr, ganchor_ptr,    # outputs; geps holds 2 n elements: [uncond | cond]
    n,
    r_t: tl.float64, r_p: tl.float64, d: tl.float64, s_over_r: tl.float64,
    g: tl.float64, one_m_g: tl.float64, w_x: tl.float64, one_m_w_x: tl.float64,
    w_o: tl.float64, one_m_w_o: tl.float64,
    HAS_H: tl.constexpr, COMPUTE: tl.constexpr, RNE_BF16: tl.constexpr,
    USE_INT64: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if USE_INT64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n

    G = tl.load(gz_prev_ptr + offs, mask=mask, eviction_policy="evict_first").to(COMPUTE)
    g_mean = tl.full((), one_m_w_o, COMPUTE) * G
    g_x0b = tl.full((), r_p, COMPUTE) * g_mean
    if HAS_H:
        H = tl.load(gx0_in_ptr + offs, mask=mask, eviction_policy="evict_first").to(COMPUTE)
        g_x0b = g_x0b + H
    g_x0 = tl.full((), one_m_w_x, COMPUTE) * g_x0b
    g_anchor = tl.full((), w_o, COMPUTE) * G + tl.full((), w_x, COMPUTE) * g_x0b
    g_eps = tl.full((), d, COMPUTE) * g_mean - tl.full((), s_over_r, COMPUTE) * g_x0
    if COMPUTE == tl.float64:
        g_z = g_x0 / tl.full((), r_t, COMPUTE)
    else:  # IEEE division: fp32 `/` compiles to the approximate div.full.f32
        g_z = tl.div_rn(g_x0, tl.full((), r_t, COMPUTE))
    g_eps_u = tl.full((), one_m_g, COMPUTE) * g_eps
    g_eps_c = tl.full((), g, COMPUTE) * g_eps

    if RNE_BF16:  # interpreter only, see the RNE_BF16 note above
        b = g_z.to(tl.uint32, bitcast=True)
        g_z = tl.where(g_z == g_z, ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True), g_z)
        b = g_anchor.to(tl.uint32, bitcast=True)
        g_anchor = tl.where(g_anchor == g_anchor, ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True), g_anchor)
        b = g_eps_u.to(tl.uint32, bitcast=True)
        g_eps_u = tl.where(g_eps_u == g_eps_u, ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True), g_eps_u)
        b = g_eps_c.to(tl.uint32, bitcast=True)
        g_eps_c = tl.where(g_eps_c == g_eps_c, ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True), g_eps_c)
    out_ty = gz_ptr.dtype.element_ty
    tl.store(gz_ptr + offs, g_z.to(out_ty), mask=mask)
    tl.store(ganchor_ptr + offs, g_anchor.to(out_ty), mask=mask)
    tl.store(geps_ptr + offs, g_eps_u.to(out_ty), mask=mask)
    tl.store(geps_ptr + n + offs, g_eps_c.to(out_ty), mask=mask)


_RAW = {"forward": _step_forward_kernel, "backward": _step_backward_kernel}
_DECORATED = {}


def _kernel(kind: str):
    """The Triton kernel ``kind`` for the current mode: autotuned when compiled, fixed when interpreted."""
    mode = interpreting()
    k = _DECORATED.get((kind, mode))
    if k is None:
        k = triton.jit(_RAW[kind])
        if not mode:
            k = triton.autotune(configs=_GPU_CONFIGS, key=["n"])(k)
        _DECORATED[(kind, mode)] = k
    return k


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

_SUPPORTED = {
    torch.float32: tl.float32,
    torch.float16: tl.float32,
    torch.bfloat16: tl.float32,
    torch.float64: tl.float64,
}


def _compute_dtype(t: torch.Tensor):
    try:
        return _SUPPORTED[t.dtype]
    except KeyError:
        raise TypeError(f"the Triton step supports {tuple(_SUPPORTED)} tensors, not {t.dtype}") from None


def _check(ref: torch.Tensor, **others):
    for name, t in others.items():
        if t is None:
            continue
        if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
            raise ValueError(f"{name} is {tuple(t.shape)} {t.dtype} on {t.device}, expected "
                             f"{tuple(ref.shape)} {ref.dtype} on {ref.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")


def _scalars(coef: "StepCoefficients"):
    """The eight step scalars as Python floats, in StepCoefficients order."""
    return (float(coef.sqrt_alpha), float(coef.sqrt_one_minus_alpha), float(coef.sqrt_alpha_prev),
            float(coef.direction), float(coef.sigma), float(coef.guidance), float(coef.blend_x0),
            float(coef.blend_out))


def _launch(kind, n, args, **meta):
    """Launch kernel ``kind`` over ``n`` elements on the device of the tensors in ``args``."""
    kernel = _kernel(kind)
    # int64 offsets only if an offset (up to 2 n + a block, for the grad_eps pair) could overflow
    meta["USE_INT64"] = 2 * n + 2 * _MAX_BLOCK > _INT32_LIMIT
    # No a*b+c -> fma contraction: results then match the op-by-op PyTorch reference bit for bit
    # in float32 (free here: the kernels are memory-bound). Explicit, because Triton 3.9 warns
    # that its default is about to change.
    meta["enable_fp_fusion"] = False
    if interpreting():
        block = _FIXED_CONFIG["BLOCK"]
        kernel[(triton.cdiv(n, block),)](*args, **meta, **_FIXED_CONFIG)
        return

    def grid(m):
        return (triton.cdiv(n, m["BLOCK"]),)

    device = args[0].device
    if device.type == "cuda":
        with torch.cuda.device(device):  # Triton launches on the current device's stream
            kernel[grid](*args, **meta)
    else:
        kernel[grid](*args, **meta)


def step_forward(z: torch.Tensor, eps_u: torch.Tensor, eps_c: torch.Tensor, anchor: torch.Tensor,
                 noise, coef: "StepCoefficients", want_x0: bool):
    """Fused step forward: ``(z_prev, x0' if want_x0 else None)``, new tensors of ``z``'s dtype.

    All tensors contiguous with ``z``'s shape, dtype and device; ``noise`` may be ``None``
    (then ``coef.sigma`` is ignored).
    """
    compute = _compute_dtype(z)
    _check(z, z=z, eps_u=eps_u, eps_c=eps_c, anchor=anchor, noise=noise)
    r_t, s_t, r_p, d, sigma, g, w_x, w_o = _scalars(coef)
    z_prev = torch.empty_like(z, memory_format=torch.contiguous_format)
    x0 = torch.empty_like(z, memory_format=torch.contiguous_format) if want_x0 else None
    n = z.numel()
    if n == 0:
        return z_prev, x0
    _launch(
        "forward", n,
        (z, eps_u, eps_c, anchor, z if noise is None else noise,
         z_prev, z_prev if x0 is None else x0,
         n, r_t, s_t, r_p, d, sigma, g, w_x, 1.0 - w_x, w_o, 1.0 - w_o),
        HAS_NOISE=noise is not None, WANT_X0=bool(want_x0), COMPUTE=compute,
        RNE_BF16=interpreting() and z.dtype == torch.bfloat16,
    )
    return z_prev, x0


def step_backward(grad_z_prev: torch.Tensor, grad_x0, coef: "StepCoefficients"):
    """Fused step backward: ``(grad_z, grad_eps, grad_anchor)``.

    ``grad_eps`` has shape ``(2, *grad_z_prev.shape)``: ``[grad wrt eps_u, grad wrt eps_c]``,
    written by one kernel into one contiguous buffer. ``grad_x0`` (gradient wrt the returned
    ``x0'``) may be ``None``.
    """
    compute = _compute_dtype(grad_z_prev)
    _check(grad_z_prev, grad_z_prev=grad_z_prev, grad_x0=grad_x0)
    r_t, s_t, r_p, d, _sigma, g, w_x, w_o = _scalars(coef)
    G = grad_z_prev
    g_z = torch.empty_like(G, memory_format=torch.contiguous_format)
    g_anchor = torch.empty_like(G, memory_format=torch.contiguous_format)
    g_eps = torch.empty((2, *G.shape), dtype=G.dtype, device=G.device)
    n = G.numel()
    if n == 0:
        return g_z, g_eps, g_anchor
    _launch(
        "backward", n,
        (G, G if grad_x0 is None else grad_x0, g_z, g_eps, g_anchor,
         n, r_t, r_p, d, s_t / r_t, g, 1.0 - g, w_x, 1.0 - w_x, w_o, 1.0 - w_o),
        HAS_H=grad_x0 is not None, COMPUTE=compute,
        RNE_BF16=interpreting() and G.dtype == torch.bfloat16,
    )
    return g_z, g_eps, g_anchor
