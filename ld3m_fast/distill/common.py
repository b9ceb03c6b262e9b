"""What the three algorithms share: the run context, the fresh network, augmentation and the update step.

Every algorithm updates the synthetic set the same way: render the images once (with the engine's
recomputing chain in latent space), compute the loss on a detached copy, check it, and
back-propagate its image gradient through the single rendering to ``Z`` and ``c`` (or to the
pixels). The official code instead renders without gradients, then renders every chunk again
to back-propagate; here one rendering serves both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..seeding import generator
from .config import DistillConfig
from .real_data import RealData


class DistillationDiverged(RuntimeError):
    """The loss (or a gradient) became NaN/Inf; ``iteration`` says when, ``last_good`` holds the state before."""

    def __init__(self, iteration: int, what: str, last_good=None):
        super().__init__(f"{what} is NaN/Inf at iteration {iteration}: distillation stopped; the synthetic set of "
                         f"the last good iteration ({iteration - 1}) is kept (`.last_good`, and the checkpoint if "
                         "checkpoint_dir is set). Lower the learning rate or check the data")
        self.iteration, self.last_good = iteration, last_good


@dataclass
class Context:
    """One distillation run's settings, data, synthetic set and optimiser."""

    cfg: DistillConfig
    real: RealData
    synthetic: object                  # LatentSynthetic | PixelSynthetic
    device: torch.device
    optimizer: torch.optim.Optimizer | None = None
    group: object = None               # ld3m_fast.distributed.Group when sharded by class, else None

    @property
    def classes(self) -> list[int]:
        """The classes this process updates (all of them, unless the run is sharded by class)."""
        return self.synthetic.classes

    def class_slice(self, k: int) -> slice:
        """Where class ``k``'s images lie in the synthetic set."""
        start = self.synthetic.classes.index(k) * self.cfg.ipc
        return slice(start, start + self.cfg.ipc)

    def reduce_sum(self, value: float) -> float:
        """``value`` summed over the ranks of a sharded run (itself otherwise)."""
        if self.group is None:
            return value
        from ..distributed import all_reduce_sum
        return all_reduce_sum(value, self.group)

    def gather_images(self, images: torch.Tensor) -> torch.Tensor:
        """The images of all classes, in class order (this process's own when the run is not sharded)."""
        if self.group is None:
            return images
        from ..distributed import all_gather_rows
        return all_gather_rows(images, self.group)

    def own_rows(self) -> slice:
        """Where this process's images lie among the images of all classes."""
        start = self.classes[0] * self.cfg.ipc
        return slice(start, start + len(self.classes) * self.cfg.ipc)

    def batch_generator(self, it: int, *keys) -> torch.Generator:
        """The generator that picks iteration ``it``'s real images (per class ``keys``)."""
        return generator(self.cfg.seed, it, "real", *keys)

    def step_on_images(self, it: int, loss_fn: Callable, render_keys: tuple = ()) -> float:
        """Render once, get the loss and its gradient w.r.t. the images, back-propagate through the rendering, step.

        ``loss_fn(images)`` returns the loss (its gradient is taken by autograd) or a pair
        ``(loss, image_gradient)`` when the algorithm approximates the gradient itself (MTT).
        """
        rendered = self.synthetic.images(it, *render_keys)
        images = rendered.detach().requires_grad_(True)
        out = loss_fn(images)
        loss, grad = out if isinstance(out, tuple) else (out, None)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DistillationDiverged(it, "the loss")
        if grad is None:
            (grad,) = torch.autograd.grad(loss, images)
        self.optimizer.zero_grad(set_to_none=True)
        rendered.backward(grad)
        self.check_gradients(it)
        self.optimizer.step()
        return value

    def check_gradients(self, it: int) -> None:
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    raise DistillationDiverged(it, "a gradient of the synthetic set")


class Algorithm:
    """A distillation algorithm: ``loss`` scores images (no side effects), ``iteration`` updates the set."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def loss(self, images: torch.Tensor, it: int) -> torch.Tensor:
        raise NotImplementedError

    def iteration(self, it: int) -> float:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint must keep besides the synthetic set and its optimiser."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


def fresh_network(ctx: Context, seed: int) -> torch.nn.Module:
    """A randomly initialised network of the configured kind, deterministic for ``seed``."""
    from ..nets import get_network

    cfg, real = ctx.cfg, ctx.real
    net = get_network(cfg.net, real.channels, real.num_classes, real.resolution, width=cfg.net_width,
                      depth=cfg.net_depth, norm=cfg.net_norm, seed=seed)
    return net.to(ctx.device)


def has_batchnorm(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def maybe_dsa(cfg: DistillConfig, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Differentiable Siamese augmentation with ``seed`` (shared by the real and synthetic batch), if enabled."""
    if not cfg.dsa:
        return x
    from ..augment import dsa

    return dsa(x, seed=seed)
