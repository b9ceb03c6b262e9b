"""Training a network on a (small) image set, as the field evaluates distilled data.

``train_network`` runs SGD with momentum and weight decay, DSA on every batch and one of two schedules:
  glad: linear warm-up of the learning rate over the first half of the epochs, cosine decay over the second
        half, and an exponential moving average (EMA) of the weights updated once per epoch; the EMA model is
        returned (GLaD/LD3M protocol, docs/design.md §8).
  dc:   the DC/DSA/DM protocol: constant learning rate, x0.1 after the first half, no EMA.
  constant: one learning rate throughout, no EMA (MTT's expert trajectories).
Order inside a batch: normalise, then DSA, as in the DC/DSA/GLaD code (their datasets are stored normalised,
so crop/cutout/rotate fill with the mean colour and brightness shifts are in units of std).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from ..augment import DSA_STRATEGY, DSAParams, parse_strategy
from ..augment import dsa as apply_dsa
from ..data.pairs import check_images_labels
from ..devices import resolve_device
from ..errors import InvalidArgumentError
from ..normalization import check_normalization, to_unit
from ..normalization import normalize as normalize_images

SCHEDULES = ("glad", "dc", "constant")


def glad_lr_factor(epoch: int, epochs: int) -> float:
    """Learning-rate factor of epoch ``epoch`` (0-based) under the GLaD schedule.

    The GLaD code steps a LinearLR(1e-7 -> 1, E//2 steps) after each epoch up to epoch E//2 and a cosine
    (T = E//2) from then on: epochs 0..E//2 run at 1e-7 + (1 - 1e-7) * epoch / (E//2), epochs E//2 and E//2 + 1
    at the full rate, epoch E//2 + 1 + j at (1 + cos(pi * j / (E//2))) / 2.
    """
    half = epochs // 2
    if half == 0:
        return 1.0
    if epoch <= half:
        return 1e-7 + (1 - 1e-7) * epoch / half
    j = epoch - half - 1
    return 0.5 * (1 + math.cos(math.pi * j / half))


def dc_lr_factor(epoch: int, epochs: int) -> float:
    """Learning-rate factor under the DC schedule: 1 up to epoch E//2, then 0.1."""
    return 1.0 if epoch <= epochs // 2 else 0.1


def constant_lr_factor(epoch: int, epochs: int) -> float:
    return 1.0


_FACTORS = {"glad": glad_lr_factor, "dc": dc_lr_factor, "constant": constant_lr_factor}


def exponential_moving_average(module: nn.Module, decay: float, warmup: bool = True,
                               use_buffers: bool = True) -> AveragedModel:
    """An ``AveragedModel`` keeping an exponential moving average of ``module``'s weights.

    Its first ``update_parameters`` copies the weights. With ``warmup``, the k-th update after that uses decay
    ``min(decay, k / (k + 1))``: a uniform average until the decay reaches ``decay`` (ema_pytorch's warm-up with
    power 1, which the GLaD code uses with 0.995, updating once per epoch); without, ``decay`` throughout.
    With ``use_buffers``, floating-point buffers are averaged too and integer ones copied.
    """
    if not 0.0 <= decay < 1.0:
        raise InvalidArgumentError(f"ema_decay must be in [0, 1), got {decay!r}")

    def average(avg: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        if not avg.is_floating_point():
            return current
        k = float(updates)
        return torch.lerp(avg, current, 1.0 - (min(decay, k / (k + 1)) if warmup else decay))

    return AveragedModel(module, avg_fn=average, use_buffers=use_buffers)


def _normalizer(normalize, channels: int):
    """(mean, std) -> a function x -> (x - mean) / std; None -> identity."""
    if normalize is None or normalize is False:
        return lambda x: x
    try:
        mean, std = normalize
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"normalize must be (mean, std) with one value or one per channel, got {normalize!r}") from None
    mean, std = check_normalization(mean, std, channels)
    return lambda x: normalize_images(x, mean, std)


def train_network(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
                  batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 5e-4, schedule: str = "glad",
                  ema_decay: float | None = 0.995, dsa: bool = True, dsa_strategy: str = DSA_STRATEGY,
                  dsa_params: DSAParams | None = None, normalize: Sequence | None = None, device=None,
                  seed: int = 0, progress: bool = False,
                  on_epoch_end: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Train ``net`` on ``images`` (N, C, H, W, floats in [0, 1], or uint8) and integer ``labels`` with cross-entropy.

    schedule: 'glad' (warm-up + cosine, see ``glad_lr_factor``), 'dc' (x0.1 after epoch epochs//2) or
      'constant'. momentum/weight_decay: SGD's (MTT experts: momentum 0, weight_decay 0 in the MTT code).
    ema_decay: with schedule 'glad', the EMA decay (None disables the EMA); the other schedules have no EMA.
    normalize: (mean, std) applied to every batch before DSA; None leaves the images as they are.
    on_epoch_end(epoch, net): called after every epoch with the network being trained (e.g. to record MTT
      expert trajectories); not the EMA copy.
    Deterministic for a seed (shuffling, DSA and dropout draw from a forked RNG; the global one is left as it was).
    Returns the EMA model (in eval mode) when an EMA is used, else ``net`` itself (trained in place).
    """
    from tqdm.auto import tqdm

    check_images_labels(images, labels, unit_range=False)  # distilled pixels may leave [0, 1]
    images, labels = images.detach(), labels.detach()
    if dsa:
        parse_strategy(dsa_strategy)  # an unknown operation fails here, not in the first batch
    if schedule not in SCHEDULES:
        raise InvalidArgumentError(f"schedule={schedule!r} is unknown; use one of {SCHEDULES}")
    if not isinstance(epochs, int) or epochs < 1:
        raise InvalidArgumentError(f"epochs must be a positive int, got {epochs!r}")
    if not lr > 0:
        raise InvalidArgumentError(f"lr must be positive, got {lr!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    device = resolve_device(device)
    net = net.to(device)
    dtype = next(iter(net.parameters())).dtype
    norm = _normalizer(normalize, images.shape[1])
    labels = labels.long()
    factor = _FACTORS[schedule]
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    lr_schedule = LambdaLR(optimizer, lambda epoch: factor(epoch, epochs))
    ema = exponential_moving_average(net, ema_decay) if schedule == "glad" and ema_decay is not None else None
    n = images.shape[0]
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.random.default_generator.manual_seed(int(seed))
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(int(seed))
        net.train()
        for epoch in tqdm(range(epochs), desc="train", disable=not progress, leave=False):
            order = torch.randperm(n)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size].to(images.device)
                x = norm(to_unit(images[idx], device, dtype))
                y = labels[idx.to(labels.device)].to(device, non_blocking=True)
                if dsa:
                    x = apply_dsa(x, dsa_strategy, params=dsa_params)
                loss = F.cross_entropy(net(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            lr_schedule.step()
            if ema is not None:
                ema.update_parameters(net)
            if on_epoch_end is not None:
                on_epoch_end(epoch, net)
    return ema.module.eval().requires_grad_(False) if ema is not None else net


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, *, batch_size: int = 256, normalize=None,
            device=None) -> torch.Tensor:
    """Predicted class of every image (eval mode, batched); returns a CPU tensor of class indices."""
    device = resolve_device(device)
    net = net.to(device)
    dtype = next(iter(net.parameters())).dtype
    norm = _normalizer(normalize, images.shape[1])
    was_training = net.training
    net.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = norm(to_unit(images[start:start + batch_size], device, dtype))
        out.append(net(x).argmax(dim=1).cpu())
    net.train(was_training)
    return torch.cat(out)


def test_accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 256,
                  normalize=None, device=None) -> float:
    """Fraction of ``images`` that ``net`` (in eval mode) classifies as ``labels``."""
    check_images_labels(images, labels)
    pred = predict(net, images, batch_size=batch_size, normalize=normalize, device=device)
    return float((pred == labels.cpu().long()).double().mean())


test_accuracy.__test__ = False  # not a pytest test, despite its name

__all__ = ["train_network", "test_accuracy", "predict", "glad_lr_factor", "dc_lr_factor", "exponential_moving_average",
           "SCHEDULES"]
