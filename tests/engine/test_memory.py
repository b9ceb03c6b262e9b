"""The memory model: budgets parsed; what a call allocates measured (weights excluded, per call vs per image) and
checked against the allocator; plans chosen within the budget; the predicted peak of a rendering checked against
the allocator's peak."""
import functools

import pytest
import torch
from torch import nn

from bench.measure import peak_memory
from ld3m_fast import LatentModel, as_latent_model, render
from ld3m_fast.engine.memory import (CallCost, RenderCosts, RenderPlan, measure_call, parse_memory_budget,
                                     plan_rendering, predict_peak, resolve_plan, saved_activation_bytes,
                                     stored_latents)
from tests.helpers.compvis_style import CompVisStyleLDM


@pytest.mark.parametrize("text, value", [("16GiB", 16 * 2**30), ("512MB", 512 * 10**6), ("2e9", 2 * 10**9),
                                         (1024, 1024), ("1.5 kib", 1536)])
def test_parse_memory_budget(text, value):
    assert parse_memory_budget(text) == value


@pytest.mark.parametrize("bad", ["lots", "-1GB", 0, True])
def test_bad_memory_budget(bad):
    with pytest.raises((ValueError, TypeError), match="memory_budget"):
        parse_memory_budget(bad)


# ------------------------------------------------------------------------------------------ measuring one call

def frozen(module: nn.Module) -> nn.Module:
    return module.requires_grad_(False).eval()


def test_saved_activations_exclude_frozen_weights_buffers_and_their_views():
    conv = frozen(nn.Conv2d(256, 256, 3, padding=1))
    x = torch.randn(1, 256, 8, 8, requires_grad=True)
    act = x.numel() * 4
    saved, out = saved_activation_bytes(lambda x: conv(x * 2), x)
    assert saved == act  # the input of conv; its 2.36 MB weight is not an activation (it was counted before)
    assert torch.equal(out, conv(x * 2))
    # a view of the weight, a transposed weight (linear), a buffer: all existed before the call
    lin = frozen(nn.Linear(64, 512))
    lin.register_buffer("scale", torch.randn(512))
    y = torch.randn(3, 64, requires_grad=True)
    saved, _ = saved_activation_bytes(lambda y: torch.tanh(lin(y * 2) * lin.scale), y)
    assert saved == 3 * 512 * 4  # the tanh's output; autograd also saves the transposed weight (for the linear's
    # input gradient) and the buffer (for the product's), which are not counted
    saved, _ = saved_activation_bytes(lambda x: nn.functional.conv2d(x * 2, conv.weight[:, :128], padding=1),
                                      torch.randn(1, 128, 8, 8, requires_grad=True))
    assert saved == 128 * 64 * 4


def test_casts_of_weights_under_autocast_count_once_per_call():
    conv = frozen(nn.Conv2d(64, 64, 3, padding=1))
    x = torch.randn(2, 64, 16, 16, requires_grad=True)

    def call(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return conv(x * 2)
    saved, _ = saved_activation_bytes(call, x)
    assert saved == x.numel() * 2  # the bf16 cast of x*2, the call's only activation
    cost, _ = measure_call(call, x)  # alive until backward: the bf16 copies of the weight (once per call), of x*2
    assert cost.saved == (conv.weight.numel() * 2, x.numel() * 2 + x.numel() * 2)  # and the bf16 output


class SmallConvNet(nn.Module):
    """Convolutions large enough for oneDNN, a 3-channel input convolution (the plain kernel), attention."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(3, 64, 3, padding=1)
        self.body = nn.Sequential(nn.GroupNorm(8, 64), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU())
        self.attn = nn.MultiheadAttention(64, 1, batch_first=True)
        self.out = nn.Conv2d(64, 3, 3, padding=1)

    def forward(self, z):
        h = self.body(self.inp(z))
        seq = h.flatten(2).transpose(1, 2)
        h = h + self.attn(seq, seq, seq, need_weights=False)[0].transpose(1, 2).reshape(h.shape)
        return self.out(h)


@pytest.mark.parametrize("images", [1, 3])
def test_measured_peaks_match_the_allocator(images):
    """The traced peaks of a call on one image — exact for one image, extrapolated to more — against torch's CPU
    allocator trace (the input convolution runs the plain kernel for one image, oneDNN for more)."""
    net = frozen(SmallConvNet())
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(1, 3, 32, 32, generator=gen, requires_grad=True)
    cost, _ = measure_call(net, z1)
    z = torch.randn(images, 3, 32, 32, generator=gen, requires_grad=True)

    def with_grad():
        out = net(z)
        torch.autograd.grad(out, z, torch.ones_like(out))

    def without_grad():
        with torch.no_grad():
            net(z)
    for fn, grad in ((with_grad, True), (without_grad, False)):
        measured, _ = peak_memory(fn, "cpu")
        assert cost.peak(images, grad) == pytest.approx(measured, rel=0.01)


# ------------------------------------------------------------------------------------------ planning

COSTS = RenderCosts(CallCost.linear(grad_peak_per_image=10, saved_per_image=8, no_grad_per_image=2),
                    CallCost.linear(grad_peak_per_image=5, saved_per_image=4, no_grad_per_image=1),
                    latent_bytes=0, image_bytes=0)


def test_plan_takes_the_largest_chunk_that_fits_and_reports_its_peak():
    assert plan_rendering(100, 10, budget=70, costs=COSTS) == (7, 0, 1, 35, 70)  # 7 images × 10; no-grad 35 × 2
    assert plan_rendering(100, 10, budget=79, costs=COSTS)[:4] == (7, 0, 1, 39)
    with pytest.raises(ValueError, match="memory_budget=.*too small for one image"):
        plan_rendering(3, 10, budget=9, costs=COSTS)


def test_plan_keeps_steps_only_when_every_image_fits_one_chunk():
    plan = functools.partial(plan_rendering, 4, 10, costs=COSTS)
    assert plan(budget=39) == (3, 0, 1, 4, 30)
    # k kept steps: k × 4 × 8 bytes of graphs, alive through the recomputed decode of all 4 images (4 × 5)
    assert plan(budget=40 + 11) == (4, 0, 1, 4, 40)  # one kept step needs 52
    assert plan(budget=2 * 32 + 20) == (4, 2, 1, 4, 84)
    assert plan(budget=10**6) == (4, 10, 1, 4, 10 * 32 + 20)


def test_plan_thins_the_latents_only_when_one_image_does_not_fit_beside_them():
    costs = COSTS._replace(latent_bytes=10)
    # 100 steps of 10-byte latents for 4 images: 4000 bytes, plus 8 more latents per image, plus one image's 10
    one_image_all_latents = predict_peak(4, 100, RenderPlan(1, 0, 1, 1), costs)
    assert one_image_all_latents == 4 * 100 * 10 + 8 * 4 * 10 + 10
    assert plan_rendering(4, 100, one_image_all_latents, costs)[:4] == (1, 0, 1, 4)  # no-grad calls: 4 × 2 fit
    # one byte less: every 10th latent (10 + a regenerated segment of 10 for the chunk) leaves room for all 4 images
    assert stored_latents(100, 10) == 20
    thinned = plan_rendering(4, 100, one_image_all_latents - 1, costs)
    assert thinned[:4] == (4, 0, 10, 4) and thinned.predicted_bytes < one_image_all_latents
    with pytest.raises(ValueError, match="with eta > 0 they cannot be regenerated"):
        plan_rendering(4, 100, one_image_all_latents - 1, costs, allow_thinning=False)
    with pytest.raises(ValueError, match="too small for one image.*one step in 10"):
        plan_rendering(4, 100, 100, costs)


def test_per_call_costs_favour_larger_chunks():
    """A weight copy paid per call (autocast) is paid once per kept call and once in each phase."""
    den = CallCost(((100, 10),), (100, 8), ((0, 2),))
    costs = RenderCosts(den, CallCost.linear(5, 4, 1), latent_bytes=0, image_bytes=0)
    assert predict_peak(4, 10, RenderPlan(4, 0, 1, 4), costs) == 140
    assert predict_peak(4, 10, RenderPlan(2, 0, 1, 4), costs) == 120
    # one kept step: two calls' graphs (2 × 100 + 4 × 8), alive through the recomputed decode (2 × 5)
    assert predict_peak(4, 10, RenderPlan(2, 1, 1, 4), costs) == 2 * 100 + 4 * 8 + 2 * 5
    assert plan_rendering(4, 10, 139, costs)[:2] == (3, 0)


def test_resolve_plan_predicts_only_what_it_measured():
    measured = []

    def measure():
        measured.append(1)
        return COSTS
    assert resolve_plan(4, 10, None, measure=measure) == (4, 0, 1, 4, None) and not measured
    assert resolve_plan(4, 10, 1000, chunk_size=2, measure=measure) == (2, 0, 1, 4, None) and not measured
    planned = resolve_plan(4, 10, 45, measure=measure)
    assert planned == (4, 0, 1, 4, 40) and measured
    by_hand = resolve_plan(4, 10, 45, keep_steps=3, measure=measure)  # the knob overrides; the prediction follows
    assert by_hand == (4, 3, 1, 4, predict_peak(4, 10, RenderPlan(4, 3, 1, 4), COSTS))


# ------------------------------------------------------------------------------------------ a whole rendering

@pytest.fixture(scope="module")
def problem():
    """A small LDM (4 images of 16×16×3 latents, 64² images), an MSE loss, and the planner's measured costs."""
    from ld3m_fast.engine.rendering import cost_probe
    from ld3m_fast.engine.schedule import DDIMSchedule

    model = CompVisStyleLDM(channels=64, seed=3)
    gen = torch.Generator().manual_seed(0)
    n = 4
    Z = torch.randn(n, 3, 16, 16, generator=gen).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(n) % 10).clone().requires_grad_(True)
    target = torch.rand(n, 3, 64, 64, generator=gen)
    lm = as_latent_model(model)
    schedule = DDIMSchedule.make(5, lm.alphas_cumprod, 3.0, "official", 0.0)
    costs = cost_probe(lm, Z, c, lm.unconditional_context(1), schedule)()
    return model, Z, c, lambda images: ((images - target) ** 2).mean(), costs


@pytest.mark.parametrize("knobs", [{"chunk_size": 4}, {"chunk_size": 1}, {"chunk_size": 4, "keep_steps": 2},
                                   {"chunk_size": 2, "latent_stride": 3}])
def test_predicted_peak_of_a_rendering_matches_the_allocator(problem, knobs):
    model, Z, c, loss_fn, costs = problem
    plan = resolve_plan(4, 5, None, chunk_size=knobs["chunk_size"], keep_steps=knobs.get("keep_steps"),
                        latent_stride=knobs.get("latent_stride"))
    Z.grad = c.grad = None
    measured, _ = peak_memory(lambda: loss_fn(render(model, Z, c, 5, seed=0, **knobs)).backward(), "cpu")
    assert predict_peak(4, 5, plan, costs) == pytest.approx(measured, rel=0.15)


def test_a_budgeted_rendering_stays_within_its_budget(problem):
    model, Z, c, loss_fn, costs = problem
    one, all_four = (predict_peak(4, 5, RenderPlan(b, 0, 1, b), costs) for b in (1, 4))
    assert all_four > 1.5 * one  # the budget below forces smaller chunks
    budget = (one + all_four) // 2
    Z.grad = c.grad = None
    measured, _ = peak_memory(lambda: loss_fn(render(model, Z, c, 5, seed=0, memory_budget=budget)).backward(), "cpu")
    assert measured <= budget


def test_a_model_without_a_module_is_measured_the_same(problem):
    """Weights reached only through closures (a LatentModel of plain callables) are excluded all the same."""
    from ld3m_fast.engine.rendering import cost_probe
    from ld3m_fast.engine.schedule import DDIMSchedule

    model, Z, c, _, costs = problem
    parts = as_latent_model(model)
    bare = LatentModel(lambda z, t, ctx: parts.denoiser(z, t, ctx), parts.quantize, parts.decode,
                       parts.unconditional, latent_channels=3)
    schedule = DDIMSchedule.make(5, parts.alphas_cumprod, 3.0, "official", 0.0)
    assert cost_probe(bare, Z, c, parts.unconditional_context(1), schedule)() == costs
