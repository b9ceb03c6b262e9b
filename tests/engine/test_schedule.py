"""The DDIM schedule equals the official sampler's numbers (docs/design.md §1, §3)."""
import math

import numpy as np
import pytest
import torch

from ld3m_fast.engine.schedule import DDIMSchedule, ddim_timesteps, linear_alphas_cumprod


def official_alphas_cumprod():
    """The CompVis 'linear' schedule transcribed with numpy, as make_beta_schedule + register_schedule do."""
    betas = np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def test_alphas_cumprod_matches_compvis_linear_schedule():
    ours = linear_alphas_cumprod().numpy()
    np.testing.assert_allclose(ours, official_alphas_cumprod(), rtol=1e-14, atol=0)
    assert ours[0] == pytest.approx(1 - 0.0015) and ours[-1] < 0.01


@pytest.mark.parametrize("steps, expected", [
    (10, [1 + 100 * i for i in range(10)]),
    (20, [1 + 50 * i for i in range(20)]),
    (1, [1]),
    (7, [1 + 142 * i for i in range(8)]),   # 1000 // 7 = 142: eight timesteps, all used
    (400, [1 + 2 * i for i in range(500)]),  # 500 timesteps for 400 requested
])
def test_uniform_timesteps_with_the_plus_one_offset(steps, expected):
    assert ddim_timesteps(steps) == expected


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_steps_out_of_range_are_refused(steps):
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(steps)


@pytest.mark.parametrize("steps", [3, 501, 1000])
def test_steps_that_reach_timestep_1000_are_refused_with_a_hint(steps):
    with pytest.raises(ValueError, match="timestep 1000"):
        ddim_timesteps(steps)


def test_steps_must_be_int():
    with pytest.raises(TypeError, match="steps"):
        ddim_timesteps(10.0)


@pytest.mark.parametrize("steps", [10, 7, 50])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_coefficients_follow_the_official_sampler(steps, eta):
    acp = official_alphas_cumprod()
    taus = np.asarray(list(range(0, 1000, 1000 // steps))) + 1
    alphas = acp[taus]
    alphas_prev = np.asarray([acp[0]] + acp[taus[:-1]].tolist())
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    sched = DDIMSchedule.make(steps, guidance=3.0, skip="official", eta=eta)
    total = len(taus)
    assert sched.num_steps == total
    assert sched.start_alpha == pytest.approx(alphas[-1], rel=1e-14)
    for i, step in enumerate(np.flip(taus)):
        index = total - i - 1
        cf = sched.coefficients[i]
        assert sched.timesteps[i] == step
        assert cf.sqrt_alpha == pytest.approx(math.sqrt(alphas[index]), rel=1e-13)
        assert cf.sqrt_one_minus_alpha == pytest.approx(math.sqrt(1 - alphas[index]), rel=1e-13)
        assert cf.sqrt_alpha_prev == pytest.approx(math.sqrt(alphas_prev[index]), rel=1e-13)
        assert cf.sigma == pytest.approx(sigmas[index], rel=1e-12, abs=1e-15)
        assert cf.direction == pytest.approx(math.sqrt(1 - alphas_prev[index] - sigmas[index] ** 2), rel=1e-12)
        assert cf.blend_x0 == pytest.approx(index / (total - 1)) and cf.blend_out == 0
        assert cf.guidance == 3.0
    assert sched.coefficients[0].blend_x0 == 1.0 and sched.coefficients[-1].blend_x0 == 0.0


def test_paper_skip_weights_fall_from_one_to_one_over_T():
    sched = DDIMSchedule.make(10, skip="paper")
    weights = [cf.blend_out for cf in sched.coefficients]
    assert weights == pytest.approx([(k + 1) / 10 for k in reversed(range(10))])
    assert all(cf.blend_x0 == 0 for cf in sched.coefficients)


def test_none_skip_has_no_blend_and_allows_one_step():
    sched = DDIMSchedule.make(1, skip="none")
    assert sched.num_steps == 1 and sched.coefficients[0].blend_x0 == 0 == sched.coefficients[0].blend_out
    assert sched.coefficients[0].sqrt_alpha_prev == pytest.approx(math.sqrt(official_alphas_cumprod()[0]))


def test_one_step_official_chain_is_a_clear_error():
    with pytest.raises(ValueError, match="divides by K = 0"):
        DDIMSchedule.make(1, skip="official")


@pytest.mark.parametrize("kwargs, match", [
    ({"guidance": -1.0}, "guidance"), ({"guidance": float("nan")}, "guidance"),
    ({"skip": "fancy"}, "skip"), ({"eta": -0.1}, "eta")])
def test_bad_schedule_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDIMSchedule.make(10, **kwargs)


def test_model_schedule_is_used():
    acp = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    sched = DDIMSchedule.make(10, alphas_cumprod=acp)
    assert sched.start_alpha == pytest.approx(float(acp[901]))
