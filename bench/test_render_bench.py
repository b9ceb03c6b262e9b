"""``render`` forward + backward vs the official-style reference (``ld3m_fast.reference``): time and peak memory.

CPU: the small LDM of ``measure.small_problem`` (0.9 M-parameter UNet, 8×8×3 latents) and the shipped
Fashion-MNIST prior (1.7 M-parameter diffusers UNet, 7×7×3 latents), N = 20, S ∈ {10, 100}. GPU: the cin256-v2
architecture at 256², N = 10, S ∈ {10, 20, 50}, in true fp32 (TF32 off for both). Peak memory follows
``measure.PEAK_CONVENTION`` (above what is allocated before the call: weights excluded).
"""
import pytest
import torch

from ld3m_fast import reference, render
from bench.measure import PEAK_CONVENTION, cin256_problem, peak_memory, prior_problem, small_problem, tf32_off


@pytest.fixture(autouse=True)
def true_fp32():
    """The engine and the reference are compared in float32: no TF32 on GPUs."""
    with tf32_off():
        yield


def engine_step(model, Z, c, loss_fn, steps):
    loss_fn(render(model, Z, c, steps, seed=0)).backward()


def reference_step(model, Z, c, loss_fn, steps):
    reference.official_backward(model, Z, c, loss_fn, steps, seed=0)


IMPLEMENTATIONS = {"engine": engine_step, "reference": reference_step}


def run_case(benchmark, problem, device, impl, steps, rounds):
    model, Z, c, loss_fn = problem

    def once():
        Z.grad = c.grad = None
        IMPLEMENTATIONS[impl](model, Z, c, loss_fn, steps)
        if device == "cuda":
            torch.cuda.synchronize()

    once()  # warm-up
    peak, _ = peak_memory(once, device)
    benchmark.pedantic(once, rounds=rounds, iterations=1)
    benchmark.extra_info.update({"peak_memory_MiB": peak / 2**20, "peak_convention": PEAK_CONVENTION})


@pytest.mark.parametrize("steps", [10, 100])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_render_small_cpu(benchmark, impl, steps):
    benchmark.group = f"render fwd+bwd, small LDM, N=20, 8x8x3 latents, S={steps}, cpu"
    run_case(benchmark, small_problem(20), "cpu", impl, steps, rounds=3)


@pytest.mark.parametrize("steps", [10, 100])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_render_prior_cpu(benchmark, impl, steps):
    benchmark.group = f"render fwd+bwd, Fashion-MNIST prior, N=20, 7x7x3 latents, S={steps}, cpu"
    run_case(benchmark, prior_problem(20), "cpu", impl, steps, rounds=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("steps", [10, 20, 50])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_render_cin256_gpu(benchmark, impl, steps):
    pytest.importorskip("diffusers")
    benchmark.group = f"render fwd+bwd, cin256-v2 arch, 256², N=10, S={steps}, cuda fp32"
    run_case(benchmark, cin256_problem(10), "cuda", impl, steps, rounds=2)
