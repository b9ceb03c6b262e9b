"""Distribution matching (DM): per-class mean embeddings of real and synthetic images through a fresh random network.

Loss of one iteration (docs/design.md §7)::

    Σ_k ‖ mean_i emb(aug(real_k,i)) − mean_j emb(aug(syn_k,j)) ‖²

with a new randomly initialised network (frozen) every iteration and the same augmentation seed
for the real and the synthetic batch of a class. Networks with BatchNorm see all classes in one
batch (their statistics need it), as in the DM code; in a class-sharded run every rank then
computes the loss of all classes (the other ranks' synthetic images gathered, its own
differentiable), so the statistics and the gradients are those of one process.
"""
from __future__ import annotations

import torch

from ..seeding import derive_seed
from .common import Algorithm, DistillRun, fresh_network, has_batchnorm, maybe_dsa


def _class_batches(run: DistillRun, images: torch.Tensor, it: int, classes, slices):
    """The augmented real and synthetic batch of every class in ``classes`` (``slices``: where in ``images``)."""
    cfg, real = run.cfg, run.real
    reals, syns = [], []
    for k, sl in zip(classes, slices):
        seed = derive_seed(cfg.seed, it, "dsa", k)
        reals.append(maybe_dsa(cfg, real.class_batch(k, cfg.batch_real, run.batch_generator(it, k), run.device), seed))
        syns.append(maybe_dsa(cfg, images[sl], seed))
    return reals, syns


def dm_loss(run: DistillRun, images: torch.Tensor, it: int, net: torch.nn.Module | None = None) -> torch.Tensor:
    """The DM loss of iteration ``it`` for the normalised synthetic ``images`` (differentiable w.r.t. them): of this
    process's classes, or of all classes for a BatchNorm network in a sharded run (see the module docstring)."""
    net = _network(run, it) if net is None else net
    if has_batchnorm(net):
        if run.group is not None:
            gathered = run.gather_images(images.detach())
            rows = run.own_rows()
            images = torch.cat([gathered[:rows.start], images, gathered[rows.stop:]])
            ipc, classes = run.cfg.ipc, range(run.real.num_classes)
            slices = [slice(k * ipc, (k + 1) * ipc) for k in classes]
        else:
            classes, slices = run.classes, [run.class_slice(k) for k in run.classes]
        reals, syns = _class_batches(run, images, it, classes, slices)
        with torch.no_grad():
            emb_real = net.embed(torch.cat(reals))
        emb_syn = net.embed(torch.cat(syns))
        real_means = torch.stack([e.mean(0) for e in emb_real.split([len(r) for r in reals])])
        syn_means = torch.stack([e.mean(0) for e in emb_syn.split([len(s) for s in syns])])
        return ((real_means - syn_means) ** 2).sum()
    reals, syns = _class_batches(run, images, it, run.classes, [run.class_slice(k) for k in run.classes])
    loss = images.new_zeros(())
    for x_real, x_syn in zip(reals, syns):
        with torch.no_grad():
            mean_real = net.embed(x_real).mean(0)
        loss = loss + ((mean_real - net.embed(x_syn).mean(0)) ** 2).sum()
    return loss


def _network(run: DistillRun, it: int) -> torch.nn.Module:
    net = fresh_network(run, derive_seed(run.cfg.seed, it, "net")).requires_grad_(False)
    return net.train()


class DM(Algorithm):
    def loss(self, images, it):
        return dm_loss(self.run, images, it)

    def iteration(self, it: int) -> float:
        """One DM update of the synthetic set; returns the loss per class (as the DM code logs it)."""
        net = _network(self.run, it)
        value = self.run.step_on_images(it, lambda images: dm_loss(self.run, images, it, net))
        whole = has_batchnorm(net) and self.run.group is not None  # every rank computed the loss of all classes
        return (value if whole else self.run.reduce_sum(value)) / self.run.real.num_classes
