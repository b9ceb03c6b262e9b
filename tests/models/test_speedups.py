"""Every ``optimize`` switch against the plain model (docs/design.md §10 tolerances), alone and together."""
import warnings

import pytest
import torch

from tests.helpers.numerics import rel_err
from ld3m_fast import reference, render
from ld3m_fast.engine.memory import saved_activation_bytes
from ld3m_fast.models import build_ldm, fused_norm, optimize
from ld3m_fast.models.fused_norm import GroupNormSiLU
from ld3m_fast.models.speedups import FusedResnetBlock2D
from ld3m_fast.engine.rendering import make_generator, start_noise

PLAIN = dict(bf16=False, fused_groupnorm_silu=False, channels_last=False, attention="math",
             checkpoint_decoder=False, checkpoint_unet=False)


def tiny(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return optimize(build_ldm("tiny").to(dtype), **PLAIN)


def inputs(model, dtype, seed=1, n=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)
    c = torch.randn(n, 1, 16, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)
    t = torch.tensor([7, 640, 999, 1][:n])
    dy = torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64).to(dtype)
    dimg = torch.randn(n, 3, 32, 32, generator=gen, dtype=torch.float64).to(dtype)
    return x, c, t, dy, dimg


def forward_and_grads(model, x, c, t, dy, dimg):
    """UNet output and decoded images, with gradients w.r.t. latents, contexts and two weights."""
    eps = model.apply_model(x, t, c)
    img = model.decode_first_stage(x, force_not_quantize=True)
    w = [model.diffusion_model.down_blocks[0].resnets[0].norm1.weight, model.first_stage_model.decoder.conv_in.weight]
    grads = torch.autograd.grad((eps * dy).sum() + (img * dimg).sum(), [x, c] + w)
    return [eps, img, *grads]


def compare(model, switches, dtype, tol, lower=0.0):
    x, c, t, dy, dimg = inputs(model, dtype)
    model.requires_grad_(True)
    ref = forward_and_grads(optimize(model, **PLAIN), x, c, t, dy, dimg)
    out = forward_and_grads(optimize(model, **{**PLAIN, **switches}), x, c, t, dy, dimg)
    optimize(model, **PLAIN)
    errs = [rel_err(o, r) for o, r in zip(out, ref)]
    assert all(lower <= e < tol for e in errs), errs
    assert all(r.abs().max() > 0 for r in ref)
    return errs


def test_sdpa_attention_matches_explicit_attention():
    compare(tiny(), dict(attention="sdpa"), torch.float64, 1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="xformers runs on CUDA only")
def test_xformers_attention_matches_explicit_attention():
    pytest.importorskip("xformers")
    compare(tiny(torch.float32).cuda(), dict(attention="xformers"), torch.float32, 1e-4)


def test_fused_groupnorm_silu_matches_plain_and_keeps_the_state_dict():
    pytest.importorskip("triton")
    model = tiny()
    keys = list(model.state_dict())
    compare(model, dict(fused_groupnorm_silu=True), torch.float64, 1e-10)
    optimize(model, **{**PLAIN, "fused_groupnorm_silu": True})
    fused = [m for m in model.modules() if isinstance(m, FusedResnetBlock2D)]
    norms = [m for m in model.modules() if isinstance(m, GroupNormSiLU)]
    assert len(norms) == 3  # the output norms of the UNet, encoder and decoder
    assert len(fused) == 21  # every residual block: UNet 8, encoder 5, decoder 8
    assert list(model.state_dict()) == keys
    optimize(model, **PLAIN)
    assert not any(isinstance(m, (FusedResnetBlock2D, GroupNormSiLU)) for m in model.modules())


def test_channels_last_matches_plain():
    compare(tiny(), dict(channels_last=True), torch.float64, 1e-12)


def test_bf16_autocast_matches_float32_within_bf16_tolerance():
    """The float32 model under bf16 autocast: UNet and decoder outputs and gradients within bf16 error of float32.

    On the CPU, autocast leaves GroupNorm, LayerNorm and softmax outputs in bf16 (CUDA autocast runs
    them in float32), and these random-weight models amplify rounding: about 1e-2 to 2.5e-2 here,
    against 1.1e-3 for rounding the reference output itself to bf16. The lower bound checks that
    autocast is really on.
    """
    errs = compare(tiny(torch.float32), dict(bf16=True), torch.float32, 5e-2, lower=1e-4)
    assert max(errs[:2]) < 3e-2  # forward outputs


def test_decoder_recomputation_gives_the_same_gradients_in_less_memory():
    model = tiny()
    dec = model.first_stage_model
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    dimg = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    def run(on):
        optimize(model, **{**PLAIN, "checkpoint_decoder": on})
        saved, img = saved_activation_bytes(lambda z: dec.decode(z, force_not_quantize=True), x)
        return saved, img, torch.autograd.grad((img * dimg).sum(), x)[0]
    saved_plain, img_plain, g_plain = run(False)
    saved_ckpt, img_ckpt, g_ckpt = run(True)
    assert torch.equal(img_ckpt, img_plain) and rel_err(g_ckpt, g_plain) < 1e-12
    assert saved_ckpt < 0.5 * saved_plain


def test_unet_recomputation_gives_the_same_gradients():
    compare(tiny(), dict(checkpoint_unet=True), torch.float64, 1e-12)


def test_everything_together_renders_like_the_plain_reference():
    """All switches (but bf16) on a float64 model: ``render`` equals plain autograd through the plain model."""
    model = tiny().requires_grad_(False)
    gen = torch.Generator().manual_seed(4)
    Z = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64).requires_grad_(True)
    c = model.get_learned_conditioning(torch.tensor([1, 2])).clone().requires_grad_(True)
    w = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    ref = reference.render_unrolled(model, Z, c, 2, noise=start_noise(Z, make_generator(5)))
    rZ, rc = torch.autograd.grad((ref * w).sum(), (Z, c))
    optimize(model, fused_groupnorm_silu=True, channels_last=True, attention="sdpa", checkpoint_decoder=True,
             checkpoint_unet=True)
    images = render(model, Z, c, 2, seed=5)
    gZ, gc = torch.autograd.grad((images * w).sum(), (Z, c))
    assert rel_err(images, ref) < 1e-10 and rel_err(gZ, rZ) < 1e-10 and rel_err(gc, rc) < 1e-10


def test_defaults_on_cpu_and_fallback_with_one_warning_line(monkeypatch):
    """No GPU: the defaults switch nothing on; asking for the kernel warns once and runs PyTorch."""
    model = tiny()
    x, c, t, dy, dimg = inputs(model, torch.float64)
    plain = model.apply_model(x, t, c)
    if not torch.cuda.is_available():
        optimize(model)
        assert model.optimizations == {"bf16": False, "fused_groupnorm_silu": False, "channels_last": False,
                                       "attention": "sdpa", "checkpoint_decoder": True, "checkpoint_unet": False}
    from ld3m_fast import kernels
    monkeypatch.setattr(kernels, "interpreting", lambda: False)  # a CPU machine without the interpreter
    monkeypatch.setattr(fused_norm, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimize(model, fused_groupnorm_silu=True, attention="math")
        out = model.apply_model(x, t, c)
        model.decode_first_stage(x)
    if not torch.cuda.is_available():
        assert len(caught) == 1 and "falls back to PyTorch" in str(caught[0].message)
    assert rel_err(out, plain) < 1e-12


def test_bad_arguments():
    with pytest.raises(ValueError, match="attention"):
        optimize(tiny(), attention="flash")
    with pytest.raises(TypeError, match="LatentDiffusion"):
        optimize(torch.nn.Linear(2, 2))
