"""One training step of each evaluation network (DSA + forward + backward + SGD step), and DSA alone.

On CUDA: 100 images of 128² (the IPC-10 evaluation at 128²); on the CPU: 10 images of 32². ``extra_info``
gives the time one GLaD evaluation run (1000 epochs of one batch) would take at that speed.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

from ld3m_fast.augment import DSA_STRATEGY, dsa
from ld3m_fast.nets import NETWORKS, get_network

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N, SIZE = (100, 128) if DEVICE == "cuda" else (10, 32)


def _timed(fn):
    if DEVICE != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


@pytest.mark.parametrize("arch", NETWORKS)
def test_train_step(benchmark, arch):
    net = get_network(arch, 3, 10, SIZE, seed=0).to(DEVICE)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(N, 3, SIZE, SIZE, device=DEVICE)
    y = torch.arange(N, device=DEVICE) % 10

    def step():
        loss = F.cross_entropy(net(dsa(x, DSA_STRATEGY)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    benchmark.group = f"train step, {N} images {SIZE}², {DEVICE}"
    benchmark(_timed(step))
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["minutes per 1000-epoch run"] = benchmark.stats.stats.mean * 1000 / 60


@pytest.mark.parametrize("siamese", [True, False])
def test_dsa(benchmark, siamese):
    x = torch.rand(256, 3, SIZE, SIZE, device=DEVICE)
    benchmark.group = f"DSA, 256 images {SIZE}², {DEVICE}"
    seeds = itertools.count()  # a new seed per call, so that every operation is drawn in turn
    benchmark(_timed(lambda: dsa(x, DSA_STRATEGY, seed=next(seeds), per_sample=not siamese)))
