"""What the three algorithms share: the run (``DistillRun``), the update step, the fresh network, augmentation.

Every algorithm updates the synthetic set the same way: render the images once (with the engine's
recomputing chain in latent space), compute the loss on a detached copy, check it, and
back-propagate its image gradient through the single rendering to ``Z`` and ``c`` (or to the
pixels). The official code instead renders without gradients, then renders every chunk again
to back-propagate; here one rendering serves both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import DamagedFileError, DistillationDiverged
from ..seeding import generator
from .checkpoint import load_optimizer_state, optimizer_state
from .config import DistillConfig
from .real_data import RealData
from .result import DistilledSet

_MOMENTUM = "momentum."    # checkpoint names of the synthetic set's optimiser state
_ALGORITHM = "algorithm."  # checkpoint names of the algorithm's own state


@dataclass
class DistillRun:
    """One distillation run: its settings, data, synthetic set, optimiser, algorithm and progress.

    ``prepare`` (``run.py``) sets it up; the algorithms read and update it. ``config`` is the resolved
    settings in their JSON form, as stored with checkpoints and results; ``start`` the iterations a
    checkpoint had completed; ``history`` one entry per iteration; ``fingerprints`` identify the model,
    data and expert buffer (``ld3m_fast.fingerprint``), so that a checkpoint is resumed only by their run.
    """

    cfg: DistillConfig
    config: dict
    real: RealData
    synthetic: object                  # LatentSynthetic | PixelSynthetic
    device: torch.device
    group: object = None               # ld3m_fast.distributed.Group when sharded by class, else None
    optimizer: torch.optim.Optimizer | None = None
    algorithm: "Algorithm | None" = None
    start: int = 0
    history: list = field(default_factory=list)
    fingerprints: dict = field(default_factory=dict)  # what the run works on: model, data, experts

    # --- where the classes are ------------------------------------------------------------------
    @property
    def classes(self) -> list[int]:
        """The classes this process updates (all of them, unless the run is sharded by class)."""
        return self.synthetic.classes

    def class_slice(self, k: int) -> slice:
        """Where class ``k``'s images lie in the synthetic set."""
        start = self.synthetic.classes.index(k) * self.cfg.ipc
        return slice(start, start + self.cfg.ipc)

    def own_rows(self) -> slice:
        """Where this process's images lie among the images of all classes."""
        start = self.classes[0] * self.cfg.ipc
        return slice(start, start + len(self.classes) * self.cfg.ipc)

    # --- across the ranks of a sharded run ---------------------------------------------------------
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

    # --- one update ------------------------------------------------------------------------------
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

    # --- checkpoints and results -------------------------------------------------------------------
    def is_row(self, key: str) -> bool:
        """Whether checkpoint tensor ``key`` has one row per synthetic image (sharded by class across ranks)."""
        return key in self.synthetic.state_names or key.startswith(_MOMENTUM)

    def full_state(self) -> dict[str, torch.Tensor]:
        """Synthetic set, optimiser momentum and algorithm state, with the rows of all classes (a collective)."""
        tensors = dict(self.synthetic.state(), **optimizer_state(self.optimizer, _MOMENTUM),
                       **{_ALGORITHM + k: v for k, v in self.algorithm.state().items()})
        return {k: self.gather_images(v) if self.is_row(k) else v for k, v in tensors.items()}

    def load_synthetic(self, tensors: dict[str, torch.Tensor], source) -> None:
        """Load the synthetic set of a checkpoint's ``full_state`` (this process's rows), checking that it fits."""
        rows, expected = self.own_rows(), self.cfg.ipc * self.real.num_classes
        names = set(self.synthetic.state_names)
        missing = sorted(names - set(tensors))
        bad = sorted(k for k in names & set(tensors) if tensors[k].dim() < 2 or tensors[k].shape[0] != expected
                     or not tensors[k].is_floating_point() or not bool(torch.isfinite(tensors[k]).all()))
        if missing or bad:
            raise DamagedFileError(f"the checkpoint in {str(source)!r} does not fit this run (missing {missing}, "
                                   f"damaged or of another size {bad}; {expected} images expected): delete it to start "
                                   "over")
        self.synthetic.load_state({k: tensors[k][rows] for k in names})

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load the optimiser's and the algorithm's state from a checkpoint's ``full_state`` (this process's rows)."""
        rows = self.own_rows()
        self.load_local_state({k: v[rows] if self.is_row(k) else v for k, v in tensors.items()
                               if k.startswith((_MOMENTUM, _ALGORITHM))})

    def local_state(self) -> dict[str, torch.Tensor]:
        """This process's synthetic set, optimiser momentum and algorithm state (not gathered)."""
        return dict(self.synthetic.state(), **optimizer_state(self.optimizer, _MOMENTUM),
                    **{_ALGORITHM + k: v for k, v in self.algorithm.state().items()})

    def load_local_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set the optimiser momentum, the algorithm state and (where given) the synthetic set from ``local_state``
        tensors, in place: the optimiser keeps its parameters."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        with torch.no_grad():
            for name, p in zip(self.synthetic.state_names, params):
                if name in tensors:
                    p.copy_(tensors[name])
        load_optimizer_state(self.optimizer, tensors, _MOMENTUM)
        self.algorithm.load_state({k[len(_ALGORITHM):]: v for k, v in tensors.items() if k.startswith(_ALGORITHM)})

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of everything an iteration changes, to rewind to (``rewind``)."""
        return {k: v.detach().clone() for k, v in self.local_state().items()}

    def rewind(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Back to a ``snapshot``: undoes a partly applied iteration."""
        self.load_local_state(snapshot)

    def result(self) -> DistilledSet:
        """The synthetic set now, as a :class:`DistilledSet` (a collective in a sharded run)."""
        synthetic = self.synthetic
        mean, std = synthetic.train_normalization
        state = {k: self.gather_images(v).cpu() for k, v in synthetic.state().items()}
        syn_lr = self.algorithm.state().get("syn_lr")
        return DistilledSet(images=self.gather_images(synthetic.unit_images()).cpu(),
                            labels=torch.arange(self.real.num_classes).repeat_interleave(self.cfg.ipc), mean=mean,
                            std=std, class_names=self.real.class_names, config=self.config, history=list(self.history),
                            Z=state.get("Z"), c=state.get("c"), syn_lr=None if syn_lr is None else float(syn_lr))


class Algorithm:
    """A distillation algorithm: ``loss`` scores images (no side effects), ``iteration`` updates the set."""

    def __init__(self, run: DistillRun):
        self.run = run

    def loss(self, images: torch.Tensor, it: int) -> torch.Tensor:
        raise NotImplementedError

    def iteration(self, it: int) -> float:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint must keep besides the synthetic set and its optimiser."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


def fresh_network(run: DistillRun, seed: int) -> torch.nn.Module:
    """A randomly initialised network of the configured kind, deterministic for ``seed``."""
    from ..nets import get_network

    cfg, real = run.cfg, run.real
    net = get_network(cfg.net, real.channels, real.num_classes, real.resolution, width=cfg.net_width,
                      depth=cfg.net_depth, norm=cfg.net_norm, seed=seed)
    return net.to(run.device)


def has_batchnorm(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def maybe_dsa(cfg: DistillConfig, x: torch.Tensor, seed: int, per_image: bool = False) -> torch.Tensor:
    """Differentiable Siamese augmentation from ``seed``, if enabled: one draw shared by the batch (the real and the
    synthetic batch of a class then see the same transformation), or with ``per_image`` one draw per image, as the
    official code trains networks on synthetic images (still a function of ``seed``, so a gradient pass replays it)."""
    if not cfg.dsa:
        return x
    from ..augment import dsa

    return dsa(x, seed=seed, per_sample=per_image)
