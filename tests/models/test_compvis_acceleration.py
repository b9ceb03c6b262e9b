"""accelerate(model): a CompVis-layout LatentDiffusion computes the same on ld3m_fast's model and keeps its API."""
import copy
import importlib
import os
import sys
import warnings

import pytest
import torch

from ld3m_fast import DDIMSampler, patch_ldm
from ld3m_fast.errors import InvalidArgumentError
from ld3m_fast.models import LatentDiffusion, LDMConfig, UNetConfig, VQConfig
from ld3m_fast.models.compvis_acceleration import (
    accelerate,
    acceleration_unsupported_reason,
    infer_config,
    unaccelerate,
)
from tests.engine.test_sampler import _fake_ldm
from tests.helpers import compvis_modules
from tests.helpers.compvis_modules import compvis_ldm
from tests.helpers.compvis_style import CompVisStyleLDM
from tests.helpers.numerics import rel_err

PLAIN = dict(bf16=False, fused_groupnorm_silu=False, channels_last=False, attention="math", checkpoint_decoder=False)
# a second architecture: attention at every level with a fixed head count, two transformer layers, three UNet levels,
# z_channels != embed_dim, a VQ f = 8, a scale factor
VARIANT = dict(model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(1, 2, 4),
               num_heads=2, num_head_channels=-1, transformer_depth=2, context_dim=12, n_classes=5, vq_ch=8,
               vq_ch_mult=(1, 2, 2, 2), vq_num_res_blocks=2, z_channels=4, groups=4, scale_factor=0.5, latent_size=4)


def probe(model, dtype, n=3, seed=0):
    """UNet output, decoded images both ways, encoder output, and the gradients of the first two w.r.t. x and c."""
    gen = torch.Generator().manual_seed(seed)
    size, ch = model.image_size, model.channels
    x = torch.randn(n, ch, size, size, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(n) % model.cond_stage_model.embedding.num_embeddings)
    c = (c.detach() + 0.1 * torch.randn(c.shape, generator=gen, dtype=torch.float64).to(dtype)).requires_grad_(True)
    t = torch.tensor([1, 500, 999][:n])
    eps = model.apply_model(x, t, c)
    images = model.decode_first_stage(x)
    plain = model.decode_first_stage(x, force_not_quantize=True)
    f = images.shape[-1]
    real = torch.rand(n, 3, f, f, generator=gen, dtype=torch.float64).to(dtype) * 2 - 1
    encoded = model.encode_first_stage(real)
    w1, w2 = (torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype) for o in (eps, plain))
    grads = torch.autograd.grad((eps * w1).sum() + (plain * w2).sum(), (x, c))
    return [eps, images, plain, encoded, *grads]


@pytest.mark.parametrize("arch", [{}, VARIANT], ids=["default", "variant"])
def test_accelerated_model_is_the_same_function_in_float64(arch):
    model = compvis_ldm(seed=3, **arch).double()
    original = copy.deepcopy(model)
    accelerate(model, **PLAIN)
    assert isinstance(model.ld3m_fast_model, LatentDiffusion)
    for out, ref in zip(probe(model, torch.float64), probe(original, torch.float64)):
        assert rel_err(out, ref) < 1e-12 and ref.abs().max() > 0


def _sample(model, Z, c, uc, seed=4, steps=10):
    torch.manual_seed(seed)
    return DDIMSampler(model).sample(S=steps, batch_size=Z.shape[0], shape=Z.shape[1:], conditioning=c, x_T=Z,
                                     verbose=False, unconditional_guidance_scale=3.0, unconditional_conditioning=uc)


def _sampler_inputs(model, dtype, n=3):
    gen = torch.Generator().manual_seed(1)
    Z = torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(n)).detach().clone().requires_grad_(True)
    uc = model.get_learned_conditioning(torch.full((n,), model.cond_stage_model.embedding.num_embeddings - 1))
    w = torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64).to(dtype)
    return Z, c, uc, w


def _drop_in_step(model, Z, c, uc, w):
    """The drop-in sampler's final latents, the decoded images and the gradients of both w.r.t. Z and c."""
    z0 = _sample(model, Z, c, uc)
    images = model.decode_first_stage(z0)
    grads = torch.autograd.grad((z0 * w).sum() + images.square().mean(), (Z, c))
    return [z0, images, *grads]


def test_float32_with_the_default_switches_is_within_float32_tolerance():
    """On the CPU the defaults are SDPA attention and the decoder recomputed in backward; the drop-in sampler on the
    accelerated model gives the CompVis model's latents, images and gradients."""
    model = compvis_ldm(seed=5)
    original = copy.deepcopy(model)
    accelerate(model)
    assert model.ld3m_fast_model.optimizations["attention"] == "sdpa"
    for out, ref in zip(probe(model, torch.float32), probe(original, torch.float32)):
        assert rel_err(out, ref) < 1e-4
    inputs = _sampler_inputs(model, torch.float32)
    for out, ref in zip(_drop_in_step(model, *inputs), _drop_in_step(original, *inputs)):
        assert rel_err(out, ref) < 1e-4


def test_bf16_is_within_bf16_tolerance():
    """bf16 autocast on the CPU (as in test_speedups: these random-weight models amplify its rounding to about 1e-2);
    the lower bound checks that bf16 really ran. The chain is compared on its latents and their gradients: images
    decoded after quantisation jump where a latent crosses to another codebook entry."""
    model = compvis_ldm(seed=6)
    original = copy.deepcopy(model)
    accelerate(model, bf16=True, checkpoint_decoder=False)
    assert model.ld3m_fast_model.optimizations["bf16"]
    errors = [rel_err(o, r) for o, r in zip(probe(model, torch.float32), probe(original, torch.float32))]
    assert all(1e-4 < e < 3e-2 for e in errors[:3]) and all(e < 5e-2 for e in errors[4:]), errors
    Z, c, uc, w = _sampler_inputs(model, torch.float32)
    out, ref = _sample(model, Z, c, uc), _sample(original, Z, c, uc)
    assert rel_err(out, ref) < 3e-2
    (gZ, gc), (rZ, rc) = (torch.autograd.grad((o * w).sum(), (Z, c)) for o in (out, ref))
    # the class embedding's gradient sums the cross-attention of all 10 guided steps: about 5e-2 to 1.2e-1 here
    assert rel_err(gZ, rZ) < 3e-2 and rel_err(gc, rc) < 1.5e-1


def test_the_users_model_routes_to_the_accelerated_one_and_back():
    model = compvis_ldm(seed=7)
    unet = model.model.diffusion_model
    accelerate(model, **PLAIN)
    fast = model.ld3m_fast_model
    calls = []
    hooks = [fast.diffusion_model.register_forward_hook(lambda *a: calls.append("unet")),
             fast.first_stage_model.decoder.register_forward_hook(lambda *a: calls.append("decoder")),
             fast.first_stage_model.encoder.register_forward_hook(lambda *a: calls.append("encoder"))]
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    c = model.get_learned_conditioning(torch.tensor([1, 2]))
    model.apply_model(x, t, c)
    model.model(x, t, c_crossattn=[c])
    model.decode_first_stage(x)
    model.first_stage_model.decode(x, force_not_quantize=True)
    model.encode_first_stage(torch.rand(1, 3, 32, 32))
    model.first_stage_model.encode(torch.rand(1, 3, 32, 32))
    assert calls == ["unet", "unet", "decoder", "decoder", "encoder", "encoder"]
    # the same tensors, not copies; the user's frozen weights stay frozen
    assert fast.diffusion_model.conv_in.weight.data_ptr() == unet.input_blocks[0][0].weight.data_ptr()
    assert not any(p.requires_grad for p in list(model.parameters()) + list(fast.parameters()))
    assert set(model.state_dict()) == set(compvis_ldm(seed=7).state_dict())  # nothing added
    unaccelerate(model)
    model.apply_model(x, t, c)
    model.decode_first_stage(x)
    assert len(calls) == 6 and not hasattr(model, "ld3m_fast_model")
    for h in hooks:
        h.remove()


def test_accelerating_again_changes_the_switches_only():
    model = compvis_ldm(seed=7)
    accelerate(model, **PLAIN)
    fast = model.ld3m_fast_model
    accelerate(model, **{**PLAIN, "attention": "sdpa"})
    assert model.ld3m_fast_model is fast and fast.optimizations["attention"] == "sdpa"


def test_infer_config_reads_the_architecture():
    cfg = infer_config(compvis_ldm(seed=0, **VARIANT))
    assert cfg.unet == UNetConfig(block_channels=(16, 32, 32), layers_per_block=2, cross_attention=(True, True, True),
                                  num_heads=2, head_dim=None, transformer_depth=2, norm_groups=4)
    assert cfg.vq == VQConfig(channels=8, ch_mult=(1, 2, 2, 2), num_res_blocks=2, embed_dim=3, n_embed=64,
                              z_channels=4, norm_groups=4)
    assert (cfg.n_classes, cfg.context_dim, cfg.scale_factor, cfg.image_size) == (5, 12, 0.5, 32)
    assert isinstance(cfg, LDMConfig)
    assert (cfg.linear_start, cfg.linear_end, cfg.num_timesteps) == (0.0015, 0.0195, 1000)


def test_models_that_cannot_be_mapped_are_refused_with_the_reason():
    with pytest.raises(InvalidArgumentError, match="not a CompVis LatentDiffusion"):
        accelerate(CompVisStyleLDM())
    with pytest.raises(InvalidArgumentError, match="no class embedder"):
        accelerate(compvis_ldm(n_classes=None))
    model = compvis_ldm()
    model.first_stage_model.encoder.down[0].attn.append(compvis_modules.AttnBlock(16, 8))  # attention in the VQ levels
    with pytest.raises(InvalidArgumentError, match="unexpected keys: first_stage_model.encoder.down.0.attn.0"):
        accelerate(model)
    other_schedule = compvis_ldm()
    other_schedule.alphas_cumprod.mul_(0.99)
    with pytest.raises(InvalidArgumentError, match="noise schedule"):
        accelerate(other_schedule)
    assert acceleration_unsupported_reason(compvis_ldm()) is None


def test_patch_ldm_accelerates_the_models_the_official_code_samples_with(monkeypatch):
    _, _, user_script = _fake_ldm(monkeypatch)
    patch_ldm(accelerate=PLAIN, one_render=True)
    model = compvis_ldm(seed=8).double()
    original = copy.deepcopy(model)
    sampler = user_script.DDIMSampler(model)  # what `DDIMSampler(G)` in the official script now does
    assert isinstance(model.ld3m_fast_model, LatentDiffusion) and sampler.one_render
    inputs = _sampler_inputs(model, torch.float64)
    assert rel_err(_sample(model, *inputs[:3]), _sample(original, *inputs[:3])) < 1e-12
    unconditional = compvis_ldm(seed=8, n_classes=None)
    with pytest.warns(UserWarning, match="runs unaccelerated: it has no class embedder"):
        user_script.DDIMSampler(unconditional)
    assert not hasattr(unconditional, "ld3m_fast_model")


# --- the real CompVis modules, from a local checkout of CompVis latent-diffusion ---------------------------------
COMPVIS_ROOT = os.environ.get("LD3M_FAST_COMPVIS_ROOT")


def _compvis_modules():
    if not COMPVIS_ROOT:
        pytest.skip("set LD3M_FAST_COMPVIS_ROOT to a checkout of CompVis latent-diffusion (the folder holding ldm/), "
                    "with einops and omegaconf importable, to test with CompVis's own UNetModel, Encoder and Decoder")
    sys.path.insert(0, COMPVIS_ROOT)
    try:
        openaimodel = importlib.import_module("ldm.modules.diffusionmodules.openaimodel")
        vq_model = importlib.import_module("ldm.modules.diffusionmodules.model")
    except ImportError as err:
        pytest.skip(f"CompVis's modules in {COMPVIS_ROOT} do not import ({err}): pip install einops omegaconf into "
                    "the environment (or point PYTHONPATH at them)")
    finally:
        sys.path.remove(COMPVIS_ROOT)
    return openaimodel, vq_model


def test_real_compvis_modules_accelerate_within_float32_tolerance():
    openaimodel, vq_model = _compvis_modules()
    model = compvis_ldm(seed=9, model_channels=32, channel_mult=(1, 2), num_head_channels=32, vq_ch=32,
                        vq_ch_mult=(1, 2, 2), groups=32)
    model.model.diffusion_model = openaimodel.UNetModel(
        image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=[2],
        channel_mult=(1, 2), num_head_channels=32, use_spatial_transformer=True, transformer_depth=1, context_dim=32)
    dd = dict(ch=32, out_ch=3, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=[], in_channels=3,
              resolution=32, z_channels=3, double_z=False)
    model.first_stage_model.encoder, model.first_stage_model.decoder = vq_model.Encoder(**dd), vq_model.Decoder(**dd)
    compvis_modules.randomize(model, seed=10).requires_grad_(False).eval()
    for module in model.modules():  # upstream CompVis's own checkpointing cannot differentiate a frozen model (the
        if isinstance(getattr(module, "checkpoint", None), bool):  # official LD3M code patches it): off, same values
            module.checkpoint = False
    original = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CompVis's modules print/warn about their own set-up
        accelerate(model, **PLAIN)
    for out, ref in zip(probe(model, torch.float32), probe(original, torch.float32)):
        assert rel_err(out, ref) < 1e-4 and ref.abs().max() > 0
    inputs = _sampler_inputs(model, torch.float32)
    for out, ref in zip(_drop_in_step(model, *inputs), _drop_in_step(original, *inputs)):
        assert rel_err(out, ref) < 1e-4
