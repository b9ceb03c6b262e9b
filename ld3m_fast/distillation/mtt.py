"""Matching training trajectories (MTT), first-order, as the LD3M/GLaD code runs it.

Each iteration picks an expert trajectory and a start epoch ``s``, trains a student from the
expert's parameters θ_s for ``syn_steps`` SGD steps on (augmented) synthetic batches with the
learnable step size ``lr``, and scores where it lands (docs/design.md §7)::

    L = ‖θ_s − lr·Σ_i g_i − θ_{s+E}‖² / ‖θ_s − θ_{s+E}‖²

First order: each ``g_i`` is taken at the student's parameters w_i without differentiating
through earlier steps, so the image gradient is ``Σ_i ∂/∂x [ v · g_i(w_i, x) ]`` with the constant
vector ``v = 2 (lr (θ_{s+E} − θ_s) + lr² Σ g) / ‖θ_s − θ_{s+E}‖²``, and ``lr`` gets the exact
gradient of ``L``. ``lr`` has its own SGD optimiser (learning rate ``lr_lr``, momentum 0.5).
Student steps augment each image with its own DSA draw, replayed exactly by the gradient pass.
This is GLaD's gradient; the official LD3M script applies half of it (docs/design.md §11), which
is why the ``ld3m`` preset's learning rate is 500 where the script's is 1000.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from ..errors import DamagedFileError, DistillationDiverged, InvalidArgumentError
from ..seeding import derive_seed, generator
from .checkpoint import load_optimizer_state, optimizer_state
from .common import Algorithm, DistillRun, fresh_network, maybe_dsa
from .experts import ExpertBuffer, FlatParameters


class StudentRun(NamedTuple):
    """One iteration's expert segment and student steps: each step is (weights, image indices, DSA seed)."""

    start: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor
    lr: float
    steps: list
    grad_sum: torch.Tensor


class MTT(Algorithm):
    """The MTT update, with its state: the expert buffer, the learnable step size and its optimiser."""

    def __init__(self, run: DistillRun, experts):
        super().__init__(run)
        cfg, real = run.cfg, run.real
        if experts is None:
            raise InvalidArgumentError("algorithm='mtt' needs expert trajectories: pass experts=<folder written by "
                                       "ld3m_fast.train_experts(...)> (or `ld3m-fast experts`)")
        self.buffer = experts if isinstance(experts, ExpertBuffer) else ExpertBuffer(experts)
        self.buffer.check_fits(net=cfg.net, width=cfg.net_width, depth=cfg.net_depth, norm=cfg.net_norm,
                               channels=real.channels, resolution=real.resolution, num_classes=real.num_classes)
        if cfg.max_start_epoch - 1 + cfg.expert_epochs > self.buffer.epochs:
            raise InvalidArgumentError(
                f"max_start_epoch={cfg.max_start_epoch} and expert_epochs={cfg.expert_epochs} need "
                f"trajectories of at least {cfg.max_start_epoch - 1 + cfg.expert_epochs} epochs; the buffer "
                f"has {self.buffer.epochs}")
        self.net = fresh_network(run, derive_seed(cfg.seed, "mtt-structure"))
        self.flat = FlatParameters(self.net)
        if self.flat.size != self.buffer.meta["parameters"]:
            raise InvalidArgumentError(
                f"the expert buffer's networks have {self.buffer.meta['parameters']} parameters, this "
                f"run's {cfg.net} has {self.flat.size}")
        self.syn_lr = torch.tensor(float(cfg.lr_teacher), device=run.device, requires_grad=True)
        self.lr_optimizer = torch.optim.SGD([self.syn_lr], lr=cfg.lr_lr, momentum=0.5)

    # --- checkpoint state ------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        return {"syn_lr": self.syn_lr.detach().clone(), **optimizer_state(self.lr_optimizer, "syn_lr_momentum.")}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        lr = tensors.get("syn_lr")
        if lr is None or lr.numel() != 1 or not lr.is_floating_point() or not bool(torch.isfinite(lr).all()):
            raise DamagedFileError("the checkpoint's MTT step size (syn_lr) is missing or damaged; delete the "
                                   "checkpoint to start over")
        with torch.no_grad():
            self.syn_lr.copy_(lr.reshape(()))
        load_optimizer_state(self.lr_optimizer, tensors, "syn_lr_momentum.")

    # --- one iteration ----------------------------------------------------------------------------
    def student(self, images: torch.Tensor, it: int) -> "StudentRun":
        """Iteration ``it``'s expert segment and the student's ``syn_steps`` steps on ``images`` (no graph to them)."""
        cfg, run = self.run.cfg, self.run
        gen = generator(cfg.seed, it, "mtt")
        expert = int(torch.randint(len(self.buffer), (1,), generator=gen))
        start_epoch = int(torch.randint(cfg.max_start_epoch, (1,), generator=gen))
        start, target = (t.to(run.device, images.dtype) for t in
                         self.buffer.read(expert, [start_epoch, start_epoch + cfg.expert_epochs]))
        labels = torch.arange(run.real.num_classes, device=run.device).repeat_interleave(cfg.ipc)
        n = images.shape[0]
        batch = cfg.batch_syn or n
        lr = float(self.syn_lr.detach())
        w, grad_sum, steps, pending = start, torch.zeros_like(start), [], []
        for i in range(cfg.syn_steps):
            if not pending:
                pending = list(torch.randperm(n, generator=gen).to(run.device).split(batch))
            idx = pending.pop()
            seed = derive_seed(cfg.seed, it, "mtt-dsa", i)
            w_i = w.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.step_loss(images[idx].detach(), labels[idx], w_i, seed), w_i)
            steps.append((w_i.detach(), idx, seed))
            w = w_i.detach() - lr * g
            grad_sum = grad_sum + g
        return StudentRun(start, target, labels, lr, steps, grad_sum)

    def step_loss(self, x: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, seed: int) -> torch.Tensor:
        """The cross-entropy of one student step: weights ``w`` on the batch ``x`` with its DSA draws ``seed``."""
        return F.cross_entropy(self.flat.forward(w, maybe_dsa(self.run.cfg, x, seed, per_image=True)), labels)

    def loss_and_gradients(self, images: torch.Tensor, it: int):
        """``(loss, image gradient, lr gradient)`` of iteration ``it`` for the images of all classes; changes nothing."""
        s = self.student(images, it)
        param_dist = ((s.start - s.target) ** 2).sum()
        v = 2 * (s.lr * (s.target - s.start) + s.lr * s.lr * s.grad_sum) / param_dist
        image_grad = torch.zeros_like(images)
        for w_i, idx, seed in s.steps:
            x_in = images[idx].detach().requires_grad_(True)
            w_i = w_i.requires_grad_(True)
            (g,) = torch.autograd.grad(self.step_loss(x_in, s.labels[idx], w_i, seed), w_i, create_graph=True)
            (gx,) = torch.autograd.grad((v * g).sum(), x_in)
            image_grad.index_add_(0, idx, gx)
        loss = ((s.start - self.syn_lr * s.grad_sum - s.target) ** 2).sum() / param_dist
        if not (bool(torch.isfinite(loss)) and bool(torch.isfinite(image_grad).all())):
            raise DistillationDiverged(it, "the loss or its image gradient")
        (lr_grad,) = torch.autograd.grad(loss, self.syn_lr)
        return loss.detach(), image_grad, lr_grad

    def loss(self, images, it):
        return self.loss_and_gradients(images, it)[0]

    def iteration(self, it: int) -> float:
        """One MTT update: the step size by its exact gradient, the synthetic set by the first-order one.

        The student trains on the images of all classes: a class-sharded run gathers them, every rank computes
        the same loss and gradients, and keeps the rows of its own images."""
        def loss_fn(images):
            loss, image_grad, lr_grad = self.loss_and_gradients(self.run.gather_images(images), it)
            self.lr_optimizer.zero_grad(set_to_none=True)
            self.syn_lr.grad = lr_grad
            self.lr_optimizer.step()
            return loss, image_grad[self.run.own_rows()]

        return self.run.step_on_images(it, loss_fn)
