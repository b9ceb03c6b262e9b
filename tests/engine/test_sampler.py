"""ld3m_fast.DDIMSampler is a drop-in for the official LD3M sampler; patch_ldm swaps it in."""
import sys
import types

import numpy as np
import pytest
import torch

from tests.helpers.numerics import rel_err
from ld3m_fast import DDIMSampler, patch_ldm, reference
from tests.helpers.compvis_style import CompVisStyleLDM
from tests.engine.test_chain import make_inputs


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


def test_unsupported_official_options_are_refused(model64):
    Z, c, _ = make_inputs(model64, 1, torch.float64)
    sampler = DDIMSampler(model64)
    with pytest.raises(NotImplementedError, match="mask"):
        sampler.sample(S=5, batch_size=1, shape=(3, 8, 8), conditioning=c, x_T=Z, mask=torch.ones(1), verbose=False)
    with pytest.raises(ValueError, match="x_T has shape"):
        sampler.sample(S=5, batch_size=2, shape=(3, 8, 8), conditioning=c, x_T=Z, verbose=False)


def test_patch_ldm_swaps_the_sampler_everywhere(monkeypatch):
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
    original = patch_ldm()
    assert original is OfficialSampler
    assert ddim.DDIMSampler is DDIMSampler and user_script.DDIMSampler is DDIMSampler


def test_patch_ldm_without_ldm_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "ldm", None)
    with pytest.raises(ImportError, match="ldm"):
        patch_ldm()
