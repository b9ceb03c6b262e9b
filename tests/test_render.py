"""render() end to end: parity with the official-style reference, memory budgets, normalisation."""
import functools

import pytest
import torch

from conftest import rel_err
from ld3m_fast import LatentModel, as_latent_model, reference, render
from ld3m_fast.memory import parse_memory_budget, plan_chunk_size
from ld3m_fast.tiny import TinyLDM
from test_chain import CountingDenoiser, make_inputs


@pytest.fixture(scope="module")
def model64():
    return TinyLDM(seed=5).double()


def test_engine_equals_the_official_render_then_rerender_backward(model64):
    """With the start noise fixed, the official render → image grad → chunked checkpointed re-render gives our gradient."""
    Z, c, w = make_inputs(model64, 5, torch.float64, seed=2)

    def loss_fn(images):
        return (images * w).sum() + (images ** 2).mean()
    loss_ref = reference.official_backward(model64, Z, c, loss_fn, steps=10, chunk_size=2, seed=9)
    rZ, rc = Z.grad.clone(), c.grad.clone()
    Z.grad = c.grad = None
    loss = loss_fn(render(model64, Z, c, 10, seed=9))
    loss.backward()
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-12)
    assert rel_err(Z.grad, rZ) < 1e-10 and rel_err(c.grad, rc) < 1e-10


def test_official_fresh_noise_option_changes_the_gradient(model64):
    Z, c, w = make_inputs(model64, 2, torch.float64, seed=3)
    reference.official_backward(model64, Z, c, lambda x: (x * w).sum(), steps=5, seed=1)
    fixed = Z.grad.clone()
    Z.grad = None
    reference.official_backward(model64, Z, c, lambda x: (x * w).sum(), steps=5, seed=1, fresh_noise=True)
    assert rel_err(Z.grad, fixed) > 1e-6


def test_images_are_in_unit_range_and_normalise():
    model = TinyLDM(seed=6)
    Z, c, _ = make_inputs(model, 2, torch.float32)
    images = render(model, Z, c, 5, seed=0)
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    mean, std = (0.4377, 0.4438, 0.4728), (0.229, 0.224, 0.225)
    normed = render(model, Z, c, 5, seed=0, normalize=(mean, std))
    expect = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normed, expect, atol=1e-6)


@pytest.mark.parametrize("text, value", [("16GiB", 16 * 2**30), ("512MB", 512 * 10**6), ("2e9", 2 * 10**9),
                                         (1024, 1024), ("1.5 kib", 1536)])
def test_parse_memory_budget(text, value):
    assert parse_memory_budget(text) == value


@pytest.mark.parametrize("bad", ["lots", "-1GB", 0, True])
def test_bad_memory_budget(bad):
    with pytest.raises((ValueError, TypeError), match="memory_budget"):
        parse_memory_budget(bad)


def test_plan_chunk_size():
    assert plan_chunk_size(100, budget=1000 + 2 * 10 * 7, per_image_bytes=10, fixed_bytes=1000) == 7
    assert plan_chunk_size(3, budget=10**9, per_image_bytes=10, fixed_bytes=0) == 3
    with pytest.raises(ValueError, match="too small for one image"):
        plan_chunk_size(3, budget=1019, per_image_bytes=10, fixed_bytes=1000)


def test_memory_budget_chooses_the_chunk_and_refuses_too_small_budgets():
    tiny = TinyLDM(seed=7)
    parts = as_latent_model(tiny)
    counter = CountingDenoiser(parts.denoiser)
    model = LatentModel(counter, parts.quantize, parts.decode, parts.unconditional, latent_channels=3)
    Z, c, _ = make_inputs(tiny, 6, torch.float32)
    render(model, Z, c, 2, memory_budget="1GiB", seed=0).sum().backward()
    # the planner's one-image probe (2 = doubled for guidance), then everything in one chunk of 6
    assert {b for b, grad in counter.calls if grad} == {2, 12}
    counter.calls.clear()
    with pytest.raises(ValueError, match="memory_budget=.* too small for one image"):
        render(model, Z, c, 2, memory_budget=10_000, seed=0)
    budget = 5_000_000  # about 2 MiB per image in a chunk here
    render(model, Z, c, 2, memory_budget=budget, seed=0).sum().backward()
    sizes = {b for b, grad in counter.calls if grad and b > 2}  # b == 2 is the planner's one-image probe
    assert sizes and max(sizes) < 12  # the budget forced smaller chunks


def test_plan_rendering_keeps_steps_only_when_every_image_fits_one_chunk():
    from ld3m_fast.memory import plan_rendering
    # 4 images, 10 bytes per image and call, 100 fixed: one chunk needs 100 + 2*4*10 = 180
    plan = functools.partial(plan_rendering, 4, 10, unet_bytes=10, decoder_bytes=5, latent_bytes=0, fixed_bytes=100)
    assert plan(budget=179) == (3, 0, 1)
    assert plan(budget=180 + 39) == (4, 0, 1)
    assert plan(budget=180 + 80) == (4, 2, 1)
    assert plan(budget=10**6) == (4, 10, 1)


def test_plan_rendering_thins_the_latents_only_when_one_image_does_not_fit_beside_them():
    from ld3m_fast.memory import plan_rendering, stored_latents
    # 100 steps of 10-byte latents: 1000 bytes; one image in a chunk needs 2*10 more
    assert plan_rendering(4, 100, budget=1020, unet_bytes=10, decoder_bytes=5, latent_bytes=10, fixed_bytes=0) == (1, 0, 1)
    # 1019 bytes: keep every 10th latent, 10 kept + one segment of 10 = 200 bytes, leaving room for all 4 images
    assert stored_latents(100, 10) == 20
    assert plan_rendering(4, 100, budget=1019, unet_bytes=10, decoder_bytes=5, latent_bytes=10, fixed_bytes=0) == (4, 0, 10)
    with pytest.raises(ValueError, match="too small for one image"):
        plan_rendering(4, 100, budget=219, unet_bytes=10, decoder_bytes=5, latent_bytes=10, fixed_bytes=0)


def test_a_large_budget_keeps_steps_and_matches_the_unbudgeted_gradient():
    tiny = TinyLDM(seed=7).double()
    parts = as_latent_model(tiny)
    counter = CountingDenoiser(parts.denoiser)
    model = LatentModel(counter, parts.quantize, parts.decode, parts.unconditional, parts.alphas_cumprod, latent_channels=3)
    Z, c, w = make_inputs(tiny, 3, torch.float64)
    rendered = render(model, Z, c, 4, memory_budget="4GiB", seed=0)
    g_budget = torch.autograd.grad((rendered * w).sum(), (Z, c))
    calls = [b for b, grad in counter.calls if grad]
    assert calls.count(6) == 4  # all 4 steps kept (one guided call of 3 images each), none recomputed
    g_plain = torch.autograd.grad((render(tiny, Z, c, 4, seed=0) * w).sum(), (Z, c))
    assert all(rel_err(a, b) < 1e-10 for a, b in zip(g_budget, g_plain))
