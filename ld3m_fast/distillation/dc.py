"""Gradient matching (DC): the synthetic images of a class should give a fresh network the same gradient as real ones.

Per class ``k`` (docs/design.md §7)::

    D(∇θ CE(net(aug(real_k))), ∇θ CE(net(aug(syn_k))))

with the DC code's layer-wise distance: for each weight tensor, reshape to (out, rest) and sum
``1 − cos`` over output units; 1-D (bias, norm) and 3-D tensors count zero. One augmentation seed
per class, shared by the real and the synthetic batch. With ``outer_loop > 1`` the network is
trained on the synthetic set (``inner_loop`` epochs) between updates, as in the DC code; LD3M and
GLaD use one outer loop, so the network stays random.

Between outer loops the network trains on the synthetic set with one DSA draw per image, as the
official code. The real gradient is taken over the whole real batch at once (the LD3M code
averages the gradients of two halves, which equals it only for an even batch: docs/design.md §11).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..seeding import derive_seed, generator
from .common import Algorithm, DistillRun, fresh_network, has_batchnorm, maybe_dsa

BN_IMAGES_PER_CLASS = 16  # real images per class that set BatchNorm statistics before they are frozen (DC code)


def layerwise_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """Σ over output units of ``1 − cos(g_real, g_syn)`` for one weight tensor (0 for 1-D and 3-D ones)."""
    if g_real.dim() in (1, 3):
        return g_syn.new_zeros(())
    a, b = g_real.reshape(g_real.shape[0], -1), g_syn.reshape(g_syn.shape[0], -1)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6)
    return (1 - cos).sum()


def match_loss(grads_real, grads_syn) -> torch.Tensor:
    return sum(layerwise_distance(r, s) for r, s in zip(grads_real, grads_syn))


def dc_class_loss(run: DistillRun, net, params, images: torch.Tensor, k: int, it, ol: int) -> torch.Tensor:
    cfg = run.cfg
    seed = derive_seed(cfg.seed, it, ol, "dsa", k)
    x_real = maybe_dsa(cfg, run.real.class_batch(k, cfg.batch_real, run.batch_generator(it, ol, k), run.device), seed)
    x_syn = maybe_dsa(cfg, images[run.class_slice(k)], seed)
    y_real = torch.full((x_real.shape[0],), k, device=run.device)
    y_syn = torch.full((x_syn.shape[0],), k, device=run.device)
    g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(x_real), y_real), params)]
    g_syn = torch.autograd.grad(F.cross_entropy(net(x_syn), y_syn), params, create_graph=True)
    return match_loss(g_real, g_syn)


def _freeze_batchnorm_statistics(run: DistillRun, net, it, ol) -> None:
    """BatchNorm statistics from real images of every class, then frozen (synthetic batches are too small)."""
    if not has_batchnorm(net):
        return
    gen = run.batch_generator(it, ol, "bn")
    x = torch.cat([run.real.class_batch(k, BN_IMAGES_PER_CLASS, gen, run.device) for k in range(run.real.num_classes)])
    net.train()
    with torch.no_grad():
        net(x)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _train_network_on_synthetic(run: DistillRun, net, opt, it, ol) -> None:
    cfg = run.cfg
    with torch.no_grad():
        images = run.gather_images(run.synthetic.images(it, ol, "inner").detach())  # all classes
    labels = torch.arange(run.real.num_classes, device=run.device).repeat_interleave(cfg.ipc)
    gen = generator(cfg.seed, it, ol, "inner")
    net.train()
    for epoch in range(cfg.inner_loop):
        order = torch.randperm(images.shape[0], generator=gen).to(run.device)
        for b, start in enumerate(range(0, images.shape[0], cfg.batch_train)):
            idx = order[start:start + cfg.batch_train]
            x = maybe_dsa(cfg, images[idx], derive_seed(cfg.seed, it, ol, "inner", epoch, b), per_image=True)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), labels[idx]).backward()
            opt.step()


def _class_losses(run: DistillRun, net, params, images, it, ol) -> torch.Tensor:
    return sum(dc_class_loss(run, net, params, images, k, it, ol) for k in run.classes)


class DC(Algorithm):
    def _network(self, it):
        net = fresh_network(self.run, derive_seed(self.run.cfg.seed, it, "net"))
        return net, [p for p in net.parameters() if p.requires_grad]

    def loss(self, images, it):
        """The first outer loop's loss (summed over classes) for ``images``."""
        net, params = self._network(it)
        _freeze_batchnorm_statistics(self.run, net, it, 0)
        return _class_losses(self.run, net, params, images, it, 0)

    def iteration(self, it: int) -> float:
        """One DC iteration (``outer_loop`` updates of the synthetic set); returns the mean loss per class and update."""
        run, cfg = self.run, self.run.cfg
        net, params = self._network(it)
        net_opt = torch.optim.SGD(params, lr=cfg.lr_net)
        total = 0.0
        for ol in range(cfg.outer_loop):
            _freeze_batchnorm_statistics(run, net, it, ol)
            total += run.step_on_images(it, lambda images, ol=ol: _class_losses(run, net, params, images, it, ol),
                                        render_keys=(ol,) if ol else ())
            if ol < cfg.outer_loop - 1 and cfg.inner_loop:
                _train_network_on_synthetic(run, net, net_opt, it, ol)
        return run.reduce_sum(total) / (cfg.outer_loop * run.real.num_classes)
