"""One rendering per training step for official-style LD3M loops: 2 UNet forwards + 1 backward per step, not 3 + 1.

The official training step (DM, DC and MTT alike) renders the synthetic images without gradients — its render
helper ``ldm_latent_to_im_encode(sampler, G, latents, f_latents, args)``, ``args.sg_batch`` images at a time, under
``torch.no_grad()`` — computes the loss on them and its gradient w.r.t. the images, then calls its backward helper
``ldm_backward_encode(latents=, f_latents=, image_syn=, G=, sampler=, args=, it=)``, which renders every chunk again
with gradients (each UNet call checkpointed) and back-propagates ``image_syn.grad``: 3 UNet forwards + 1 backward
per denoising step.

``one_render_backward`` has the backward helper's call shape and effect (it sets ``latents.grad`` and, for the
class-conditional model with ``args.layer != -1``, ``f_latents.grad``, as the official helper does), but renders
nothing again: a ``DDIMSampler(G, one_render=True)`` kept the chain of each chunk's no-grad rendering (its per-step
latents), and the re-rendering inside ``one_render_backward`` replays it (``DDIMSampler.replaying``), so
back-propagation is the chain's backward — 1 recomputed forward + 1 backward per step, 2 forwards + 1 backward in
all. The decoder runs as in the official code (without gradients for the loss, with gradients in the helper). The
gradients are the official pattern's with the same noise: those of the images the loss was computed on (the official
re-rendering draws new start noise). Memory: the kept chains hold ``S`` latents per image until the helper runs
(``latent_stride=k`` on the sampler keeps ``S/k``).

The change to an official script, after its ``from glad_utils import *`` (which puts ``ldm`` on the path)::

    import functools
    from ld3m_fast import patch_ldm
    from ld3m_fast.engine.official_step import one_render_backward
    patch_ldm(accelerate=True, one_render=True)  # the script's DDIMSampler(G): ld3m_fast's, with G accelerated
    ldm_backward_encode = functools.partial(one_render_backward, render=ldm_latent_to_im_encode)

With ``render=`` the helper back-propagates through the script's own render helper (its resize and normalisation);
without it, through ``render_images``, which does what the official one does (``normalize=(mean, std)`` for
``args.ldm_normalize``).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InvalidArgumentError, InvalidTypeError
from .sampler import DDIMSampler

OFFICIAL_RESOLUTION = 256  # the official render helper resizes its images unless args.res is this


def _model(G):
    return G.module if isinstance(G, nn.DataParallel) else G


def _unconditional(args) -> bool:
    """The official helpers' switch: the random-weight and FFHQ LDMs are unconditional."""
    return bool(getattr(args, "rand_g", False) or getattr(args, "ffhq", False))


def unconditional_class(model) -> int:
    """The id of the unconditional class: the class embedder's last row (1000 for cin256-v2, as the official code
    hard-codes)."""
    embedding = getattr(getattr(model, "cond_stage_model", None), "embedding", None)
    return 1000 if embedding is None else embedding.num_embeddings - 1


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """The official code's ``torchvision.transforms.functional.resize(images, size)`` on a batch: the shorter side
    becomes ``size`` (aspect ratio kept), bilinear with antialiasing (torchvision's default for tensors)."""
    h, w = images.shape[-2:]
    if h <= w:
        out = (size, int(size * w / h))
    else:
        out = (int(size * h / w), size)
    if out == (h, w):
        return images
    return F.interpolate(images, size=out, mode="bilinear", align_corners=False, antialias=True)


def render_images(sampler, G, latents: torch.Tensor, f_latents: torch.Tensor | None, args,
                  normalize=None) -> torch.Tensor:
    """What the official render helper computes: ``latents`` are the class embeddings (the unconditional models:
    the latents themselves), ``f_latents`` the latents; guided DDIM with ``args.ddim_steps`` steps and
    ``args.unconditional_guidance_scale``, ``decode_first_stage``, resize to ``args.res`` (unless 256), ``(x+1)/2``
    clamped to [0, 1], and with ``args.ldm_normalize`` ``(x − mean)/std`` for ``normalize=(mean, std)`` (the official
    scripts' ``config.mean, config.std``). The latents' own shape is passed as ``shape``."""
    if getattr(args, "ldm_normalize", False) and normalize is None:
        raise InvalidArgumentError("args.ldm_normalize is set: pass normalize=(config.mean, config.std), the official "
                                   "scripts' normalisation, or render=ldm_latent_to_im_encode (the script's own helper)")
    model = _model(G)
    n = latents.shape[0]
    if _unconditional(args):
        z = sampler.sample(S=args.ddim_steps, batch_size=n, shape=list(latents.shape[1:]), verbose=False, x_T=latents,
                           eta=0.0)
    else:
        labels = torch.full((n,), unconditional_class(model), dtype=torch.long, device=model.device)
        uc = model.get_learned_conditioning({model.cond_stage_key: labels})
        z = sampler.sample(S=args.ddim_steps, conditioning=latents, batch_size=n, shape=list(f_latents.shape[1:]),
                           verbose=False, x_T=f_latents, unconditional_guidance_scale=args.unconditional_guidance_scale,
                           unconditional_conditioning=uc, eta=0.0)
    images = model.decode_first_stage(z)
    if int(args.res) != OFFICIAL_RESOLUTION:
        images = resize(images, int(args.res))
    images = torch.clamp((images + 1.0) / 2.0, min=0.0, max=1.0)
    if getattr(args, "ldm_normalize", False):
        mean, std = (torch.as_tensor(v, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
                     for v in normalize)
        images = (images - mean) / std
    return images


def _grad(leaf: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(leaf) if leaf.grad is None else leaf.grad


def one_render_backward(latents=None, f_latents=None, image_syn=None, G=None, sampler=None, args=None, it=None, *,
                        render: Callable | None = None, normalize=None) -> None:
    """The official backward helper's effect without its second rendering (see the module docstring).

    ``image_syn`` carries ``image_syn.grad`` (after ``loss.backward()``); ``args`` needs ``sg_batch``, ``ddim_steps``,
    ``unconditional_guidance_scale`` and ``res`` (and reads ``rand_g``, ``ffhq``, ``layer``, ``ldm_normalize`` as the
    official helpers do). ``render(sampler, G=, f_latents=, latents=, args=)`` is the render helper (default
    ``render_images`` with ``normalize``).
    """
    if image_syn is None or image_syn.grad is None:
        raise InvalidArgumentError("image_syn has no gradient: call loss.backward() on a loss of image_syn first "
                                   "(image_syn = rendered_images.detach().requires_grad_(True), as the official step)")
    if not isinstance(sampler, DDIMSampler):
        raise InvalidTypeError(f"sampler is a {type(sampler).__name__}; one_render_backward needs an "
                               "ld3m_fast.DDIMSampler (DDIMSampler(G, one_render=True), or patch_ldm(one_render=True) "
                               "before the script builds its sampler): the official sampler keeps no rendering")
    missing = [a for a in ("sg_batch", "ddim_steps", "res") if not hasattr(args, a)]
    if missing:
        raise InvalidArgumentError(f"args lacks {missing}: pass the official script's args (sg_batch, ddim_steps, "
                                   "unconditional_guidance_scale, res)")
    replay = sampler.one_render
    if not replay:
        sampler.one_render = True
        warnings.warn("ld3m_fast: the sampler kept no rendering (it was made without one_render=True), so this step "
                      "renders again; from the next step on it keeps its no-grad renderings and renders once",
                      UserWarning, stacklevel=2)
    render = functools.partial(render_images, normalize=normalize) if render is None else render
    unconditional = _unconditional(args)
    if f_latents is not None:
        f_latents.grad = None
    sources = latents if f_latents is None else f_latents
    chunk = int(args.sg_batch)
    grads, f_grads = [], []
    with sampler.replaying() if replay else contextlib.nullcontext():
        for part, f_part, image_grad in zip(torch.split(latents, chunk), torch.split(sources, chunk),
                                            torch.split(image_syn.grad, chunk)):
            leaf = part.detach().clone().requires_grad_(True)
            f_leaf = f_part.detach().clone().requires_grad_(True)
            images = render(sampler, G=G, f_latents=f_leaf, latents=leaf, args=args)
            images.backward(image_grad)
            grads.append(_grad(leaf))
            f_grads.append(_grad(f_leaf))
    latents.grad = torch.cat(grads)
    if getattr(args, "layer", 0) != -1 and not unconditional and f_latents is not None:
        f_latents.grad = torch.cat(f_grads)
