"""Distribution matching (DM): per-class mean embeddings of real and synthetic images through a fresh random network.

Loss of one iteration (docs/design.md §7)::

    Σ_k ‖ mean_i emb(aug(real_k,i)) − mean_j emb(aug(syn_k,j)) ‖²

with a new randomly initialised network (frozen) every iteration and the same augmentation seed
for the real and the synthetic batch of a class. Networks with BatchNorm see all classes in one
batch (their statistics need it), as in the DM code.
"""
from __future__ import annotations

import torch

from ..seeding import derive_seed
from .common import Algorithm, DistillRun, fresh_network, has_batchnorm, maybe_dsa


def dm_loss(run: DistillRun, images: torch.Tensor, it: int) -> torch.Tensor:
    """The DM loss of iteration ``it`` for the normalised synthetic ``images`` (differentiable w.r.t. them)."""
    cfg, real = run.cfg, run.real
    net = fresh_network(run, derive_seed(cfg.seed, it, "net")).requires_grad_(False)
    net.train()
    reals, syns = [], []
    for k in run.classes:
        seed = derive_seed(cfg.seed, it, "dsa", k)
        x_real = real.class_batch(k, cfg.batch_real, run.batch_generator(it, k), run.device)
        x_syn = images[run.class_slice(k)]
        reals.append(maybe_dsa(cfg, x_real, seed))
        syns.append(maybe_dsa(cfg, x_syn, seed))
    if has_batchnorm(net):
        with torch.no_grad():
            emb_real = net.embed(torch.cat(reals))
        emb_syn = net.embed(torch.cat(syns))
        real_means = torch.stack([e.mean(0) for e in emb_real.split([len(r) for r in reals])])
        syn_means = torch.stack([e.mean(0) for e in emb_syn.split([len(s) for s in syns])])
        return ((real_means - syn_means) ** 2).sum()
    loss = images.new_zeros(())
    for x_real, x_syn in zip(reals, syns):
        with torch.no_grad():
            mean_real = net.embed(x_real).mean(0)
        loss = loss + ((mean_real - net.embed(x_syn).mean(0)) ** 2).sum()
    return loss


class DM(Algorithm):
    def loss(self, images, it):
        return dm_loss(self.run, images, it)

    def iteration(self, it: int) -> float:
        """One DM update of the synthetic set; returns the loss per class (as the DM code logs it)."""
        total = self.run.reduce_sum(self.run.step_on_images(it, lambda images: self.loss(images, it)))
        return total / self.run.real.num_classes
