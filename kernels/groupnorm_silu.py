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
shaped so that the unit-stride axis is the long one. Grids are one axis of
``tiles × channel blocks × N`` programs (CUDA allows 2³¹ − 1 on axis 0 but only 65 535 on the
others), so any image size and batch launches. Arithmetic in float64 for float64 tensors and in
float32 otherwise (bf16/fp16 are loaded, upcast, and rounded once at the store). Nothing waits
for the GPU: the per-chunk counts the host merge needs are made on the device. The kernels are
decorated once, when this module is imported (in Triton's interpreter under
``TRITON_INTERPRET=1``, as on the CPU test machines).

Compiled variants: strides are specialised (a unit stride decides how loads vectorise), and so
are ``C`` and ``S``, but only as far as Triton does by default, on divisibility by 16: they bound
the masks along the unit-stride axis, and a mask known constant over 16-element groups lets the
masked loads and stores be 128-bit vectors (unknown, every element is loaded alone). Their
divisibility mostly repeats that of the strides (``S`` or ``C`` is a stride), so it adds few
variants. Group sizes, chunk sizes and counts are not specialised (``_SIZES``); chunk starts are
declared multiples of ``BLOCK_S`` instead (``tl.multiple_of``), which the launcher guarantees.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ld3m_fast.errors import InvalidArgumentError

__all__ = ["group_norm_silu_forward", "group_norm_silu_backward", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_TILE = 2048          # elements per tile
_INT32_LIMIT = 2**31 - 1
_SIZES = ["CG", "G", "s_per_prog", "P", "tiles", "cblocks"]  # not specialised on: see the module docstring


# --- shared device helpers -------------------------------------------------------------------------

@triton.jit
def _program(C, tiles, cblocks, USE_INT64: tl.constexpr, BLOCK_C: tl.constexpr):
    """(spatial tile or chunk, sample, its channels, their mask) of this program. The grid is one axis
    (``tiles × cblocks × N`` programs, tile fastest): axis 0 takes 2³¹ − 1 programs, the others 65 535."""
    pid = tl.program_id(0)
    rest = pid // tiles
    n = rest // cblocks
    if USE_INT64:
        n = n.to(tl.int64)
    c = (rest % cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    return pid % tiles, n, c, c < C


@triton.jit
def _pivot(x_ptr, n, c, cmask, CG, sN, sC, COMPUTE: tl.constexpr):
    """Each channel's group's first element: statistics are taken relative to it."""
    return tl.load(x_ptr + n * sN + (c // CG) * CG * sC, mask=cmask, other=0.0).to(COMPUTE)


@triton.jit
def _affine(x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, n, c, cmask, CG, G, sN, sC, COMPUTE: tl.constexpr):
    """Per channel: the pivot, its group's mean and rstd, and the affine weight and bias."""
    g = n * G + c // CG
    mean = tl.load(mean_ptr + g, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + g, mask=cmask, other=0.0)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
    b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(COMPUTE)
    return _pivot(x_ptr, n, c, cmask, CG, sN, sC, COMPUTE), mean, rstd, w, b


@triton.jit
def _sigmoid(u):
    e = tl.exp(-tl.abs(u))  # no overflow for either sign
    return tl.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _normalized(x_ptr, dy_ptr, offs, d_offs, mask, pivot, mean, rstd, w, b, COMPUTE: tl.constexpr):
    """``(x̂, du)``: the normalised input and ``dy · silu'(u)`` with ``u = x̂ w + b`` (masked elements: 0)."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    dy = tl.load(dy_ptr + d_offs, mask=mask, other=0.0).to(COMPUTE)
    xhat = (x - pivot[:, None] - mean[:, None]) * rstd[:, None]
    u = xhat * w[:, None] + b[:, None]
    sig = _sigmoid(u)
    return xhat, dy * sig * (1.0 + u * (1.0 - sig))


# --- the kernels -----------------------------------------------------------------------------------

@triton.jit
def _chunk(p, s_per_prog, S, BLOCK_S: tl.constexpr):
    """``[start, end)`` of reduction chunk ``p``. ``s_per_prog`` is a multiple of ``BLOCK_S`` (the launcher makes
    it so): tiles start aligned, and only the last tile of ``S`` is partial, so ``s < S`` masks every tile."""
    start = tl.multiple_of(p * s_per_prog, BLOCK_S)
    return start, tl.minimum(start + s_per_prog, S)


@triton.jit(do_not_specialize=_SIZES)
def _channel_stats(x_ptr, pmean_ptr, pm2_ptr, C, S, CG, s_per_prog, P, cblocks, sN, sC, sS,
                   COMPUTE: tl.constexpr, USE_INT64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    p, n, c, cmask = _program(C, P, cblocks, USE_INT64, BLOCK_C)
    pivot = _pivot(x_ptr, n, c, cmask, CG, sN, sC, COMPUTE)
    start, end = _chunk(p, s_per_prog, S, BLOCK_S)
    mean = tl.zeros((BLOCK_C,), COMPUTE)
    m2 = tl.zeros((BLOCK_C,), COMPUTE)
    count = tl.full((), 0.0, COMPUTE)
    for s0 in range(start, end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = cmask[:, None] & (s < S)[None, :]
        x = tl.load(x_ptr + n * sN + c[:, None] * sC + s[None, :] * sS, mask=mask, other=0.0).to(COMPUTE)
        x = tl.where(mask, x - pivot[:, None], 0.0)
        cnt = tl.minimum(end - s0, BLOCK_S).to(COMPUTE)
        bmean = tl.sum(x, axis=1) / cnt
        dev = tl.where(mask, x - bmean[:, None], 0.0)
        total = count + cnt
        delta = bmean - mean
        mean = mean + delta * (cnt / total)
        m2 = m2 + tl.sum(dev * dev, axis=1) + delta * delta * (count * cnt / total)
        count = total
    out = (n * C + c) * P + p
    tl.store(pmean_ptr + out, mean, mask=cmask)
    tl.store(pm2_ptr + out, m2, mask=cmask)


@triton.jit(do_not_specialize=_SIZES)
def _apply(x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, C, S, CG, G, tiles, cblocks, sN, sC, sS,
           COMPUTE: tl.constexpr, USE_INT64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    sb, n, c, cmask = _program(C, tiles, cblocks, USE_INT64, BLOCK_C)
    s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = cmask[:, None] & (s < S)[None, :]
    pivot, mean, rstd, w, b = _affine(x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, n, c, cmask, CG, G, sN, sC, COMPUTE)
    scale = rstd * w
    shift = b - mean * scale
    offs = n * sN + c[:, None] * sC + s[None, :] * sS
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    u = (x - pivot[:, None]) * scale[:, None] + shift[:, None]
    tl.store(y_ptr + offs, (u * _sigmoid(u)).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_SIZES)
def _grad_sums(dy_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, psum_ptr, psum_xhat_ptr,
               C, S, CG, G, s_per_prog, P, cblocks, sN, sC, sS, dN, dC, dS,
               COMPUTE: tl.constexpr, USE_INT64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    p, n, c, cmask = _program(C, P, cblocks, USE_INT64, BLOCK_C)
    pivot, mean, rstd, w, b = _affine(x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, n, c, cmask, CG, G, sN, sC, COMPUTE)
    start, end = _chunk(p, s_per_prog, S, BLOCK_S)
    acc = tl.zeros((BLOCK_C,), COMPUTE)
    acc_xhat = tl.zeros((BLOCK_C,), COMPUTE)
    for s0 in range(start, end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = cmask[:, None] & (s < S)[None, :]
        xhat, du = _normalized(x_ptr, dy_ptr, n * sN + c[:, None] * sC + s[None, :] * sS,
                               n * dN + c[:, None] * dC + s[None, :] * dS, mask, pivot, mean, rstd, w, b, COMPUTE)
        acc += tl.sum(du, axis=1)
        acc_xhat += tl.sum(du * xhat, axis=1)
    out = (n * C + c) * P + p
    tl.store(psum_ptr + out, acc, mask=cmask)
    tl.store(psum_xhat_ptr + out, acc_xhat, mask=cmask)


@triton.jit(do_not_specialize=_SIZES)
def _grad_input(dy_ptr, x_ptr, dx_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, c1_ptr, c2_ptr,
                C, S, CG, G, tiles, cblocks, sN, sC, sS, dN, dC, dS,
                COMPUTE: tl.constexpr, USE_INT64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    sb, n, c, cmask = _program(C, tiles, cblocks, USE_INT64, BLOCK_C)
    s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = cmask[:, None] & (s < S)[None, :]
    pivot, mean, rstd, w, b = _affine(x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, n, c, cmask, CG, G, sN, sC, COMPUTE)
    g = n * G + c // CG
    c1 = tl.load(c1_ptr + g, mask=cmask, other=0.0)
    c2 = tl.load(c2_ptr + g, mask=cmask, other=0.0)
    offs = n * sN + c[:, None] * sC + s[None, :] * sS
    xhat, du = _normalized(x_ptr, dy_ptr, offs, n * dN + c[:, None] * dC + s[None, :] * dS, mask, pivot, mean, rstd,
                           w, b, COMPUTE)
    dx = rstd[:, None] * (du * w[:, None] - c1[:, None] - xhat * c2[:, None])
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# --- launchers -------------------------------------------------------------------------------------

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
    if device.type != "cuda":
        parts = 1
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        parts = max(1, min(triton.cdiv(S, block_s), triton.cdiv(4 * sms, max(programs, 1))))
    s_per_prog = triton.cdiv(triton.cdiv(S, parts), block_s) * block_s
    return s_per_prog, triton.cdiv(S, s_per_prog)


def _check(x: torch.Tensor, num_groups: int) -> None:
    if x.dim() < 2:
        raise ValueError(f"x must be (N, C, *spatial), got shape {tuple(x.shape)}")
    if x.shape[1] % num_groups:
        raise ValueError(f"{x.shape[1]} channels do not split into num_groups={num_groups}")
    _compute(x.dtype)


class _Layout:
    """Sizes, tiles and grids of one call, from a non-empty packed ``x`` (N, C, *spatial) and the group count."""

    def __init__(self, x: torch.Tensor, num_groups: int):
        self.N, self.C = x.shape[0], x.shape[1]
        self.G, self.CG, self.S = num_groups, self.C // num_groups, math.prod(x.shape[2:])
        self.tl_compute, self.compute = _compute(x.dtype)
        self.sN, self.sC, self.sS = _strides(x)
        self.bc, self.bs = _tile(self.C, self.S, self.sC == 1 and self.sS != 1)
        self.cblocks, self.tiles = triton.cdiv(self.C, self.bc), triton.cdiv(self.S, self.bs)
        self.s_per_prog, self.P = _split(self.S, self.bs, self.N * self.cblocks, x.device)
        self.device = x.device
        if self.tiles * self.cblocks * self.N > _INT32_LIMIT:
            raise InvalidArgumentError(f"x of shape {tuple(x.shape)} needs more than 2**31 - 1 programs of "
                                       f"{self.bc}x{self.bs} elements; split the batch")

    def meta(self, *tensors):
        use64 = max(t.numel() for t in tensors) + 2 * _TILE > _INT32_LIMIT
        return dict(COMPUTE=self.tl_compute, USE_INT64=use64, BLOCK_C=self.bc, BLOCK_S=self.bs,
                    num_warps=8 if self.bc * self.bs >= 2048 else 4)

    @property
    def reduce_grid(self):
        return (self.P * self.cblocks * self.N,)

    @property
    def map_grid(self):
        return (self.tiles * self.cblocks * self.N,)

    def chunk_counts(self) -> torch.Tensor:
        """Elements in each spatial chunk of a reduction program, made on the device (no host sync)."""
        starts = torch.arange(self.P, dtype=self.compute, device=self.device) * self.s_per_prog
        return (self.S - starts).clamp_(max=self.s_per_prog)


def _launch(kernel, grid, args, meta, device):
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **meta)
    else:
        kernel[grid](*args, **meta)


def _group_merge(pmean, pm2, counts, L: _Layout, eps):
    """Per-group ``(mean, rstd)`` from per-channel, per-chunk means and centred sums of squares."""
    pmean = pmean.view(L.N, L.G, L.CG, -1)
    pm2 = pm2.view(L.N, L.G, L.CG, -1)
    total = L.CG * L.S
    mean = (pmean * counts).sum((2, 3)) / total
    m2 = pm2.sum((2, 3)) + (counts * (pmean - mean[..., None, None]) ** 2).sum((2, 3))
    rstd = torch.rsqrt(m2 / total + eps)
    return mean.contiguous(), rstd.contiguous()


def _packed_pair(x: torch.Tensor):
    """``x`` with packed spatial dims and an empty tensor of its layout (both contiguous if the layout would differ)."""
    x = _as_matrix(x)
    out = torch.empty_like(x)
    if out.stride() != x.stride():
        x = x.contiguous()
        out = torch.empty_like(x)
    return x, out


def group_norm_silu_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int,
                            eps: float = 1e-5):
    """``(silu(group_norm(x)), mean, rstd)`` with ``weight``/``bias`` of shape ``(C,)``.

    ``y`` has ``x``'s dtype and memory layout. ``mean`` and ``rstd`` are ``(N, G)`` in float32
    (float64 for float64 ``x``); ``mean`` is relative to each group's first element (see above):
    pass both unchanged to ``group_norm_silu_backward``.
    """
    _check(x, num_groups)
    x, y = _packed_pair(x)
    weight, bias = weight.contiguous(), bias.contiguous()
    if x.numel() == 0:
        empty = torch.empty((x.shape[0], num_groups), dtype=_compute(x.dtype)[1], device=x.device)
        return y, empty, empty.clone()
    L = _Layout(x, num_groups)
    meta = L.meta(x)
    pmean = torch.empty((L.N, L.C, L.P), dtype=L.compute, device=x.device)
    pm2 = torch.empty_like(pmean)
    _launch(_channel_stats, L.reduce_grid,
            (x, pmean, pm2, L.C, L.S, L.CG, L.s_per_prog, L.P, L.cblocks, L.sN, L.sC, L.sS), meta, x.device)
    mean, rstd = _group_merge(pmean, pm2, L.chunk_counts(), L, eps)
    _launch(_apply, L.map_grid,
            (x, y, mean, rstd, weight, bias, L.C, L.S, L.CG, L.G, L.tiles, L.cblocks, L.sN, L.sC, L.sS), meta, x.device)
    return y, mean, rstd


def group_norm_silu_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             mean: torch.Tensor, rstd: torch.Tensor, num_groups: int):
    """``(grad_x, grad_weight, grad_bias)`` of ``silu(group_norm(x))`` given the forward's ``mean``/``rstd``.

    ``grad_x`` has ``x``'s dtype and layout; ``grad_weight``/``grad_bias`` have ``weight``'s dtype.
    """
    _check(x, num_groups)
    x, dx = _packed_pair(x)
    grad_y = _as_matrix(grad_y)
    weight, bias = weight.contiguous(), bias.contiguous()
    if x.numel() == 0:
        return dx, torch.zeros_like(weight), torch.zeros_like(bias)
    L = _Layout(x, num_groups)
    dN, dC, dS = _strides(grad_y)
    meta = L.meta(x, grad_y)
    psum = torch.empty((L.N, L.C, L.P), dtype=L.compute, device=x.device)
    psum_xhat = torch.empty_like(psum)
    _launch(_grad_sums, L.reduce_grid,
            (grad_y, x, mean, rstd, weight, bias, psum, psum_xhat, L.C, L.S, L.CG, L.G, L.s_per_prog, L.P,
             L.cblocks, L.sN, L.sC, L.sS, dN, dC, dS), meta, x.device)
    sum_du, sum_du_xhat = psum.sum(-1), psum_xhat.sum(-1)                                   # (N, C)
    w = weight.to(L.compute)
    c1 = (sum_du * w).view(L.N, L.G, L.CG).sum(-1).div_(L.CG * L.S).contiguous()       # mean of w·du per group
    c2 = (sum_du_xhat * w).view(L.N, L.G, L.CG).sum(-1).div_(L.CG * L.S).contiguous()  # mean of w·du·x̂ per group
    _launch(_grad_input, L.map_grid,
            (grad_y, x, dx, mean, rstd, weight, bias, c1, c2, L.C, L.S, L.CG, L.G, L.tiles, L.cblocks, L.sN, L.sC, L.sS,
             dN, dC, dS),
            meta, x.device)
    return dx, sum_du_xhat.sum(0).to(weight.dtype), sum_du.sum(0).to(bias.dtype)
