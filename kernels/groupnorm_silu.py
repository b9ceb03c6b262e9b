"""Triton kernels of a fused GroupNorm + SiLU (forward and backward).

What: ``y = silu(group_norm(x, G, weight, bias, eps))`` for ``x`` of shape ``(N, C, *spatial)``,
and its backward w.r.t. ``x``, ``weight`` and ``bias``. The plain-PyTorch reference is
``F.silu(F.group_norm(x, G, weight, bias, eps))`` (``ld3m_fast.models.fused_norm`` holds it, the
autograd wrapper and the fallback).

Why: every residual block of the UNet and of the VQ decoder runs GroupNorm then SiLU twice. Done
as two PyTorch ops, the normalised tensor is written, read back, and kept for backward beside the
SiLU output. Here the forward reads ``x`` twice (statistics, then output) and writes ``y`` once;
backward keeps only ``x`` and the per-group statistics and recomputes the rest.

How (per sample ``n``, the tensor is seen as a ``C × S`` matrix, ``S`` = spatial size):

1. ``_channel_stats``: programs over (sample, block of channels, chunk of ``S``) compute each
   channel's mean and centred sum of squares over their chunk, merging tiles with Chan's
   parallel formula (no ``E[x²] − E[x]²`` cancellation). The host merges the few partials of a
   group into its mean and ``rstd`` (tiny tensors, same formula). Statistics are taken of
   ``x − pivot``, the pivot being the group's first element, so a large common offset costs no
   precision (``x − pivot`` is exact for nearby values); the saved mean is relative to it.
2. ``_apply``: ``y = silu((x − pivot) a_c + b'_c)`` with ``a_c = rstd_g w_c``, ``b'_c = b_c − mean_g a_c``.
3. ``_grad_sums`` (backward): per channel partial sums of ``du`` and ``du · x̂`` where
   ``du = dy · silu'(u)`` is recomputed from ``x``; they give ``grad_bias``, ``grad_weight`` and the
   two group means that the input gradient needs.
4. ``_grad_input``: ``dx = rstd (w du − mean_g(w du) − x̂ mean_g(w du x̂))``.

Layouts: any tensor whose spatial dimensions are packed one after another (``NCHW``-contiguous
and channels-last both qualify; others are made contiguous). Tiles are ``BLOCK_C × BLOCK_S``,
shaped so that the unit-stride axis is the long one. Arithmetic in float64 for float64 tensors and
in float32 otherwise (bf16/fp16 are loaded, upcast, and rounded once at the store). Under
``TRITON_INTERPRET=1`` (CPU tests) the kernels run in Triton's interpreter; kernels are decorated
lazily per mode, as in ``fused_step``.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["group_norm_silu_forward", "group_norm_silu_backward", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_TILE = 2048          # elements per tile
_INT32_LIMIT = 2**31 - 1


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def _channel_stats(x_ptr, pmean_ptr, pm2_ptr, C, S, CG, s_per_prog, P, sN, sC, sS,
                   COMPUTE: tl.constexpr, USE_INT64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    n = tl.program_id(0)
    cb = tl.program_id(1)
    p = tl.program_id(2)
    if USE_INT64:
        n = n.to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    pivot = tl.load(x_ptr + n * sN + (c // CG) * CG * sC, mask=cmask, other=0.0).to(COMPUTE)
    start = p * s_per_prog
    end = tl.minimum(start + s_per_prog, S)
    mean = tl.zeros((BLOCK_C,), COMPUTE)
    m2 = tl.zeros((BLOCK_C,), COMPUTE)
    count = tl.full((), 0.0, COMPUTE)
    for s0 in range(start, end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        smask = s < end
        mask = cmask[:, None] & smask[None, :]
        x = tl.load(x_ptr + n * sN + c[:, None] * sC + s[None, :] * sS, mask=mask, other=0.0).to(COMPUTE)
        x = tl.where(mask, x - pivot[:, None], 0.0)
        cnt = tl.minimum(end - s0, BLOCK_S).to(COMPUTE)
        bmean = tl.sum(x, axis=1) / cnt
        dev = tl.where(mask, x - bmean[:, None], 0.0)
        bm2 = tl.sum(dev * dev, axis=1)
        total = count + cnt
        delta = bmean - mean
        mean = mean + delta * (cnt / total)
        m2 = m2 + bm2 + delta * delta * (count * cnt / total)
        count = total
    out = (n * C + c) * P + p
    tl.store(pmean_ptr + out, mean, mask=cmask)
    tl.store(pm2_ptr + out, m2, mask=cmask)


def _apply(x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, C, S, CG, G, sN, sC, sS,
           COMPUTE: tl.constexpr, USE_INT64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    n = tl.program_id(0)
    cb = tl.program_id(1)
    sb = tl.program_id(2)
    if USE_INT64:
        n = n.to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    cmask = c < C
    mask = cmask[:, None] & (s < S)[None, :]
    g = n * G + c // CG
    mean = tl.load(mean_ptr + g, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + g, mask=cmask, other=0.0)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
    b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
    pivot = tl.load(x_ptr + n * sN + (c // CG) * CG * sC, mask=cmask, other=0.0).to(COMPUTE)
    scale = rstd * w
    shift = b - mean * scale
    offs = n * sN + c[:, None] * sC + s[None, :] * sS
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    u = (x - pivot[:, None]) * scale[:, None] + shift[:, None]
    e = tl.exp(-tl.abs(u))                                    # sigmoid without overflow
    y = u * tl.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _grad_sums(dy_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, psum_ptr, psum_xhat_ptr,
               C, S, CG, G, s_per_prog, P, sN, sC, sS, dN, dC, dS,
               COMPUTE: tl.constexpr, USE_INT64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    n = tl.program_id(0)
    cb = tl.program_id(1)
    p = tl.program_id(2)
    if USE_INT64:
        n = n.to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    g = n * G + c // CG
    mean = tl.load(mean_ptr + g, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + g, mask=cmask, other=0.0)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
    b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
    pivot = tl.load(x_ptr + n * sN + (c // CG) * CG * sC, mask=cmask, other=0.0).to(COMPUTE)
    start = p * s_per_prog
    end = tl.minimum(start + s_per_prog, S)
    acc = tl.zeros((BLOCK_C,), COMPUTE)
    acc_xhat = tl.zeros((BLOCK_C,), COMPUTE)
    for s0 in range(start, end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = cmask[:, None] & (s < end)[None, :]
        x = tl.load(x_ptr + n * sN + c[:, None] * sC + s[None, :] * sS, mask=mask, other=0.0).to(COMPUTE)
        dy = tl.load(dy_ptr + n * dN + c[:, None] * dC + s[None, :] * dS, mask=mask, other=0.0).to(COMPUTE)
        xhat = (x - pivot[:, None] - mean[:, None]) * rstd[:, None]
        u = xhat * w[:, None] + b[:, None]
        e = tl.exp(-tl.abs(u))
        sig = tl.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        du = dy * sig * (1.0 + u * (1.0 - sig))   # masked elements: dy = 0, so du = 0
        acc += tl.sum(du, axis=1)
        acc_xhat += tl.sum(du * xhat, axis=1)
    out = (n * C + c) * P + p
    tl.store(psum_ptr + out, acc, mask=cmask)
    tl.store(psum_xhat_ptr + out, acc_xhat, mask=cmask)


def _grad_input(dy_ptr, x_ptr, dx_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, c1_ptr, c2_ptr,
                C, S, CG, G, sN, sC, sS, dN, dC, dS,
                COMPUTE: tl.constexpr, USE_INT64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    n = tl.program_id(0)
    cb = tl.program_id(1)
    sb = tl.program_id(2)
    if USE_INT64:
        n = n.to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    cmask = c < C
    mask = cmask[:, None] & (s < S)[None, :]
    g = n * G + c // CG
    mean = tl.load(mean_ptr + g, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + g, mask=cmask, other=0.0)
    c1 = tl.load(c1_ptr + g, mask=cmask, other=0.0)
    c2 = tl.load(c2_ptr + g, mask=cmask, other=0.0)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
    b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
    pivot = tl.load(x_ptr + n * sN + (c // CG) * CG * sC, mask=cmask, other=0.0).to(COMPUTE)
    offs = n * sN + c[:, None] * sC + s[None, :] * sS
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    dy = tl.load(dy_ptr + n * dN + c[:, None] * dC + s[None, :] * dS, mask=mask, other=0.0).to(COMPUTE)
    xhat = (x - pivot[:, None] - mean[:, None]) * rstd[:, None]
    u = xhat * w[:, None] + b[:, None]
    e = tl.exp(-tl.abs(u))
    sig = tl.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    dxhat = dy * sig * (1.0 + u * (1.0 - sig)) * w[:, None]
    dx = rstd[:, None] * (dxhat - c1[:, None] - xhat * c2[:, None])
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


_RAW = {"stats": _channel_stats, "apply": _apply, "grad_sums": _grad_sums, "grad_input": _grad_input}
_DECORATED: dict = {}


def _kernel(kind: str):
    """The Triton kernel ``kind`` for the current mode (compiled or interpreted), decorated once."""
    key = (kind, _interpreting())
    if key not in _DECORATED:
        _DECORATED[key] = triton.jit(_RAW[kind])
    return _DECORATED[key]


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _compute(dtype: torch.dtype):
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the Triton GroupNorm+SiLU supports {SUPPORTED_DTYPES}, not {dtype}")
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if its spatial dims are packed (one stride describes them), else a contiguous copy."""
    for d in range(2, t.dim() - 1):
        if t.shape[d + 1] != 1 and t.stride(d) != t.stride(d + 1) * t.shape[d + 1]:
            return t.contiguous()
    return t


def _strides(t: torch.Tensor):
    """(sample, channel, spatial) element strides of a packed ``(N, C, *spatial)`` tensor."""
    return t.stride(0), t.stride(1), (t.stride(-1) if t.dim() > 2 else 1)


def _tile(C: int, S: int, channel_unit_stride: bool):
    """``(BLOCK_C, BLOCK_S)``: about ``_TILE`` elements, long along the unit-stride axis."""
    pc, ps = triton.next_power_of_2(max(C, 1)), triton.next_power_of_2(max(S, 1))
    if channel_unit_stride:
        bc = min(pc, 64)
        return bc, min(ps, max(1, _TILE // bc))
    bs = min(ps, 1024)
    return min(pc, max(1, _TILE // bs)), bs


def _split(S: int, block_s: int, programs: int, device: torch.device):
    """Spatial chunk per reduction program and chunk count, so the grid fills the GPU."""
    if _interpreting() or device.type != "cuda":
        parts = 1
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        parts = max(1, min(triton.cdiv(S, block_s), triton.cdiv(4 * sms, max(programs, 1))))
    s_per_prog = triton.cdiv(triton.cdiv(S, parts), block_s) * block_s
    return s_per_prog, triton.cdiv(S, s_per_prog)


def _launch(kind, grid, args, meta, device):
    kernel = _kernel(kind)
    num_warps = 8 if meta["BLOCK_C"] * meta["BLOCK_S"] >= 2048 else 4
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **meta, num_warps=num_warps)
    else:
        kernel[grid](*args, **meta, num_warps=num_warps)


def _group_merge(pmean, pm2, counts, N, G, CG, S, eps):
    """Per-group ``(mean, rstd)`` from per-channel, per-chunk means and centred sums of squares."""
    pmean = pmean.view(N, G, CG, -1)
    pm2 = pm2.view(N, G, CG, -1)
    total = CG * S
    mean = (pmean * counts).sum((2, 3)) / total
    m2 = pm2.sum((2, 3)) + (counts * (pmean - mean[..., None, None]) ** 2).sum((2, 3))
    rstd = torch.rsqrt(m2 / total + eps)
    return mean.contiguous(), rstd.contiguous()


def _common(x: torch.Tensor, num_groups: int):
    if x.dim() < 2:
        raise ValueError(f"x must be (N, C, *spatial), got shape {tuple(x.shape)}")
    N, C = x.shape[0], x.shape[1]
    if C % num_groups:
        raise ValueError(f"{C} channels do not split into num_groups={num_groups}")
    S = math.prod(x.shape[2:])
    return N, C, S, C // num_groups


def _chunk_counts(S, s_per_prog, P, dtype, device):
    starts = torch.arange(P, dtype=torch.float64) * s_per_prog
    return (torch.clamp(S - starts, max=s_per_prog)).to(device=device, dtype=dtype)


def group_norm_silu_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int,
                            eps: float = 1e-5):
    """``(silu(group_norm(x)), mean, rstd)`` with ``weight``/``bias`` of shape ``(C,)``.

    ``y`` has ``x``'s dtype and memory layout. ``mean`` and ``rstd`` are ``(N, G)`` in float32
    (float64 for float64 ``x``); ``mean`` is relative to each group's first element (see above):
    pass both unchanged to ``group_norm_silu_backward``.
    """
    tl_compute, compute = _compute(x.dtype)
    N, C, S, CG = _common(x, num_groups)
    x = _as_matrix(x)
    y = torch.empty_like(x)
    if y.stride() != x.stride():
        x = x.contiguous()
        y = torch.empty_like(x)
    weight, bias = weight.contiguous(), bias.contiguous()
    if x.numel() == 0:
        empty = torch.empty((N, num_groups), dtype=compute, device=x.device)
        return y, empty, empty.clone()
    sN, sC, sS = _strides(x)
    bc, bs = _tile(C, S, sC == 1 and sS != 1)
    use64 = x.numel() + 2 * _TILE > _INT32_LIMIT
    meta = dict(COMPUTE=tl_compute, USE_INT64=use64, BLOCK_C=bc, BLOCK_S=bs)
    cblocks = triton.cdiv(C, bc)
    s_per_prog, P = _split(S, bs, N * cblocks, x.device)
    pmean = torch.empty((N, C, P), dtype=compute, device=x.device)
    pm2 = torch.empty_like(pmean)
    _launch("stats", (N, cblocks, P), (x, pmean, pm2, C, S, CG, s_per_prog, P, sN, sC, sS), meta, x.device)
    counts = _chunk_counts(S, s_per_prog, P, compute, x.device)
    mean, rstd = _group_merge(pmean, pm2, counts, N, num_groups, CG, S, eps)
    _launch("apply", (N, cblocks, triton.cdiv(S, bs)),
            (x, y, mean, rstd, weight, bias, C, S, CG, num_groups, sN, sC, sS), meta, x.device)
    return y, mean, rstd


def group_norm_silu_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             mean: torch.Tensor, rstd: torch.Tensor, num_groups: int):
    """``(grad_x, grad_weight, grad_bias)`` of ``silu(group_norm(x))`` given the forward's ``mean``/``rstd``.

    ``grad_x`` has ``x``'s dtype and layout; ``grad_weight``/``grad_bias`` have ``weight``'s dtype.
    """
    tl_compute, compute = _compute(x.dtype)
    N, C, S, CG = _common(x, num_groups)
    x = _as_matrix(x)
    grad_y = _as_matrix(grad_y)
    dx = torch.empty_like(x)
    if dx.stride() != x.stride():
        x = x.contiguous()
        dx = torch.empty_like(x)
    weight, bias = weight.contiguous(), bias.contiguous()
    if x.numel() == 0:
        return dx, torch.zeros_like(weight), torch.zeros_like(bias)
    sN, sC, sS = _strides(x)
    dN, dC, dS = _strides(grad_y)
    bc, bs = _tile(C, S, sC == 1 and sS != 1)
    use64 = max(x.numel(), grad_y.numel()) + 2 * _TILE > _INT32_LIMIT
    meta = dict(COMPUTE=tl_compute, USE_INT64=use64, BLOCK_C=bc, BLOCK_S=bs)
    cblocks = triton.cdiv(C, bc)
    s_per_prog, P = _split(S, bs, N * cblocks, x.device)
    psum = torch.empty((N, C, P), dtype=compute, device=x.device)
    psum_xhat = torch.empty_like(psum)
    _launch("grad_sums", (N, cblocks, P),
            (grad_y, x, mean, rstd, weight, bias, psum, psum_xhat, C, S, CG, num_groups, s_per_prog, P,
             sN, sC, sS, dN, dC, dS), meta, x.device)
    sum_du, sum_du_xhat = psum.sum(-1), psum_xhat.sum(-1)                     # (N, C)
    w = weight.to(compute)
    c1 = (sum_du * w).view(N, num_groups, CG).sum(-1).div_(CG * S).contiguous()       # mean of w·du per group
    c2 = (sum_du_xhat * w).view(N, num_groups, CG).sum(-1).div_(CG * S).contiguous()  # mean of w·du·x̂ per group
    _launch("grad_input", (N, cblocks, triton.cdiv(S, bs)),
            (grad_y, x, dx, mean, rstd, weight, bias, c1, c2, C, S, CG, num_groups, sN, sC, sS, dN, dC, dS),
            meta, x.device)
    return dx, sum_du_xhat.sum(0).to(weight.dtype), sum_du.sum(0).to(bias.dtype)
