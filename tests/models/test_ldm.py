"""ld3m_fast.models: the LDM object, its CompVis surface, training use, and the engine on top of it."""
import math

import pytest
import torch

from tests.helpers.numerics import rel_err
from ld3m_fast import DDIMSampler, reference, render
from ld3m_fast.engine.latent_model import as_latent_model
from ld3m_fast.models import LDMConfig, build_ldm, get_config, load_ldm
from ld3m_fast.engine.rendering import make_generator, start_noise
from ld3m_fast.engine.schedule import linear_alphas_cumprod


@pytest.fixture(scope="module")
def tiny64():
    return load_ldm("tiny", dtype=torch.float64)


def test_named_configs_and_latent_geometry():
    cin = get_config("cin256-v2")
    assert (cin.latent_size, cin.latent_channels, cin.vq.factor, cin.n_classes + 1) == (64, 3, 4, 1001)
    small = get_config("small")
    assert (small.image_channels, small.image_size, small.latent_size) == (1, 28, 7)
    assert LDMConfig.from_dict(cin.to_dict()) == cin
    with pytest.raises(ValueError, match="cross_attention"):
        cin.replace(unet=cin.unet.__class__(cross_attention=(True,)))
    with pytest.raises(ValueError, match="divisible"):
        cin.replace(image_size=30)


def test_schedule_buffers_match_the_engine_schedule(tiny64):
    acp = linear_alphas_cumprod()
    assert rel_err(tiny64.alphas_cumprod, acp) < 1e-15  # float64 model: buffers widened from CompVis's float32
    m = build_ldm("tiny")
    assert m.alphas_cumprod.dtype == torch.float32 and rel_err(m.alphas_cumprod, acp) < 1e-7
    assert m.num_timesteps == 1000 and m.cond_stage_key == "class_label" and m.device.type == "cpu"
    half = build_ldm("tiny").to(torch.bfloat16)
    assert half.alphas_cumprod.dtype == torch.float32 and torch.equal(half.alphas_cumprod, m.alphas_cumprod)


def test_compvis_surface(tiny64):
    m = tiny64
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 3, 10])
    c = m.get_learned_conditioning({"class_label": labels})
    assert c.shape == (3, 1, 16) and torch.equal(c, m.get_learned_conditioning(labels))
    assert torch.equal(c[2], m.unconditional_embedding())
    x = torch.randn(3, 3, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 10, 999])
    eps = m.apply_model(x, t, c)
    assert eps.shape == x.shape
    assert torch.equal(eps, m.apply_model(x, t, [c])) and torch.equal(eps, m.apply_model(x, t, {"c_crossattn": [c]}))
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    acp = m.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    assert rel_err(m.q_sample(x, t, noise), acp.sqrt() * x + (1 - acp).sqrt() * noise) < 1e-15
    with m.ema_scope():
        pass


def test_first_stage_semantics(tiny64):
    """encode → pre-quantisation latent; quantize → (zq, loss, (None, None, idx)) straight-through; decode quantises."""
    fs = tiny64.first_stage_model
    gen = torch.Generator().manual_seed(1)
    img = (torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    h = fs.encode(img)
    assert h.shape == (2, 3, 8, 8)
    zq, loss, (p, e, idx) = fs.quantize(h)
    codebook = fs.quantize.embedding.weight
    assert p is None and e is None and idx.shape == (2 * 8 * 8,)
    nearest = torch.cdist(h.detach().permute(0, 2, 3, 1).reshape(-1, 3), codebook).argmin(1)
    assert torch.equal(idx, nearest)
    assert rel_err(zq, codebook[idx].reshape(2, 8, 8, 3).permute(0, 3, 1, 2)) < 1e-15
    (g,) = torch.autograd.grad((zq * h.detach()).sum(), img, retain_graph=True)
    (g_direct,) = torch.autograd.grad((h * h.detach()).sum(), img)
    assert rel_err(g, g_direct) < 1e-12  # straight-through: d zq / d h = identity
    assert torch.equal(fs.decode(h), fs.decode(zq, force_not_quantize=True))
    assert torch.equal(tiny64.decode_first_stage(h), fs.decode(h))


def test_build_gives_trainable_parameters_and_a_training_step_moves_them():
    m = build_ldm("tiny")
    assert all(p.requires_grad for p in m.parameters())
    frozen = load_ldm("tiny")
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    gen = torch.Generator().manual_seed(2)
    img = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    zq, qloss, _ = m.first_stage_model.quantize(m.first_stage_model.encode(img))
    rec = m.first_stage_model.decode(zq, force_not_quantize=True)
    x0 = zq.detach()
    t = torch.tensor([5, 700])
    noise = torch.randn(x0.shape, generator=gen)
    eps = m.apply_model(m.q_sample(x0, t, noise), t, m.get_learned_conditioning(torch.tensor([1, 2])))
    loss = (rec - img).abs().mean() + qloss + ((eps - noise) ** 2).mean()
    loss.backward()
    opt.step()
    moved = {n.split(".")[0] for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"model", "first_stage_model", "cond_stage_model"}


def test_small_config_runs_on_odd_7x7_latents():
    """1×28×28 images, VQ f = 4 → 7×7×3 latents; the UNet handles sizes its levels do not divide."""
    m = build_ldm("small").double()
    gen = torch.Generator().manual_seed(3)
    img = torch.rand(2, 1, 28, 28, generator=gen, dtype=torch.float64) * 2 - 1
    h = m.first_stage_model.encode(img)
    assert h.shape == (2, 3, 7, 7)
    x = h.detach().requires_grad_(True)
    c = m.get_learned_conditioning(torch.tensor([0, 9]))
    eps = m.apply_model(x, torch.tensor([3, 600]), c)
    assert eps.shape == (2, 3, 7, 7) and torch.isfinite(eps).all()
    eps.square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert m.decode_first_stage(h).shape == (2, 1, 28, 28)


def _problem(model, n, seed):
    gen = torch.Generator().manual_seed(seed)
    size = model.config.latent_size
    Z = torch.randn(n, 3, size, size, generator=gen, dtype=torch.float64).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(n) % model.n_classes).detach().clone()
    c = (c + 0.1 * torch.randn(c.shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    w = torch.randn(n, 3, model.config.image_size, model.config.image_size, generator=gen, dtype=torch.float64)
    return Z, c, w


@pytest.mark.parametrize("skip", ["official", "paper"])
def test_render_gradients_match_unrolled_autograd(tiny64, skip):
    """``ld3m_fast.render`` on a loaded LDM: images and gradients equal plain autograd through the unrolled chain."""
    assert as_latent_model(tiny64).latent_channels == 3
    Z, c, w = _problem(tiny64, 3, seed=4)
    images = render(tiny64, Z, c, 5, skip=skip, seed=4, chunk_size=2)
    gZ, gc = torch.autograd.grad((images * w).sum(), (Z, c))
    ref = reference.render_unrolled(tiny64, Z, c, 5, skip=skip, noise=start_noise(Z, make_generator(4)))
    rZ, rc = torch.autograd.grad((ref * w).sum(), (Z, c))
    assert rel_err(images, ref) < 1e-10 and rel_err(gZ, rZ) < 1e-10 and rel_err(gc, rc) < 1e-10
    assert rZ.abs().max() > 0 and rc.abs().max() > 0


def test_ddim_sampler_runs_the_official_algorithm(tiny64):
    Z, c, _ = _problem(tiny64, 2, seed=5)
    uc = tiny64.get_learned_conditioning(torch.full((2,), tiny64.n_classes))
    sampler = DDIMSampler(tiny64)
    torch.manual_seed(6)
    out = sampler.sample(4, 2, (3, 8, 8), conditioning=c, x_T=Z, unconditional_guidance_scale=3.0,
                         unconditional_conditioning=uc, verbose=False)
    torch.manual_seed(6)  # q_sample draws its noise from the global RNG, as CompVis's does
    noise = torch.randn_like(Z)
    ref = reference.render_unrolled(tiny64, Z, c, 4, noise=noise, return_latents=True)
    assert rel_err(out, ref) < 1e-10
    gZ, = torch.autograd.grad(out.square().sum(), Z)
    rZ, = torch.autograd.grad(ref.square().sum(), Z)
    assert rel_err(gZ, rZ) < 1e-10


def _fast_random_init(model, seed):
    """Fill a meta-built model's parameters from one random buffer (per-tensor init of 457 M values takes ~10 s).

    (``to_empty`` leaves the schedule buffers valid: ``LatentDiffusion._apply`` recomputes them.)"""
    model.to_empty(device="cpu")
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    flat = torch.randn(sum(p.numel() for p in params), generator=gen)
    start = 0
    with torch.no_grad():
        for p in params:
            chunk = flat[start:start + p.numel()].view_as(p)
            start += p.numel()
            p.copy_(1 + 0.1 * chunk if p.dim() == 1 else chunk / math.sqrt(p[0].numel()))
    return model


def test_cin256_v2_full_size_unet_forward_smoke():
    """One forward of the full-size cin256-v2 UNet (400.9 M parameters) on one 64×64×3 latent, on the CPU."""
    model = _fast_random_init(build_ldm("cin256-v2", device="meta"), seed=0).requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 64, 64, generator=gen)
    c = model.get_learned_conditioning(torch.tensor([1000]))
    with torch.no_grad():
        eps = model.apply_model(x, torch.tensor([501]), c)
    assert eps.shape == (1, 3, 64, 64) and torch.isfinite(eps).all() and eps.std() > 0
