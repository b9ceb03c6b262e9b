"""Bad input gets a clear error that names the argument and the fix."""
import pytest
import torch

from ld3m_fast import LatentModel, as_latent_model, render
from tests.helpers.compvis_style import CompVisStyleLDM


@pytest.fixture(scope="module")
def model():
    return CompVisStyleLDM(seed=9)


def inputs(n=2, channels=3, dtype=torch.float32):
    return torch.randn(n, channels, 8, 8, dtype=dtype), torch.randn(n, 1, 32, dtype=dtype)


@pytest.mark.parametrize("make, error, match", [
    (lambda: (torch.randn(3, 3, 8, 8), torch.randn(2, 1, 32)), ValueError, "Z has 3 latents but c has 2"),
    (lambda: inputs(channels=4), ValueError, "Z has 4 channels but the model's latent space has 3"),
    (lambda: (torch.randn(3, 8, 8), torch.randn(3, 1, 32)), ValueError, r"Z must be \(N, C, h, w\)"),
    (lambda: (torch.randn(2, 3, 8, 8), torch.randn(2, 32)), ValueError, "c.unsqueeze"),
    (lambda: (torch.randn(2, 3, 8, 8), torch.randn(2, 1, 32, dtype=torch.float64)), TypeError, "Z is torch.float32 but c is torch.float64"),
    (lambda: (torch.randint(0, 3, (2, 3, 8, 8)), torch.randn(2, 1, 32)), TypeError, "Z has dtype torch.int64"),
    (lambda: inputs(dtype=torch.float64), TypeError, "model's weights are torch.float32 but Z is torch.float64"),
    (lambda: (torch.randn(0, 3, 8, 8), torch.randn(0, 1, 32)), ValueError, "Z is empty"),
])
def test_bad_tensors(model, make, error, match):
    Z, c = make()
    with pytest.raises(error, match=match):
        render(model, Z, c, 10)


@pytest.mark.parametrize("name", ["Z", "c"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_is_caught_and_the_check_can_be_turned_off(model, name, value):
    Z, c = inputs()
    target = Z if name == "Z" else c
    target.view(-1)[5] = value
    with pytest.raises(ValueError, match=f"{name} has 1 NaN/Inf"):
        render(model, Z, c, 5)
    out = render(model, Z, c, 5, check_finite=False, seed=0)
    assert out.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("steps, match", [(0, "steps=0"), (1001, "steps=1001"), (1, "divides by K = 0")])
def test_bad_steps(model, steps, match):
    with pytest.raises(ValueError, match=match):
        render(model, *inputs(), steps)


def test_one_step_is_fine_without_the_official_skip(model):
    assert render(model, *inputs(), 1, skip="none", seed=0).shape == (2, 3, 32, 32)


def test_negative_guidance(model):
    with pytest.raises(ValueError, match="guidance=-2.0"):
        render(model, *inputs(), 10, guidance=-2.0)


def test_mixed_devices_are_refused(model):
    Z, c = inputs()
    with pytest.raises(ValueError, match="on meta but c is on cpu"):
        render(model, Z.to("meta"), c, 10)


def test_model_on_another_device_is_refused():
    model = CompVisStyleLDM(seed=9).to("meta")
    Z, c = inputs()
    with pytest.raises(ValueError, match="model is on meta but Z is on cpu"):
        render(model, Z, c, 10)


def test_too_small_memory_budget(model):
    with pytest.raises(ValueError, match="memory_budget=.*too small for one image"):
        render(model, *inputs(), 10, memory_budget="10KB")


def test_bad_chunk_size_and_seed_with_generator(model):
    with pytest.raises(ValueError, match="chunk_size=0"):
        render(model, *inputs(), 10, chunk_size=0)
    with pytest.raises(ValueError, match="seed or generator"):
        render(model, *inputs(), 10, seed=1, generator=torch.Generator())


def test_guidance_without_an_unconditional_embedding(model):
    parts = as_latent_model(model)
    bare = LatentModel(parts.denoiser, parts.quantize, parts.decode, latent_channels=3)
    with pytest.raises(ValueError, match="unconditional"):
        render(bare, *inputs(), 10, guidance=3.0)
    assert render(bare, *inputs(), 10, guidance=1.0, seed=0).shape == (2, 3, 32, 32)


def test_unusable_model_object():
    with pytest.raises(TypeError, match="cannot render with a str"):
        render("cin256-v2", *inputs(), 10)
