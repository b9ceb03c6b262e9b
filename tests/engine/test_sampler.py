"""ld3m_fast.DDIMSampler is a drop-in for the official LD3M sampler; patch_ldm swaps it in."""
import inspect
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from ld3m_fast import DDIMSampler, LatentModel, patch_ldm, reference
from ld3m_fast.engine import sampler as sampler_module
from ld3m_fast.errors import InvalidArgumentError, InvalidTypeError
from tests.engine.test_chain import make_inputs
from tests.helpers.compvis_modules import compvis_ldm
from tests.helpers.compvis_style import CompVisStyleLDM
from tests.helpers.numerics import rel_err


@pytest.fixture(scope="module")
def model64():
    return CompVisStyleLDM(seed=8).double()


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_sample_returns_the_official_final_latents_and_gradients(model64, guidance):
    Z, c, _ = make_inputs(model64, 3, torch.float64, seed=5)
    uc = model64.get_learned_conditioning(torch.full((3,), model64.n_classes))
    sampler = DDIMSampler(model64)
    torch.manual_seed(123)  # the model's own q_sample draws the start noise
    out = sampler.sample(S=10, batch_size=3, shape=(3, 8, 8), conditioning=c, x_T=Z, verbose=False,
                         unconditional_guidance_scale=guidance, unconditional_conditioning=uc)
    torch.manual_seed(123)
    noise = torch.randn_like(Z)
    ref = reference.render_unrolled(model64, Z, c, 10, guidance, noise=noise, return_latents=True)
    assert out.shape == (3, 3, 8, 8)
    assert rel_err(out, ref) < 1e-10
    w = torch.randn_like(out)
    gZ, gc = torch.autograd.grad((out * w).sum(), (Z, c))
    rZ, rc = torch.autograd.grad((ref * w).sum(), (Z, c))
    assert rel_err(gZ, rZ) < 1e-10 and rel_err(gc, rc) < 1e-10


def test_make_schedule_exposes_the_official_attributes(model64):
    sampler = DDIMSampler(model64)
    sampler.make_schedule(ddim_num_steps=10, ddim_eta=0.0, verbose=False)
    assert np.array_equal(sampler.ddim_timesteps, np.arange(1, 1000, 100))
    acp = model64.alphas_cumprod.double()
    assert torch.allclose(sampler.ddim_alphas.double(), acp[sampler.ddim_timesteps].float().double())
    assert float(sampler.ddim_alphas_prev[0]) == pytest.approx(float(acp[0]), rel=1e-6)
    assert torch.all(sampler.ddim_sigmas == 0)


# the official sample()'s parameters, in order, with their defaults (its LD3M copy of CompVis's ddim.py)
OFFICIAL_SAMPLE = [("S", None), ("batch_size", None), ("shape", None), ("conditioning", None), ("callback", None),
                   ("normals_sequence", None), ("img_callback", None), ("quantize_x0", False), ("eta", 0.0),
                   ("mask", None), ("x0", None), ("temperature", 1.0), ("noise_dropout", 0.0),
                   ("score_corrector", None), ("corrector_kwargs", None), ("verbose", True), ("x_T", None),
                   ("log_every_t", 100), ("unconditional_guidance_scale", 1.0), ("unconditional_conditioning", None)]


def test_sample_has_the_official_signature():
    params = list(inspect.signature(DDIMSampler.sample).parameters.values())[1:len(OFFICIAL_SAMPLE) + 1]
    assert [p.name for p in params] == [name for name, _ in OFFICIAL_SAMPLE]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)  # positional calls land where they did
    assert [p.default for p in params[3:]] == [d for _, d in OFFICIAL_SAMPLE[3:]]
    init = list(inspect.signature(DDIMSampler.__init__).parameters.values())
    assert [p.name for p in init[1:3]] == ["model", "schedule"] and init[2].default == "linear"


def test_unsupported_official_options_are_refused_at_other_values_only(model64):
    Z, c, _ = make_inputs(model64, 1, torch.float64)
    sampler = DDIMSampler(model64)
    with pytest.raises(InvalidArgumentError, match="mask=<a torch.float32 tensor"):
        sampler.sample(S=5, batch_size=1, shape=(3, 8, 8), conditioning=c, x_T=Z, mask=torch.ones(1), verbose=False)
    with pytest.raises(InvalidArgumentError, match="temperature=0.5"):
        sampler.sample(S=5, batch_size=1, shape=(3, 8, 8), conditioning=c, x_T=Z, temperature=0.5, verbose=False)
    out = sampler.sample(5, 1, (3, 8, 8), c, None, None, None, False, 0.0, None, None, 1.0, 0.0, None, None, False, Z,
                         7, 1.0, None)  # every official option at its default, positionally
    assert out.shape == Z.shape and torch.isfinite(out).all()


def test_unknown_keyword_arguments_are_refused_not_ignored(model64):
    Z, c, _ = make_inputs(model64, 1, torch.float64)
    with pytest.raises(InvalidTypeError, match="memory_budjet"):
        DDIMSampler(model64, memory_budjet="1GiB")
    with pytest.raises(InvalidTypeError, match="x_t"):
        DDIMSampler(model64).sample(S=5, batch_size=1, shape=(3, 8, 8), conditioning=c, x_t=Z, verbose=False)


def test_shape_comes_from_x_T_and_a_mismatch_warns_once(model64):
    """The official render helper passes shape=[3, 64, 64] with 32×32 latents at --res 128: the latents win."""
    Z, c, _ = make_inputs(model64, 2, torch.float64, seed=3, size=4)
    uc = model64.get_learned_conditioning(torch.full((2,), model64.n_classes))
    sampler = DDIMSampler(model64)
    kw = dict(S=10, batch_size=2, shape=[3, 8, 8], conditioning=c, x_T=Z, verbose=False,
              unconditional_guidance_scale=3.0, unconditional_conditioning=uc)
    torch.manual_seed(4)
    with pytest.warns(UserWarning, match=r"x_T has shape \(2, 3, 4, 4\) but batch_size and shape ask for "
                                         r"\(2, 3, 8, 8\)"):
        out = sampler.sample(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.sample(**kw)  # the same mismatch again: no second warning
    torch.manual_seed(4)
    ref = reference.render_unrolled(model64, Z, c, 10, 3.0, noise=torch.randn_like(Z), return_latents=True)
    assert out.shape == (2, 3, 4, 4) and rel_err(out, ref) < 1e-10


def _unconditional_reference(model):
    fs = model.first_stage_model
    return LatentModel(denoiser=lambda z, t, _c: model.apply_model(z, t, None), quantize=lambda z: fs.quantize(z)[0],
                       decode=fs.decode, alphas_cumprod=model.alphas_cumprod, module=model)


def test_unconditional_ldm_runs_with_conditioning_none():
    """rand_g / FFHQ: an LDM without class embedder, sample() without conditioning (guidance scale ignored)."""
    model = compvis_ldm(seed=4, n_classes=None).double()
    acp = model.alphas_cumprod  # q_sample's square roots from the same ā as the reference's (not float32-rounded)
    model.sqrt_alphas_cumprod, model.sqrt_one_minus_alphas_cumprod = acp.sqrt(), (1 - acp).sqrt()
    Z = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_(True)
    torch.manual_seed(6)
    out = DDIMSampler(model).sample(S=10, batch_size=3, shape=[3, 8, 8], x_T=Z, verbose=False, eta=0.0,
                                    unconditional_guidance_scale=3.0)  # no unconditional embedding: unguided
    torch.manual_seed(6)
    ref = reference.render_unrolled(_unconditional_reference(model), Z, Z.new_zeros(3, 1, 1), 10, guidance=1.0,
                                    noise=torch.randn_like(Z), return_latents=True)
    assert rel_err(out, ref) < 1e-10
    w = torch.randn_like(out)
    (g,) = torch.autograd.grad((out * w).sum(), Z)
    (r,) = torch.autograd.grad((ref * w).sum(), Z)
    assert rel_err(g, r) < 1e-10 and r.abs().max() > 0


def test_conditioning_errors_say_what_to_pass(model64):
    Z, c, _ = make_inputs(model64, 2, torch.float64)
    sampler = DDIMSampler(model64)
    kw = dict(S=5, batch_size=2, shape=(3, 8, 8), x_T=Z, verbose=False)
    with pytest.raises(InvalidArgumentError, match="class-conditional"):
        sampler.sample(**kw)
    with pytest.raises(InvalidArgumentError, match="guidance needs the conditional embedding"):
        sampler.sample(**kw, unconditional_guidance_scale=3.0, unconditional_conditioning=c)
    with pytest.raises(InvalidTypeError, match="dict"):
        sampler.sample(**kw, conditioning={"c_crossattn": [c]})
    with pytest.raises(InvalidArgumentError, match="3 rows but x_T has 2"):
        sampler.sample(**kw, conditioning=torch.cat([c, c[:1]]))


def _spy_chain(monkeypatch):
    seen = []

    def spy(z_start, anchor, context, settings):
        seen.append(settings)
        return real(z_start, anchor, context, settings)
    real = sampler_module.reverse_chain
    monkeypatch.setattr(sampler_module, "reverse_chain", spy)
    return seen


@pytest.mark.parametrize("knobs, expect", [
    (dict(chunk_size=2), dict(chunk_size=2)),
    (dict(keep_steps=3, chunk_size=3), dict(keep_steps=frozenset({7, 8, 9}), chunk_size=3)),
    (dict(latent_stride=4), dict(latent_stride=4)),
    (dict(memory_budget="2GiB"), dict(chunk_size=3)),  # all fits in one chunk (and some graphs are kept: below)
    (dict(backend="torch"), dict(backend="torch")),
], ids=["chunk", "keep", "stride", "budget", "backend"])
def test_knobs_reach_the_chain_and_leave_results_unchanged(model64, monkeypatch, knobs, expect):
    Z, c, w = make_inputs(model64, 3, torch.float64, seed=9)
    uc = model64.get_learned_conditioning(torch.full((3,), model64.n_classes))
    kw = dict(S=10, batch_size=3, shape=(3, 8, 8), conditioning=c, x_T=Z, verbose=False,
              unconditional_guidance_scale=3.0, unconditional_conditioning=uc)
    torch.manual_seed(2)
    ref = DDIMSampler(model64).sample(**kw)
    seen = _spy_chain(monkeypatch)
    torch.manual_seed(2)
    out = DDIMSampler(model64, **knobs).sample(**kw)
    assert {k: getattr(seen[0], k) for k in expect} == expect
    if "memory_budget" in knobs:  # the planner measured the model and keeps graphs of the last steps
        assert seen[0].keep_steps and max(seen[0].keep_steps) == 9
    assert rel_err(out, ref) < 1e-12
    grads = torch.autograd.grad((out * w[:, :, :8, :8]).sum(), (Z, c))
    refs = torch.autograd.grad((ref * w[:, :, :8, :8]).sum(), (Z, c))
    assert all(rel_err(g, r) < 1e-10 for g, r in zip(grads, refs))


def test_bad_knobs_are_refused_at_construction(model64):
    for knobs, match in ((dict(chunk_size=0), "chunk_size"), (dict(latent_stride=0), "latent_stride"),
                         (dict(keep_steps=-1), "keep_steps"), (dict(memory_budget="lots"), "memory_budget"),
                         (dict(skip="sideways"), "skip")):
        with pytest.raises(InvalidArgumentError, match=match):
            DDIMSampler(model64, **knobs)
    with pytest.raises(InvalidTypeError, match="apply_model"):
        DDIMSampler(torch.nn.Linear(2, 2))


def test_a_memory_budget_too_small_says_so(model64):
    Z, c, _ = make_inputs(model64, 2, torch.float64)
    with pytest.raises(InvalidArgumentError, match="memory_budget"):
        DDIMSampler(model64, memory_budget="1KiB").sample(S=5, batch_size=2, shape=(3, 8, 8), conditioning=c, x_T=Z,
                                                          verbose=False)


def test_the_planner_of_sample_measures_no_decoder(monkeypatch):
    """sample returns latents: its budget is planned without the decoder, which it never runs."""
    model = CompVisStyleLDM(seed=3).double()
    decoded = []
    original = model.first_stage_model.decode
    monkeypatch.setattr(model.first_stage_model, "decode", lambda *a, **k: decoded.append(1) or original(*a, **k))
    Z, c, _ = make_inputs(model, 2, torch.float64)
    DDIMSampler(model, memory_budget="1GiB").sample(S=5, batch_size=2, shape=(3, 8, 8), conditioning=c, x_T=Z,
                                                    verbose=False).sum().backward()
    assert not decoded and Z.grad is not None


class _CountingModel:
    """Counts the UNet calls of a model (forward passes, no-grad or not)."""

    def __init__(self, model):
        self.calls, self._apply = 0, model.apply_model
        model.apply_model = self

    def __call__(self, *args):
        self.calls += 1
        return self._apply(*args)


def test_one_render_replays_the_kept_rendering_without_a_forward_pass():
    model = CompVisStyleLDM(seed=8).double()
    counter = _CountingModel(model)
    Z, c, w = make_inputs(model, 3, torch.float64, seed=12)
    uc = model.get_learned_conditioning(torch.full((3,), model.n_classes))
    kw = dict(S=10, batch_size=3, shape=(3, 8, 8), conditioning=c, x_T=Z, verbose=False,
              unconditional_guidance_scale=3.0, unconditional_conditioning=uc)
    sampler = DDIMSampler(model, one_render=True)
    torch.manual_seed(5)
    with torch.no_grad():
        seen = sampler.sample(**kw)
    assert counter.calls == 10 and sampler.kept_renderings == 1 and not seen.requires_grad
    with sampler.replaying():
        out = sampler.sample(**kw)
        assert counter.calls == 10 and torch.equal(out, seen)  # no forward pass: the kept result
        gZ, gc = torch.autograd.grad((out * w[:, :, :8, :8]).sum(), (Z, c))
    assert counter.calls == 20 and sampler.kept_renderings == 0  # backward: one recomputed call per step
    torch.manual_seed(5)
    ref = DDIMSampler(model).sample(**kw)
    rZ, rc = torch.autograd.grad((ref * w[:, :, :8, :8]).sum(), (Z, c))
    assert rel_err(gZ, rZ) < 1e-12 and rel_err(gc, rc) < 1e-12


def test_one_render_without_a_matching_rendering_renders_again_and_says_so():
    model = CompVisStyleLDM(seed=8).double()
    counter = _CountingModel(model)
    Z, c, _ = make_inputs(model, 2, torch.float64, seed=1)
    kw = dict(S=5, batch_size=2, shape=(3, 8, 8), conditioning=c, verbose=False)
    sampler = DDIMSampler(model, one_render=True)
    with torch.no_grad():
        sampler.sample(x_T=Z, **kw)
    with sampler.replaying(), pytest.warns(UserWarning, match="no kept rendering matches"):
        out = sampler.sample(x_T=Z + 0.5, **kw)
    assert out.requires_grad and counter.calls == 10 and sampler.kept_renderings == 0


def test_kept_renderings_of_inputs_changed_in_place_are_dropped():
    model = CompVisStyleLDM(seed=8).double()
    Z, c, _ = make_inputs(model, 4, torch.float64, seed=1)
    sampler = DDIMSampler(model, one_render=True)
    with torch.no_grad():
        for part, cp in zip(Z.split(2), c.split(2)):
            sampler.sample(S=5, batch_size=2, shape=(3, 8, 8), conditioning=cp, x_T=part, verbose=False)
        assert sampler.kept_renderings == 2
        sampler.sample(S=5, batch_size=2, shape=(3, 8, 8), conditioning=c[:2], x_T=Z[:2], verbose=False)
        assert sampler.kept_renderings == 2  # the same inputs again: the newer rendering replaces the older
        Z.add_(0.1)  # an optimiser step
        sampler.sample(S=5, batch_size=2, shape=(3, 8, 8), conditioning=c[:2], x_T=Z[:2], verbose=False)
    assert sampler.kept_renderings == 1


def _fake_ldm(monkeypatch):
    """An importable ``ldm.models.diffusion.ddim`` with an official-looking sampler, and a script that imported it."""
    class OfficialSampler:
        pass
    ddim = types.ModuleType("ldm.models.diffusion.ddim")
    ddim.DDIMSampler = OfficialSampler
    user_script = types.ModuleType("distill_dm_LD3M")
    user_script.DDIMSampler = OfficialSampler  # `from ldm.models.diffusion.ddim import DDIMSampler`
    for name in ("ldm", "ldm.models", "ldm.models.diffusion"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "ldm.models.diffusion.ddim", ddim)
    sys.modules["ldm.models.diffusion"].ddim = ddim
    sys.modules["ldm.models"].diffusion = sys.modules["ldm.models.diffusion"]
    sys.modules["ldm"].models = sys.modules["ldm.models"]
    monkeypatch.setitem(sys.modules, "distill_dm_LD3M", user_script)
    return OfficialSampler, ddim, user_script


def test_patch_ldm_swaps_the_sampler_everywhere(monkeypatch):
    OfficialSampler, ddim, user_script = _fake_ldm(monkeypatch)
    original = patch_ldm()
    assert original is OfficialSampler
    assert ddim.DDIMSampler is DDIMSampler and user_script.DDIMSampler is DDIMSampler


def test_patch_ldm_with_sampler_options(monkeypatch, model64):
    OfficialSampler, ddim, user_script = _fake_ldm(monkeypatch)
    patch_ldm()
    assert patch_ldm(one_render=True, chunk_size=2) is OfficialSampler  # patching again still returns the original
    patched = user_script.DDIMSampler
    assert patched is ddim.DDIMSampler and issubclass(patched, DDIMSampler) and patched is not DDIMSampler
    sampler = patched(model64, chunk_size=3)  # the script's own arguments win over the defaults
    assert sampler.one_render and sampler.chunk_size == 3
    assert sampler_module.DDIMSampler is DDIMSampler  # ld3m_fast's own class is left alone
    with pytest.raises(InvalidTypeError, match="one_rendr"):
        patch_ldm(one_rendr=True)


def test_patch_ldm_without_ldm_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "ldm", None)
    with pytest.raises(ImportError, match="ldm"):
        patch_ldm()
