"""Every fused-step backend agrees with a float64 autograd reference (docs/design.md §4, §10)."""
import zlib

import pytest
import torch

from tests.helpers.numerics import rel_err
from ld3m_fast.engine.fused_step import StepCoefficients, available_backends, get_backend
from ld3m_fast.engine.fused_step import denoise_step

BACKENDS = [b for b in ("torch", "triton", "cpp", "cuda") if b in available_backends()]
DEVICE = {"torch": "cpu", "triton": "cuda" if torch.cuda.is_available() else "cpu", "cpp": "cpu", "cuda": "cuda"}
TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}
VARIANTS = {
    "official": dict(blend_x0=0.37, blend_out=0.0),
    "paper": dict(blend_x0=0.0, blend_out=0.6),
    "none": dict(blend_x0=0.0, blend_out=0.0),
}


def coefficients(variant, sigma=0.0, guidance=3.0):
    a_t, a_prev = 0.31, 0.57
    return StepCoefficients(sqrt_alpha=a_t ** 0.5, sqrt_one_minus_alpha=(1 - a_t) ** 0.5, sqrt_alpha_prev=a_prev ** 0.5,
                            direction=(1 - a_prev - sigma ** 2) ** 0.5, sigma=sigma, guidance=guidance, **VARIANTS[variant])


def step_by_hand(z, eps_u, eps_c, anchor, noise, cf):
    """docs/design.md §4 written out, differentiated by autograd: independent of every backend."""
    eps = eps_u + cf.guidance * (eps_c - eps_u)
    x0 = (z - cf.sqrt_one_minus_alpha * eps) / cf.sqrt_alpha
    x0 = (1 - cf.blend_x0) * x0 + cf.blend_x0 * anchor
    z_prev = (1 - cf.blend_out) * (cf.sqrt_alpha_prev * x0 + cf.direction * eps) + cf.blend_out * anchor
    if noise is not None:
        z_prev = z_prev + cf.sigma * noise
    return z_prev, x0


def fresh(shape, dtype, device, contiguous, gen):
    """Fresh random tensor; non-contiguous ones are transposed views of a larger buffer."""
    if contiguous:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
    big = torch.randn((shape[0], shape[1], shape[3], shape[2] + 3), generator=gen, dtype=torch.float64)
    view = big.to(device, dtype)[..., :shape[2]].transpose(2, 3)
    assert not view.is_contiguous() and view.shape == shape
    return view


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("with_noise_and_x0", [False, True])
def test_backend_matches_float64_autograd(backend, dtype, variant, contiguous, with_noise_and_x0, poisoned_memory):
    if dtype is torch.bfloat16 and DEVICE[backend] == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    gen = torch.Generator().manual_seed(zlib.crc32(repr((backend, dtype, variant, contiguous, with_noise_and_x0)).encode()))
    shape = (2, 3, 13, 7)  # 546 elements: not a multiple of any block size
    device = DEVICE[backend]
    z, eps_u, eps_c, anchor, noise, G, H = (fresh(shape, dtype, device, contiguous, gen) for _ in range(7))
    cf = coefficients(variant, sigma=0.3 if with_noise_and_x0 else 0.0)
    anchor_in = None if variant == "none" else anchor
    noise_in = noise if with_noise_and_x0 else None

    inputs = [t.detach().requires_grad_(True) for t in (z, eps_u, eps_c, anchor)]
    out = denoise_step(inputs[0], inputs[1], inputs[2], None if anchor_in is None else inputs[3], cf,
                       noise=noise_in, return_x0=with_noise_and_x0, backend=backend)
    z_prev, x0 = out if with_noise_and_x0 else (out, None)
    loss = (z_prev * G).sum() + ((x0 * H).sum() if x0 is not None else 0)
    loss.backward()

    ref_in = [t.detach().double().cpu().requires_grad_(True) for t in (z, eps_u, eps_c, anchor)]
    r_z_prev, r_x0 = step_by_hand(*ref_in, None if noise_in is None else noise.double().cpu(), cf)
    r_loss = (r_z_prev * G.double().cpu()).sum() + ((r_x0 * H.double().cpu()).sum() if x0 is not None else 0)
    r_loss.backward()

    tol = TOL[dtype]
    assert z_prev.dtype == dtype and z_prev.device.type == device and z_prev.shape == shape
    assert rel_err(z_prev, r_z_prev) < tol
    if x0 is not None:
        assert rel_err(x0, r_x0) < tol
    names = ("z", "eps_u", "eps_c", "anchor")
    for name, got, ref in zip(names, inputs, ref_in):
        if name == "anchor" and anchor_in is None:
            assert got.grad is None
            continue
        assert got.grad is not None and got.grad.dtype == dtype, name
        assert rel_err(got.grad, ref.grad) < tol, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_raw_contract_pair_layout(backend, poisoned_memory):
    """``backward`` returns the eps gradient as one (2, *shape) buffer: [uncond; cond]."""
    impl = get_backend(backend)
    gen = torch.Generator().manual_seed(7)
    G = torch.randn(3, 3, 5, 5, generator=gen, dtype=torch.float64).to(DEVICE[backend])
    cf = coefficients("official", guidance=2.5)
    g_z, g_eps, g_anchor = impl.backward(G, None, cf)
    assert g_eps.shape == (2, *G.shape) and g_eps.is_contiguous()
    assert rel_err(g_eps[0] * cf.guidance, g_eps[1] * (1 - cf.guidance)) < 1e-12
    doubled = g_eps.view(6, 3, 5, 5)
    assert torch.equal(doubled[:3], g_eps[0]) and torch.equal(doubled[3:], g_eps[1])


def test_guidance_one_with_the_same_eps_twice_is_exactly_unguided():
    gen = torch.Generator().manual_seed(3)
    z, eps, anchor = (torch.randn(2, 3, 4, 4, generator=gen) for _ in range(3))
    cf = coefficients("official", guidance=1.0)
    out = denoise_step(z, eps, eps, anchor, cf, backend="torch")
    r, _ = step_by_hand(z, eps, eps, anchor, None, cf)
    assert torch.allclose(out, r, rtol=1e-6, atol=1e-6)


def test_mismatched_step_tensors_are_refused():
    cf = coefficients("none")
    z = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="eps_c"):
        denoise_step(z, z, torch.randn(2, 3, 4, 5), None, cf)
    with pytest.raises(ValueError, match="anchor is None"):
        denoise_step(z, z, z, None, coefficients("official"))
    with pytest.raises(ValueError, match="needs a noise"):
        denoise_step(z, z, z, None, coefficients("none", sigma=0.2))


def test_unknown_or_unavailable_backend_is_a_clear_error():
    z = torch.randn(1, 3, 2, 2)
    with pytest.raises(ValueError, match="backend='fast'"):
        denoise_step(z, z, z, None, coefficients("none"), backend="fast")
    if "cuda" not in available_backends():
        with pytest.raises(ValueError, match="backend='cuda' cannot run on cpu tensors"):
            denoise_step(z, z, z, None, coefficients("none"), backend="cuda")
