"""Matching training trajectories (MTT), first-order, as the LD3M/GLaD code runs it.

Each iteration picks an expert trajectory and a start epoch ``s``, trains a student from the
expert's parameters θ_s for ``syn_steps`` SGD steps on (augmented) synthetic batches with the
learnable step size ``lr``, and scores where it lands (docs/design.md §7)::

    L = ‖θ_s − lr·Σ_i g_i − θ_{s+E}‖² / ‖θ_s − θ_{s+E}‖²

First order: each ``g_i`` is taken at the student's parameters w_i without differentiating
through earlier steps, so the image gradient is ``Σ_i ∂/∂x [ v · g_i(w_i, x) ]`` with the constant
vector ``v = 2 (lr (θ_{s+E} − θ_s) + lr² Σ g) / ‖θ_s − θ_{s+E}‖²``, and ``lr`` gets the exact
gradient of ``L``. ``lr`` has its own SGD optimiser (learning rate ``lr_lr``, momentum 0.5).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..seeding import derive_seed, generator
from .checkpoint import load_optimizer_state, optimizer_state
from .common import Algorithm, DistillRun, DistillationDiverged, fresh_network, maybe_dsa
from .experts import ExpertBuffer, FlatParameters


class MTT(Algorithm):
    """The MTT update, with its state: the expert buffer, the learnable step size and its optimiser."""

    def __init__(self, run: DistillRun, experts):
        super().__init__(run)
        cfg, real = run.cfg, run.real
        if experts is None:
            raise ValueError("algorithm='mtt' needs expert trajectories: pass experts=<folder written by "
                             "ld3m_fast.train_experts(...)> (or `ld3m-fast experts`)")
        self.buffer = experts if isinstance(experts, ExpertBuffer) else ExpertBuffer(experts)
        self.buffer.check_fits(net=cfg.net, width=cfg.net_width, depth=cfg.net_depth, norm=cfg.net_norm,
                               channels=real.channels, resolution=real.resolution, num_classes=real.num_classes)
        if cfg.max_start_epoch - 1 + cfg.expert_epochs > self.buffer.epochs:
            raise ValueError(f"max_start_epoch={cfg.max_start_epoch} and expert_epochs={cfg.expert_epochs} need "
                             f"trajectories of at least {cfg.max_start_epoch - 1 + cfg.expert_epochs} epochs; the buffer "
                             f"has {self.buffer.epochs}")
        self.net = fresh_network(run, derive_seed(cfg.seed, "mtt-structure"))
        self.flat = FlatParameters(self.net)
        if self.flat.size != self.buffer.meta["parameters"]:
            raise ValueError(f"the expert buffer's networks have {self.buffer.meta['parameters']} parameters, this "
                             f"run's {cfg.net} has {self.flat.size}")
        self.syn_lr = torch.tensor(float(cfg.lr_teacher), device=run.device, requires_grad=True)
        self.lr_optimizer = torch.optim.SGD([self.syn_lr], lr=cfg.lr_lr, momentum=0.5)

    # --- checkpoint state ------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        return {"syn_lr": self.syn_lr.detach().clone(), **optimizer_state(self.lr_optimizer, "syn_lr_momentum.")}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.syn_lr.copy_(tensors["syn_lr"])
        load_optimizer_state(self.lr_optimizer, tensors, "syn_lr_momentum.")

    # --- one iteration ----------------------------------------------------------------------------
    def loss_and_gradients(self, images: torch.Tensor, it: int):
        """``(loss, image gradient, lr gradient)`` of iteration ``it`` for the images of all classes; changes nothing."""
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

        # student trajectory (no graph to the images)
        w, grad_sum, steps, pending = start, torch.zeros_like(start), [], []
        for i in range(cfg.syn_steps):
            if not pending:
                pending = list(torch.randperm(n, generator=gen).to(run.device).split(batch))
            idx = pending.pop()
            seed = derive_seed(cfg.seed, it, "mtt-dsa", i)
            w_i = w.detach().requires_grad_(True)
            x = maybe_dsa(cfg, images[idx].detach(), seed)
            (g,) = torch.autograd.grad(F.cross_entropy(self.flat.forward(w_i, x), labels[idx]), w_i)
            steps.append((w_i.detach(), idx, seed))
            w = w_i.detach() - lr * g
            grad_sum = grad_sum + g

        param_dist = ((start - target) ** 2).sum()
        v = 2 * (lr * (target - start) + lr * lr * grad_sum) / param_dist
        image_grad = torch.zeros_like(images)
        for w_i, idx, seed in steps:
            x_in = images[idx].detach().requires_grad_(True)
            w_i = w_i.requires_grad_(True)
            ce = F.cross_entropy(self.flat.forward(w_i, maybe_dsa(cfg, x_in, seed)), labels[idx])
            (g,) = torch.autograd.grad(ce, w_i, create_graph=True)
            (gx,) = torch.autograd.grad((v * g).sum(), x_in)
            image_grad.index_add_(0, idx, gx)

        loss = ((start - self.syn_lr * grad_sum - target) ** 2).sum() / param_dist
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
