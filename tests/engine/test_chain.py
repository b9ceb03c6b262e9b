"""The chain's gradients equal plain autograd through the unrolled chain (≤1e-10 in float64, ≤1e-5 in float32;
docs/design.md §10)."""
import pytest
import torch

from tests.helpers.numerics import rel_err
from ld3m_fast import LatentModel, as_denoiser, as_latent_model, reference, render
from ld3m_fast.engine.rendering import make_generator, start_noise
from tests.helpers.compvis_style import CompVisStyleLDM


def make_inputs(model, n, dtype, seed=0, size=8):
    gen = torch.Generator().manual_seed(seed)
    Z = (torch.randn(n, 3, size, size, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_(True)
    labels = torch.arange(n) % model.n_classes
    c = model.get_learned_conditioning(labels).detach().to(dtype).clone()
    c = (c + 0.1 * torch.randn(c.shape, generator=gen, dtype=torch.float64).to(dtype)).requires_grad_(True)
    weights = torch.randn(n, 3, 4 * size, 4 * size, generator=gen, dtype=torch.float64).to(dtype)
    return Z, c, weights


def grads(images, weights, *leaves):
    return torch.autograd.grad((images * weights).sum(), leaves)


def compare_with_unrolled(model, n, dtype, steps, skip, guidance, chunk_size, tol, eta=0.0, seed=11):
    Z, c, w = make_inputs(model, n, dtype, seed=seed)
    images = render(model, Z, c, steps, guidance=guidance, skip=skip, seed=seed, chunk_size=chunk_size, eta=eta)
    gZ, gc = grads(images, w, Z, c)
    gen = make_generator(seed)
    eps = start_noise(Z, gen)
    step_noise = [start_noise(Z, gen) for _ in range(100)] if eta else None
    ref = reference.render_unrolled(model, Z, c, steps, guidance, skip, noise=eps, step_noise=step_noise, eta=eta)
    rZ, rc = grads(ref, w, Z, c)
    assert rel_err(images, ref) < tol
    assert rel_err(gZ, rZ) < tol and rel_err(gc, rc) < tol
    assert rZ.abs().max() > 0 and rc.abs().max() > 0


@pytest.fixture(scope="module")
def model64():
    return CompVisStyleLDM(seed=1).double()


@pytest.fixture(scope="module")
def model32():
    return CompVisStyleLDM(seed=2)


@pytest.mark.parametrize("skip", ["official", "paper", "none"])
@pytest.mark.parametrize("chunk_size", [5, 2])
def test_float64_gradients_match_unrolled_autograd(model64, skip, chunk_size):
    compare_with_unrolled(model64, 5, torch.float64, steps=10, skip=skip, guidance=3.0, chunk_size=chunk_size, tol=1e-10)


def test_float64_without_guidance_and_odd_step_count(model64):
    compare_with_unrolled(model64, 3, torch.float64, steps=7, skip="official", guidance=1.0, chunk_size=2, tol=1e-10)


def test_float64_with_ddim_noise(model64):
    compare_with_unrolled(model64, 3, torch.float64, steps=5, skip="official", guidance=3.0, chunk_size=3, tol=1e-10, eta=0.7)


@pytest.mark.parametrize("skip", ["official", "paper"])
def test_float32_gradients_match_unrolled_autograd(model32, skip):
    compare_with_unrolled(model32, 4, torch.float32, steps=10, skip=skip, guidance=3.0, chunk_size=3, tol=1e-5)


def test_diffusers_unet_fits_as_the_denoiser():
    diffusers = pytest.importorskip("diffusers")
    tiny = CompVisStyleLDM(seed=3).double()
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).double().requires_grad_(False)
    parts = as_latent_model(tiny)
    model = LatentModel(as_denoiser(unet), parts.quantize, parts.decode, parts.unconditional, latent_channels=3)
    Z, c, w = make_inputs(tiny, 3, torch.float64, seed=4)
    images = render(model, Z, c, 5, seed=4, chunk_size=2)
    gZ, gc = grads(images, w, Z, c)
    ref = reference.render_unrolled(model, Z, c, 5, noise=start_noise(Z, make_generator(4)))
    rZ, rc = grads(ref, w, Z, c)
    assert rel_err(images, ref) < 1e-10 and rel_err(gZ, rZ) < 1e-10 and rel_err(gc, rc) < 1e-10


class CountingDenoiser:
    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, []

    def __call__(self, z, t, context):
        self.calls.append((z.shape[0], torch.is_grad_enabled()))
        return self.denoiser(z, t, context)


def test_each_step_costs_one_forward_and_one_recomputed_call_per_chunk(model32):
    parts = as_latent_model(model32)
    counter = CountingDenoiser(parts.denoiser)
    model = LatentModel(counter, parts.quantize, parts.decode, parts.unconditional, latent_channels=3)
    Z, c, w = make_inputs(model32, 5, torch.float32)
    images = render(model, Z, c, 10, chunk_size=2, seed=0)
    forward_calls = list(counter.calls)
    assert forward_calls == [(10, False)] * 10  # no-grad forward: all images at once, doubled for guidance
    grads(images, w, Z, c)
    backward_calls = counter.calls[len(forward_calls):]
    assert sorted(backward_calls) == sorted([(4, True), (4, True), (2, True)] * 10)


def test_graph_kept_by_render_does_not_grow_with_steps(model32):
    """Autograd keeps no denoiser activations between forward and backward: saved bytes are the same at S=2 and S=20."""
    saved = {}
    for steps in (2, 20):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        Z, c, _ = make_inputs(model32, 4, torch.float32)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            render(model32, Z, c, steps, seed=0)
        saved[steps] = total[0]
    assert saved[2] == saved[20] > 0


def test_fixed_seed_is_deterministic_and_seeds_differ(model32):
    Z, c, _ = make_inputs(model32, 3, torch.float32)
    a = render(model32, Z, c, 5, seed=1)
    b = render(model32, Z, c, 5, seed=1)
    d = render(model32, Z, c, 5, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, d)


@pytest.mark.parametrize("keep", [1, 4, 10])
def test_kept_steps_give_the_same_gradients_with_fewer_denoiser_calls(model64, keep):
    parts = as_latent_model(model64)
    counter = CountingDenoiser(parts.denoiser)
    model = LatentModel(counter, parts.quantize, parts.decode, parts.unconditional, parts.alphas_cumprod, latent_channels=3)
    Z, c, w = make_inputs(model64, 5, torch.float64, seed=6)
    images = render(model, Z, c, 10, seed=3, chunk_size=2, keep_steps=keep)
    forward_grad_calls = sum(grad for _, grad in counter.calls)
    assert forward_grad_calls == keep * 3  # kept steps run with gradients in forward, in backward chunks (2, 2, 1)
    gZ, gc = grads(images, w, Z, c)
    backward_calls = sum(grad for _, grad in counter.calls) - forward_grad_calls
    assert backward_calls == (10 - keep) * 3  # only the other steps are recomputed
    ref = reference.render_unrolled(model64, Z, c, 10, noise=start_noise(Z, make_generator(3)))
    rZ, rc = grads(ref, w, Z, c)
    assert rel_err(gZ, rZ) < 1e-10 and rel_err(gc, rc) < 1e-10


def test_kept_steps_without_gradients_keep_nothing(model32):
    parts = as_latent_model(model32)
    counter = CountingDenoiser(parts.denoiser)
    model = LatentModel(counter, parts.quantize, parts.decode, parts.unconditional, latent_channels=3)
    Z, c, _ = make_inputs(model32, 3, torch.float32)
    with torch.no_grad():
        render(model, Z, c, 5, seed=0, keep_steps=5)
    assert not any(grad for _, grad in counter.calls)


@pytest.mark.parametrize("stride,skip,keep", [(3, "official", 0), (4, "paper", 0), (10, "none", 0), (20, "official", 0),
                                              (3, "official", 2)])
def test_latent_stride_regenerates_the_other_latents_and_gives_the_same_gradients(model64, stride, skip, keep):
    parts = as_latent_model(model64)
    counter = CountingDenoiser(parts.denoiser)
    model = LatentModel(counter, parts.quantize, parts.decode, parts.unconditional, parts.alphas_cumprod, latent_channels=3)
    Z, c, w = make_inputs(model64, 5, torch.float64, seed=6)
    images = render(model, Z, c, 10, seed=3, skip=skip, chunk_size=2, keep_steps=keep, latent_stride=stride)
    n_forward = len(counter.calls)
    gZ, gc = grads(images, w, Z, c)
    backward = counter.calls[n_forward:]
    stored = -(-10 // stride)
    regenerated = sorted(b for b, grad in backward if not grad)
    assert regenerated == sorted([4, 4, 2] * (10 - stored))  # per chunk, every step but the stored ones, no grad
    assert sum(grad for _, grad in backward) == 3 * (10 - keep)
    ref = reference.render_unrolled(model64, Z, c, 10, skip=skip, noise=start_noise(Z, make_generator(3)))
    rZ, rc = grads(ref, w, Z, c)
    assert rel_err(gZ, rZ) < 1e-10 and rel_err(gc, rc) < 1e-10


def test_latent_stride_needs_eta_zero_and_a_positive_int(model32):
    Z, c, _ = make_inputs(model32, 2, torch.float32)
    with pytest.raises(ValueError, match="latent_stride=2 needs eta=0"):
        render(model32, Z, c, 5, seed=0, eta=0.5, latent_stride=2)
    with pytest.raises(ValueError, match="latent_stride=0 must be an int >= 1"):
        render(model32, Z, c, 5, seed=0, latent_stride=0)


def test_memory_budget_applies_the_planned_latent_stride(model64, monkeypatch):
    import sys

    from ld3m_fast.engine.memory import RenderPlan
    monkeypatch.setattr(sys.modules["ld3m_fast.engine.memory"], "plan_rendering", lambda *a, **k: RenderPlan(2, 0, 4, 4))
    parts = as_latent_model(model64)
    counter = CountingDenoiser(parts.denoiser)
    model = LatentModel(counter, parts.quantize, parts.decode, parts.unconditional, parts.alphas_cumprod, latent_channels=3)
    Z, c, w = make_inputs(model64, 4, torch.float64, seed=2)
    images = render(model, Z, c, 10, seed=1, memory_budget="1GiB")
    n_forward = len(counter.calls)
    gZ, gc = grads(images, w, Z, c)
    assert sorted(b for b, grad in counter.calls[n_forward:] if not grad) == [4] * (2 * 7)  # 2 chunks × 7 regenerated
    with pytest.raises(ValueError, match="latent_stride=4 needs eta=0"):
        render(model, Z, c, 10, seed=1, memory_budget="1GiB", eta=0.3)
