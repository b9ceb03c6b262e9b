"""Train a class-conditional latent diffusion model (the "prior") for a dataset, and sample from it.

``train_prior`` trains, on the CPU if need be:

1. a VQ autoencoder (MSE reconstruction + the codebook/commitment loss; codebook entries
   initialised from encoder outputs and restarted when unused, so the codebook stays in use),
   then rescales its latent space to unit standard deviation — folded into the weights, so the
   model computes the same function and the diffusion sees well-scaled latents;
2. a noise-prediction UNet with a class embedder on the (pre-quantisation) latents, with the
   extra unconditional class learnt by class dropout (for classifier-free guidance) and an EMA of
   the weights, which is what is saved.

The result is an ``ld3m_fast.models.LatentDiffusion`` written with ``save_ldm``, so
``load_ldm(path)``, ``render`` and ``distill`` use it as they use ``cin256-v2``. Training
checkpoints after every epoch (``checkpoint_dir``) and continues from there when run again.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..atomic import write_atomic
from ..devices import resolve_device
from ..errors import InvalidArgumentError, InvalidTypeError
from ..nets.training import exponential_moving_average
from ..seeding import derive_seed, generator


def _as_dataset(data):
    from ..data import ImageDataset, load_dataset

    if isinstance(data, str):
        data = load_dataset(data)
    if not isinstance(data, ImageDataset):
        raise InvalidTypeError(
            f"train_prior needs an ld3m_fast.data.ImageDataset or a dataset name, got {type(data).__name__}")
    return data


def _signed(images_uint8: torch.Tensor, device) -> torch.Tensor:
    return images_uint8.to(device).float() / 127.5 - 1.0


def _vq_parameters(model):
    return list(model.first_stage_model.parameters())


def _diffusion_modules(model) -> torch.nn.ModuleList:
    """What the second stage trains (and averages): the UNet and the class embedder."""
    return torch.nn.ModuleList([model.model, model.cond_stage_model])


@torch.no_grad()
def _restart_dead_codes(quantizer, usage: torch.Tensor, latents: torch.Tensor, gen: torch.Generator) -> int:
    """Replace codebook entries no latent chose with randomly picked recent latent vectors."""
    dead = torch.nonzero(usage == 0).flatten()
    if dead.numel():
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        pick = torch.randint(flat.shape[0], (dead.numel(),), generator=gen).to(flat.device)
        quantizer.embedding.weight[dead] = flat[pick]
    return int(dead.numel())


@torch.no_grad()
def _rescale_latents(model, images: torch.Tensor, device) -> float:
    """Scale the VQ latent space to unit std by folding the factor into quant_conv, codebook and post_quant_conv."""
    fs = model.first_stage_model
    z = torch.cat([fs.encode(_signed(images[s:s + 512], device)) for s in range(0, min(len(images), 4096), 512)])
    std = float(z.std())
    fs.quant_conv.weight.div_(std)
    fs.quant_conv.bias.div_(std)
    fs.quantize.embedding.weight.div_(std)
    fs.post_quant_conv.weight.mul_(std)
    return std


def _save_state(path: Path, state: dict) -> None:
    write_atomic(path, lambda p: torch.save(state, p))


def train_prior(dataset, out, config="small", *, vq_epochs: int = 10, unet_epochs: int = 40, batch_size: int = 128,
                vq_lr: float = 1e-3, unet_lr: float = 5e-4, class_dropout: float = 0.1, ema_decay: float = 0.999,
                seed: int = 0, device=None, checkpoint_dir=None, save_dtype: torch.dtype = torch.float32,
                progress: bool = True):
    """Train a class-conditional LDM on ``dataset`` (an ``ImageDataset`` or a dataset name) and save it to ``out``.

    ``config``: an architecture of ``ld3m_fast.models`` (name or ``LDMConfig``); its image size, channels and
    number of classes are set from the data. ``save_dtype``: the dtype of the saved weights (float16 halves the
    file; ``load_ldm`` converts back to float32). Returns the trained model (frozen, eval mode, float32).
    """
    from . import build_ldm, get_config, save_ldm

    for name, v in (("vq_epochs", vq_epochs), ("unet_epochs", unet_epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidArgumentError(f"{name}={v!r} must be a positive int")
    if not 0 <= class_dropout < 1:
        raise InvalidArgumentError(f"class_dropout={class_dropout} must lie in [0, 1)")
    data = _as_dataset(dataset)
    device = resolve_device(device)
    cfg = get_config(config).replace(image_channels=data.channels, image_size=data.resolution,
                                     n_classes=data.num_classes, name=f"{data.name}-prior")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init") % 2**63)
        model = build_ldm(cfg, device=device)
    state_path = Path(checkpoint_dir) / "prior_state.pt" if checkpoint_dir is not None else None
    state = torch.load(state_path, weights_only=True) if state_path is not None and state_path.exists() else None
    if state is not None and state["config"] != repr(cfg.to_dict()):
        raise InvalidArgumentError(f"{state_path} belongs to another prior configuration; use another checkpoint_dir")

    images, labels = data.images, data.labels
    n = len(labels)
    vq_opt = torch.optim.Adam(_vq_parameters(model), lr=vq_lr)
    diffusion = _diffusion_modules(model)
    unet_opt = torch.optim.AdamW(diffusion.parameters(), lr=unet_lr, weight_decay=0.0)
    ema = exponential_moving_average(diffusion, ema_decay, warmup=False, use_buffers=False)
    ema.update_parameters(diffusion)  # starts from the initial weights
    done_vq = done_unet = 0
    history: list[dict] = []
    if state is not None:
        model.load_state_dict(state["model"])
        vq_opt.load_state_dict(state["vq_opt"])
        unet_opt.load_state_dict(state["unet_opt"])
        ema.load_state_dict(state["ema"])
        done_vq, done_unet, history = state["done_vq"], state["done_unet"], list(state["history"])
        if done_unet and done_vq < vq_epochs:
            raise InvalidArgumentError(
                f"{state_path} finished the autoencoder after {done_vq} epochs and has trained the UNet "
                f"on it; vq_epochs={vq_epochs} cannot be reached any more: use another checkpoint_dir")

    def checkpoint():
        if state_path is None:
            return
        state_path.parent.mkdir(parents=True, exist_ok=True)
        _save_state(state_path, {"config": repr(cfg.to_dict()), "model": model.state_dict(), "vq_opt": vq_opt.state_dict(),
                                 "unet_opt": unet_opt.state_dict(), "ema": ema.state_dict(), "done_vq": done_vq,
                                 "done_unet": done_unet, "history": history})

    fs = model.first_stage_model
    steps_per_epoch = math.ceil(n / batch_size)
    bar = tqdm(total=(vq_epochs + unet_epochs) * steps_per_epoch, initial=(done_vq + done_unet) * steps_per_epoch,
               desc="prior", disable=not progress)
    # --- stage 1: the VQ autoencoder ---------------------------------------------------------------------------------
    if done_vq == 0:
        with torch.no_grad():
            first = fs.encode(_signed(images[:min(n, 4096)], device))
            _restart_dead_codes(fs.quantize, torch.zeros(fs.quantize.n_e, device=device), first,
                                generator(seed, "codebook-init"))
    model.train()
    while done_vq < vq_epochs:
        usage = torch.zeros(fs.quantize.n_e, device=device)
        total = 0.0
        order = torch.randperm(n, generator=generator(seed, "vq", done_vq))
        for start in range(0, n, batch_size):
            x = _signed(images[order[start:start + batch_size]], device)
            z = fs.encode(x)
            zq, codebook_loss, (_, _, idx) = fs.quantize(z)
            recon = fs.decode(zq, force_not_quantize=True)
            loss = F.mse_loss(recon, x) + codebook_loss
            vq_opt.zero_grad(set_to_none=True)
            loss.backward()
            vq_opt.step()
            usage += torch.bincount(idx, minlength=fs.quantize.n_e)
            total += float(loss.detach()) * len(x)
            bar.update()
        restarted = _restart_dead_codes(fs.quantize, usage, z.detach(), generator(seed, "restart", done_vq))
        done_vq += 1
        history.append({"stage": "vq", "epoch": done_vq, "loss": total / n, "codes_restarted": restarted})
        bar.set_postfix(stage="vq", loss=f"{total / n:.4f}")
        checkpoint()
    if done_unet == 0 and "latent_std" not in {k for h in history for k in h}:
        history.append({"stage": "rescale", "latent_std": _rescale_latents(model, images, device)})
        checkpoint()

    # --- stage 2: the diffusion UNet and the class embedder on the latents ---------------------------------------------
    fs.requires_grad_(False)
    fs.eval()
    with torch.no_grad():
        latents = torch.cat([fs.encode(_signed(images[s:s + 512], device)) for s in range(0, n, 512)])
    labels_dev = labels.to(device)
    uncond = cfg.n_classes
    while done_unet < unet_epochs:
        gen = generator(seed, "unet", done_unet)
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            z0 = latents[idx]
            t = torch.randint(cfg.num_timesteps, (len(idx),), generator=gen).to(device)
            noise = torch.randn(z0.shape, generator=gen).to(device)
            drop = torch.rand(len(idx), generator=gen).to(device) < class_dropout
            y = torch.where(drop, torch.full_like(labels_dev[idx], uncond), labels_dev[idx])
            eps = model.apply_model(model.q_sample(z0, t, noise), t, model.get_learned_conditioning(y))
            loss = F.mse_loss(eps, noise)
            unet_opt.zero_grad(set_to_none=True)
            loss.backward()
            unet_opt.step()
            ema.update_parameters(diffusion)
            total += float(loss.detach()) * len(idx)
            bar.update()
        done_unet += 1
        history.append({"stage": "unet", "epoch": done_unet, "loss": total / n})
        bar.set_postfix(stage="unet", loss=f"{total / n:.4f}")
        checkpoint()
    bar.close()

    with torch.no_grad():
        for p, averaged in zip(diffusion.parameters(), ema.module.parameters()):
            p.copy_(averaged)
    model.requires_grad_(False)
    model.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = model if save_dtype == torch.float32 else copy.deepcopy(model).to(save_dtype)
    write_atomic(out, lambda p: save_ldm(saved, p))
    model.training_history = history
    return model


@torch.no_grad()
def sample_prior(model, labels: torch.Tensor, steps: int = 50, guidance: float = 3.0, seed: int = 0,
                 batch_size: int = 500) -> torch.Tensor:
    """Class-conditional samples (images in [0, 1]) by plain DDIM from Gaussian noise with guidance."""
    from ..engine.sampler import DDIMSampler

    sampler = DDIMSampler(model)
    shape = (model.channels, model.image_size, model.image_size)
    out = []
    for i, start in enumerate(range(0, len(labels), batch_size)):
        y = labels[start:start + batch_size].to(model.device)
        c = model.get_learned_conditioning(y)
        uc = model.get_learned_conditioning(torch.full_like(y, model.n_classes))  # the unconditional class
        z = sampler.sample(S=steps, batch_size=len(y), shape=shape, conditioning=c, verbose=False,
                           unconditional_guidance_scale=guidance, unconditional_conditioning=uc,
                           generator=generator(seed, "sample", i))
        x = model.first_stage_model.decode(z)
        out.append(((x + 1) / 2).clamp(0, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstruction_error(model, images_uint8: torch.Tensor, batch_size: int = 512) -> dict:
    """Mean squared error (images in [0, 1]) and PSNR of encode → quantise → decode."""
    fs, device = model.first_stage_model, model.device
    se, count = 0.0, 0
    for s in range(0, len(images_uint8), batch_size):
        x = _signed(images_uint8[s:s + batch_size], device)
        recon = fs.decode(fs.encode(x))
        se += float(((recon.clamp(-1, 1) - x) / 2).pow(2).sum())
        count += x.numel()
    mse = se / count
    return {"mse": mse, "psnr_db": 10 * math.log10(1 / mse)}


def prior_report(model, train, test, *, samples_per_class: int = 100, steps: int = 50, guidance: float = 3.0,
                 classifier_images_per_class: int = 400, classifier_epochs: int = 20, classifier_width: int = 64,
                 seed: int = 0, device=None, progress: bool = True) -> dict:
    """How good a prior is: autoencoder reconstruction error on ``test``, and the accuracy a ConvNet trained on real
    ``train`` images (``classifier_images_per_class`` random ones per class) reaches on real ``test`` images and on
    the prior's class-conditional samples.

    Returns the numbers and the samples (images in [0, 1] and their labels)."""
    from ..evaluation import default_lr
    from ..nets import get_network
    from ..nets.training import test_accuracy, train_network

    test = _as_dataset(test)
    train = _as_dataset(train).per_class(classifier_images_per_class, seed=seed)
    labels = torch.arange(train.num_classes).repeat_interleave(samples_per_class)
    samples = sample_prior(model, labels, steps=steps, guidance=guidance, seed=seed)
    net = get_network("ConvNet", train.channels, train.num_classes, train.resolution, width=classifier_width,
                      seed=derive_seed(seed, "clf"))
    net = train_network(net, train.images, train.labels, epochs=classifier_epochs, lr=default_lr("ConvNet", "dc"),
                        schedule="dc", normalize=(train.mean, train.std), device=device, seed=seed, progress=progress)
    norm = (train.mean, train.std)
    return {"reconstruction": reconstruction_error(model, test.images),
            "classifier_accuracy_real_test": test_accuracy(net, test.images, test.labels, normalize=norm, device=device),
            "classifier_accuracy_samples": test_accuracy(net, samples, labels, normalize=norm, device=device),
            "samples_per_class": samples_per_class, "sampling_steps": steps, "guidance": guidance,
            "classifier_images_per_class": classifier_images_per_class, "classifier_epochs": classifier_epochs,
            "classifier_width": classifier_width, "samples": samples, "sample_labels": labels}
