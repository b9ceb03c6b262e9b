"""The fused GroupNorm+SiLU kernels (forward and backward) against F.silu(F.group_norm(...)) (docs/design.md §10).

On CPU-only machines conftest sets TRITON_INTERPRET=1, so the Triton kernels run in the interpreter.
"""
import warnings
import zlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.helpers.numerics import rel_err

pytest.importorskip("triton")
from ld3m_fast.kernels.groupnorm_silu import group_norm_silu_backward, group_norm_silu_forward  # noqa: E402
from ld3m_fast.models import fused_norm  # noqa: E402
from ld3m_fast.models.fused_norm import GroupNormSiLU, group_norm_silu  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}
SHAPES = [  # (shape, groups, channels_last)
    ((2, 12, 5, 7), 4, False),     # odd spatial size
    ((3, 6, 9, 1), 3, False),      # a unit spatial dim
    ((1, 8, 33), 2, False),        # 1-D spatial
    ((2, 16, 6, 6), 8, True),      # channels-last layout
    ((1, 6, 41, 43), 3, False),    # several spatial tiles per program (Chan's merge)
    ((2, 96, 5, 3), 32, True),     # more channels than one channel tile (channels-last)
]


def fresh(shape, dtype, gen, offset=0.0, scale=1.0):
    t = torch.randn(shape, generator=gen, dtype=torch.float64) * scale + offset
    return t.to(DEVICE, dtype)


def reference(x, w, b, groups, dy, eps=1e-5):
    """Float64 autograd through the two PyTorch ops."""
    xr, wr, br = (t.detach().double().cpu().requires_grad_(True) for t in (x, w, b))
    y = F.silu(F.group_norm(xr, groups, wr, br, eps))
    y.backward(dy.double().cpu())
    return y.detach(), xr.grad, wr.grad, br.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,groups,channels_last", SHAPES)
def test_kernels_match_torch_forward_and_backward(dtype, shape, groups, channels_last, poisoned_memory):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((dtype, shape, channels_last)).encode()))
    x = fresh(shape, dtype, gen, offset=0.7, scale=2.0)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = fresh(shape[1], dtype, gen), fresh(shape[1], dtype, gen)
    dy = fresh(shape, dtype, gen)
    y, mean, rstd = group_norm_silu_forward(x, w, b, groups, 1e-5)
    dx, dw, db = group_norm_silu_backward(dy, x, w, b, mean, rstd, groups)
    ry, rdx, rdw, rdb = reference(x, w, b, groups, dy)
    tol = TOL[dtype]
    assert y.dtype == dtype and y.shape == x.shape and y.stride() == x.stride()
    assert dx.dtype == dtype and dx.stride() == x.stride() and dw.dtype == dtype
    for out, ref in ((y, ry), (dx, rdx), (dw, rdw), (db, rdb)):
        assert rel_err(out, ref) < tol, rel_err(out, ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_statistics_are_stable_for_large_offsets(dtype):
    """Mean 1000, std 0.01: statistics of x − (group's first element) keep full precision.

    (PyTorch's own float32 group_norm is off by about 2e-3 here; the float64 reference itself only
    agrees with exact arithmetic to about 1e-11.)"""
    gen = torch.Generator().manual_seed(3)
    x = fresh((2, 8, 37, 29), dtype, gen, offset=1000.0, scale=0.01)
    w, b, dy = fresh(8, dtype, gen), fresh(8, dtype, gen), fresh((2, 8, 37, 29), dtype, gen)
    y, mean, rstd = group_norm_silu_forward(x, w, b, 4, 1e-6)
    dx, dw, db = group_norm_silu_backward(dy, x, w, b, mean, rstd, 4)
    ry, rdx, rdw, rdb = reference(x, w, b, 4, dy, eps=1e-6)
    tol = {torch.float64: 1e-9, torch.float32: 1e-5}[dtype]
    assert rel_err(y, ry) < tol and rel_err(dx, rdx) < tol and rel_err(dw, rdw) < tol and rel_err(db, rdb) < tol


def test_mixed_dtypes_under_autocast_style_use():
    """bf16 activations with float32 affine parameters (what autocast produces): grads keep the parameters' dtype."""
    gen = torch.Generator().manual_seed(4)
    x = fresh((2, 8, 6, 5), torch.bfloat16, gen)
    norm = nn.GroupNorm(4, 8).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(fresh(8, torch.float32, gen))
        norm.bias.copy_(fresh(8, torch.float32, gen))
    x.requires_grad_(True)
    y = group_norm_silu(x, norm)
    dy = fresh(x.shape, torch.bfloat16, gen)
    y.backward(dy)
    ry, rdx, rdw, rdb = reference(x, norm.weight, norm.bias, 4, dy)
    assert y.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32
    assert rel_err(y, ry) < 1e-2 and rel_err(x.grad, rdx) < 1e-2
    assert rel_err(norm.weight.grad, rdw) < 1e-2 and rel_err(norm.bias.grad, rdb) < 1e-2


def test_autograd_function_and_module_match_plain_module():
    gen = torch.Generator().manual_seed(5)
    plain = nn.GroupNorm(3, 9, eps=1e-6).double().to(DEVICE)
    with torch.no_grad():
        plain.weight.copy_(fresh(9, torch.float64, gen))
        plain.bias.copy_(fresh(9, torch.float64, gen))
    fused = GroupNormSiLU(3, 9, eps=1e-6).double().to(DEVICE)
    fused.load_state_dict(plain.state_dict())
    x = fresh((2, 9, 7, 3), torch.float64, gen).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    dy = fresh((2, 9, 7, 3), torch.float64, gen)
    F.silu(plain(x)).backward(dy)
    fused(x2).backward(dy)
    assert rel_err(x2.grad, x.grad) < 1e-12
    assert rel_err(fused.weight.grad, plain.weight.grad) < 1e-12 and rel_err(fused.bias.grad, plain.bias.grad) < 1e-12
    assert torch.autograd.gradcheck(lambda a: group_norm_silu(a, fused), (x2.detach()[:1, :, :3, :2].requires_grad_(),))


def test_unsupported_inputs_fall_back_with_one_warning(monkeypatch):
    """A CPU tensor without the interpreter (or an int dtype, or no affine) runs the PyTorch reference; one line."""
    from ld3m_fast import kernels
    monkeypatch.setattr(kernels, "interpreting", lambda: False)
    monkeypatch.setattr(fused_norm, "_warned", set())
    norm = nn.GroupNorm(2, 4).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = group_norm_silu(x, norm)
        y2 = group_norm_silu(x, norm)
    assert torch.equal(y1, F.silu(norm(x))) and torch.equal(y1, y2)
    assert len(caught) == 1 and "falls back to PyTorch" in str(caught[0].message) and "\n" not in str(caught[0].message)
    assert fused_norm.kernel_unsupported_reason(x.to(torch.int32), norm.weight, norm.bias) is not None
    assert fused_norm.kernel_unsupported_reason(x, None, None) is not None


def test_rejects_channels_not_divisible_by_groups():
    x = torch.randn(1, 6, 2, 2, device=DEVICE)
    with pytest.raises(ValueError, match="num_groups"):
        group_norm_silu_forward(x, torch.ones(6, device=DEVICE), torch.zeros(6, device=DEVICE), 4)
