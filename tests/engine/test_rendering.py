"""render() end to end: parity with the official-style reference, budgets applied, normalisation."""

import pytest
import torch

from tests.helpers.numerics import rel_err
from ld3m_fast import LatentModel, as_latent_model, reference, render
from ld3m_fast.engine.chain import guidance_contexts
from ld3m_fast.engine.memory import RenderPlan, predict_peak
from ld3m_fast.engine.rendering import cost_probe
from ld3m_fast.engine.schedule import DDIMSchedule
from tests.helpers.compvis_style import CompVisStyleLDM
from tests.engine.test_chain import CountingDenoiser, make_inputs


@pytest.fixture(scope="module")
def model64():
    return CompVisStyleLDM(seed=5).double()


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
    model = CompVisStyleLDM(seed=6)
    Z, c, _ = make_inputs(model, 2, torch.float32)
    images = render(model, Z, c, 5, seed=0)
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    mean, std = (0.4377, 0.4438, 0.4728), (0.229, 0.224, 0.225)
    normed = render(model, Z, c, 5, seed=0, normalize=(mean, std))
    expect = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normed, expect, atol=1e-6)


def test_memory_budget_chooses_the_chunk_and_refuses_too_small_budgets():
    tiny = CompVisStyleLDM(seed=7)
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
    schedule = DDIMSchedule.make(2, parts.alphas_cumprod, 3.0, "official", 0.0)
    uc = guidance_contexts(schedule, parts.unconditional_context(6).to(c))
    costs = cost_probe(parts, Z, c, uc[:1], schedule)()
    budget = predict_peak(6, schedule.num_steps, RenderPlan(3, 0, 1, 3), costs)  # room for chunks of 3, not of 6
    assert budget < predict_peak(6, schedule.num_steps, RenderPlan(6, 0, 1, 6), costs)
    render(model, Z, c, 2, memory_budget=budget, seed=0).sum().backward()
    sizes = {b for b, grad in counter.calls if grad and b > 2}  # b == 2 is the planner's one-image probe
    assert sizes and max(sizes) <= 6  # the budget forced chunks of at most 3 images (6 calls with guidance)


def test_a_large_budget_keeps_steps_and_matches_the_unbudgeted_gradient():
    tiny = CompVisStyleLDM(seed=7).double()
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
