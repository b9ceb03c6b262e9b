"""Seconds per distillation iteration: LD3M-DM (shipped Fashion-MNIST prior) vs pixel-space DM, on the embedded data.

IPC 1 and 10, 64 real images per class and iteration, ConvNet width 64 (the demo's settings), S = 10.
"""
import pytest

from ld3m_fast.data import embedded_fashion_mnist
from ld3m_fast.demo import prior_path
from ld3m_fast.distillation.run import prepare
from ld3m_fast.models import load_ldm

SPACES = {"ld3m-dm": True, "pixel-dm": False}


@pytest.fixture(scope="module")
def prior():
    return load_ldm(prior_path())


@pytest.mark.parametrize("ipc", [1, 10])
@pytest.mark.parametrize("space", list(SPACES))
def test_dm_iteration_cpu(benchmark, prior, space, ipc):
    latent = SPACES[space]
    knobs = dict(batch_real=64, net_width=64)
    if latent:  # the rendering's knobs exist in the latent space only
        knobs.update(steps=10, chunk_size=10 * ipc, encode_input="signed")
    run = prepare(embedded_fashion_mnist("train"), prior if latent else None, ipc, **knobs)
    it = iter(range(10**6))
    run.algorithm.iteration(next(it))  # warm-up
    benchmark.group = f"DM iteration, embedded Fashion-MNIST, IPC {ipc}, cpu"
    benchmark.pedantic(lambda: run.algorithm.iteration(next(it)), rounds=5, iterations=1)
