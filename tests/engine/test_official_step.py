"""one_render_backward: the official training step's gradients with one rendering (2 UNet forwards + 1 backward)."""
import types
import warnings

import pytest
import torch

from ld3m_fast import DDIMSampler, ddim_timesteps, reference
from ld3m_fast.engine.official_step import one_render_backward, render_images, resize
from ld3m_fast.errors import InvalidArgumentError, InvalidTypeError
from tests.engine.test_chain import make_inputs
from tests.helpers.compvis_modules import compvis_ldm
from tests.helpers.compvis_style import CompVisStyleLDM
from tests.helpers.numerics import rel_err


def official_args(**changes):
    """The official scripts' arguments the render and backward helpers read (defaults of a class-conditional run)."""
    return types.SimpleNamespace(**{**dict(sg_batch=2, ddim_steps=10, unconditional_guidance_scale=3.0, res=32,
                                           layer=12, rand_g=False, ffhq=False, ldm_normalize=False), **changes})


def loss_render(sampler, model, latents, f_latents, args):
    """The official step's first half: every chunk rendered without gradients, the images as a leaf."""
    with torch.no_grad():
        images = torch.cat([render_images(sampler, model, part, f_part, args)
                            for part, f_part in zip(torch.split(latents, args.sg_batch),
                                                    torch.split(f_latents, args.sg_batch))])
    return images.detach().requires_grad_(True)


class UNetCalls:
    def __init__(self, model):
        self.count, self._apply = 0, model.apply_model
        model.apply_model = self

    def __call__(self, *args):
        self.count += 1
        return self._apply(*args)


@pytest.mark.parametrize("steps, chunk", [(10, 2), (7, 6)])
def test_gradients_equal_the_official_pattern_with_the_same_noise(steps, chunk):
    model = CompVisStyleLDM(seed=8).double()
    Z, c, w = make_inputs(model, 6, torch.float64, seed=5)
    args = official_args(sg_batch=chunk, ddim_steps=steps)
    seed = 17
    # the drop-in's q_sample draws the start noise chunk by chunk from the global RNG; the reference draws it at once
    torch.manual_seed(seed)
    chunked = torch.cat([torch.randn_like(part) for part in Z.split(chunk)])
    assert torch.equal(chunked, torch.randn(Z.shape, generator=torch.Generator().manual_seed(seed), dtype=Z.dtype))

    calls = UNetCalls(model)
    sampler = DDIMSampler(model, one_render=True)
    torch.manual_seed(seed)
    image_syn = loss_render(sampler, model, c, Z, args)
    loss = (image_syn * w).sum()
    loss.backward()
    one_render_backward(latents=c, f_latents=Z, image_syn=image_syn, G=model, sampler=sampler, args=args, it=0)
    chunks = -(-6 // chunk)
    assert calls.count == 2 * len(ddim_timesteps(steps)) * chunks  # the official pattern's: 3 * steps * chunks

    Zr, cr = (t.detach().clone().requires_grad_(True) for t in (Z, c))
    model.apply_model = calls._apply
    ref_loss = reference.official_backward(model, Zr, cr, lambda images: (images * w).sum(), steps, 3.0,
                                           chunk_size=chunk, seed=seed)
    assert rel_err(loss.detach(), ref_loss) < 1e-12
    assert rel_err(Z.grad, Zr.grad) < 1e-10 and rel_err(c.grad, cr.grad) < 1e-10
    assert Zr.grad.abs().max() > 0 and cr.grad.abs().max() > 0
    assert sampler.kept_renderings == 0


def test_unconditional_models_and_the_official_gradient_bookkeeping():
    """rand_g/FFHQ: latents are the LDM latents themselves (f_latents is the same tensor), no class embedding."""
    model = compvis_ldm(seed=2, n_classes=None).double()
    Z = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)
    w = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    args = official_args(rand_g=True, ddim_steps=5)
    sampler = DDIMSampler(model, one_render=True)
    torch.manual_seed(3)
    image_syn = loss_render(sampler, model, Z, Z, args)
    (image_syn * w).sum().backward()
    one_render_backward(latents=Z, f_latents=Z, image_syn=image_syn, G=model, sampler=sampler, args=args, it=0)
    # the same images rendered once with gradients (the same noise) give the same gradient
    Zr = Z.detach().clone().requires_grad_(True)
    torch.manual_seed(3)
    images = torch.cat([render_images(DDIMSampler(model), model, part, part, args) for part in Zr.split(2)])
    assert rel_err(images, image_syn) < 1e-12
    (images * w).sum().backward()
    assert rel_err(Z.grad, Zr.grad) < 1e-10 and Zr.grad.abs().max() > 0


def test_layer_minus_one_leaves_f_latents_without_gradient():
    model = CompVisStyleLDM(seed=3).double()
    Z, c, w = make_inputs(model, 2, torch.float64, seed=2)
    args = official_args(layer=-1, ddim_steps=5)
    sampler = DDIMSampler(model, one_render=True)
    image_syn = loss_render(sampler, model, c, Z, args)
    (image_syn * w).sum().backward()
    Z.grad = torch.ones_like(Z)
    one_render_backward(latents=c, f_latents=Z, image_syn=image_syn, G=model, sampler=sampler, args=args)
    assert Z.grad is None and c.grad.abs().max() > 0  # as the official helper: f_latents.grad reset, not set


def test_a_sampler_without_kept_renderings_renders_again_once_and_then_keeps_them():
    model = CompVisStyleLDM(seed=3).double()
    Z, c, w = make_inputs(model, 2, torch.float64, seed=2)
    args = official_args(ddim_steps=5)
    sampler = DDIMSampler(model)
    image_syn = loss_render(sampler, model, c, Z, args)
    (image_syn * w).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        one_render_backward(latents=c, f_latents=Z, image_syn=image_syn, G=model, sampler=sampler, args=args)
    assert [str(w.message) for w in caught if "renders again" in str(w.message)] and len(caught) == 1
    assert sampler.one_render and torch.isfinite(Z.grad).all() and c.grad.abs().max() > 0


def test_bad_calls_say_what_to_do():
    model = CompVisStyleLDM(seed=3).double()
    Z, c, _ = make_inputs(model, 2, torch.float64)
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    sampler = DDIMSampler(model, one_render=True)
    with pytest.raises(InvalidArgumentError, match="loss.backward"):
        one_render_backward(latents=c, f_latents=Z, image_syn=images, G=model, sampler=sampler, args=official_args())
    images.grad = torch.ones_like(images)
    with pytest.raises(InvalidTypeError, match="one_render=True"):
        one_render_backward(latents=c, f_latents=Z, image_syn=images, G=model, sampler=object(), args=official_args())
    with pytest.raises(InvalidArgumentError, match="sg_batch"):
        one_render_backward(latents=c, f_latents=Z, image_syn=images, G=model, sampler=sampler, args=object())
    with pytest.raises(InvalidArgumentError, match=r"normalize=\(config.mean, config.std\)"):
        render_images(sampler, model, c, Z, official_args(ldm_normalize=True))


def test_the_official_normalisation_and_a_scripts_own_render_helper():
    model = CompVisStyleLDM(seed=3).double()
    Z, c, w = make_inputs(model, 2, torch.float64, seed=2)
    mean, std = (0.4377, 0.4438, 0.4728), (0.229, 0.224, 0.225)
    sampler = DDIMSampler(model, one_render=True)
    torch.manual_seed(1)
    plain = render_images(sampler, model, c, Z, official_args(ddim_steps=5))
    torch.manual_seed(1)
    normalized = render_images(sampler, model, c, Z, official_args(ddim_steps=5, ldm_normalize=True),
                               normalize=(mean, std))
    m, s = (torch.tensor(v, dtype=plain.dtype)[:, None, None] for v in (mean, std))
    assert rel_err(normalized, (plain - m) / s) < 1e-14
    calls, unet = [], UNetCalls(model)

    def scripts_helper(sampler, G, latents, f_latents, args):  # stands for the script's ldm_latent_to_im_encode
        calls.append(latents.shape[0])
        return render_images(sampler, G, latents, f_latents, args, normalize=(mean, std))
    args = official_args(ddim_steps=5, ldm_normalize=True, sg_batch=1)
    with torch.no_grad():
        image_syn = torch.cat([scripts_helper(sampler, model, p, f, args) for p, f in zip(c.split(1), Z.split(1))])
    image_syn.requires_grad_(True)
    (image_syn * w).sum().backward()
    one_render_backward(latents=c, f_latents=Z, image_syn=image_syn, G=model, sampler=sampler, args=args,
                        render=scripts_helper)
    assert calls == [1, 1, 1, 1]  # two chunks rendered for the loss, the same two replayed in backward
    assert unet.count == 2 * 5 * 2 and c.grad.abs().max() > 0 and Z.grad.abs().max() > 0  # no third rendering


def test_resize_keeps_the_aspect_ratio_and_leaves_the_target_size_alone():
    x = torch.rand(2, 3, 32, 48, dtype=torch.float64)
    assert resize(x, 32) is x
    y = resize(x, 16)
    assert y.shape == (2, 3, 16, 24)
    assert rel_err(y.mean((-1, -2)), x.mean((-1, -2))) < 1e-2  # an average of the pixels, not a crop
