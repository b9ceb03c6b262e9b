"""The cin256-v2 model: fp32 eager vs ``ld3m_fast.optimize``d, forward + backward. Time, peak memory, share of peak.

GPU cases (skipped without CUDA):

- UNet step: one guided call as the chain makes it, the doubled batch ``[z; z]`` with ``[uc; c]``
  for N = 10 latents (20 × 3 × 64 × 64), then the vector-Jacobian product w.r.t. latents and
  contexts (weights frozen, as in rendering).
- 256² decode: N = 4 latents → 4 × 3 × 256 × 256 images, forward + backward w.r.t. the latents.

Variants: ``fp32-eager`` (the plain model: float32, PyTorch GroupNorm/SiLU, SDPA attention as in
diffusers, no recomputation) and ``optimized`` (``optimize(model)`` defaults on CUDA: bf16 autocast,
fused GroupNorm+SiLU, channels-last, xformers/SDPA, decoder recomputation). ``extra_info`` holds the
peak memory, the achieved TFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on one
forward + backward), its fraction of the measured bf16 matmul peak, and the optimised output's
relative error against fp32 (computed with TF32 off, so fp32 means fp32). Peak memory follows
``measure.PEAK_CONVENTION`` (above what is allocated before the call: the weights are excluded).

CPU: one forward of the full-size cin256-v2 UNet on one latent (a smoke test of the architecture).
"""
import pytest
import torch

from ld3m_fast.models import optimize
from bench.measure import PEAK_CONVENTION, bf16_matmul_peak_tflops, count_flops, peak_memory, random_cin256, tf32_off

CUDA = torch.cuda.is_available()
PLAIN = dict(bf16=False, fused_groupnorm_silu=False, channels_last=False, attention="sdpa",
             checkpoint_decoder=False, checkpoint_unet=False)
VARIANTS = {"fp32-eager": PLAIN, "optimized": {}}


@pytest.fixture(scope="module")
def cuda_model():
    return random_cin256("cuda")


@pytest.fixture(scope="module")
def matmul_peak():
    return bf16_matmul_peak_tflops()


def unet_step_case(model, n=10, seed=0):
    gen = torch.Generator(device=model.device).manual_seed(seed)
    z = torch.randn(n, 3, 64, 64, device=model.device, generator=gen).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(n, device=model.device) % 1000).clone().requires_grad_(True)
    uc = model.get_learned_conditioning(torch.full((n,), 1000, device=model.device))
    t = torch.full((2 * n,), 501, device=model.device)
    g = torch.randn(2 * n, 3, 64, 64, device=model.device, generator=gen)

    def run():
        eps = model.apply_model(torch.cat([z, z]), t, torch.cat([uc, c]))
        torch.autograd.grad(eps, (z, c), g)
        return eps.detach()
    return run


def decode_case(model, n=4, seed=0):
    gen = torch.Generator(device=model.device).manual_seed(seed)
    z = torch.randn(n, 3, 64, 64, device=model.device, generator=gen).requires_grad_(True)
    g = torch.randn(n, 3, 256, 256, device=model.device, generator=gen)

    def run():
        img = model.first_stage_model.decode(z, force_not_quantize=True)
        torch.autograd.grad(img, z, g)
        return img.detach()
    return run


CASES = {"unet step (guided, N=10, 20x3x64x64)": unet_step_case, "decode 256² (N=4)": decode_case}


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", list(CASES))
def test_cin256_fwd_bwd_gpu(benchmark, cuda_model, matmul_peak, case, variant):
    model = cuda_model
    optimize(model, **PLAIN)
    with tf32_off():  # the fp32 reference output and the fp32-eager timings are true fp32
        reference_out = CASES[case](model)()
        optimize(model, **VARIANTS[variant])
        run = CASES[case](model)

        def timed():
            out = run()
            torch.cuda.synchronize()
            return out
        out = timed()  # warm-up (kernel compilation, autotuning)
        flops = count_flops(run)
        peak, _ = peak_memory(timed, "cuda")
        benchmark.group = f"cin256-v2 {case}, fwd+bwd, cuda"
        benchmark.pedantic(timed, rounds=5, iterations=1, warmup_rounds=1)
    ref = reference_out.double()
    benchmark.extra_info.update({
        "optimizations": dict(model.optimizations), "peak_memory_MiB": peak / 2**20,
        "peak_convention": PEAK_CONVENTION,
        "bf16_matmul_peak_TFLOP_per_s": matmul_peak,
        "rel_err_vs_fp32": float((out.double() - ref).norm() / ref.norm())})
    if benchmark.stats is not None:  # None under --benchmark-disable
        mean = benchmark.stats.stats.mean
        benchmark.extra_info.update({"TFLOP_per_s": flops / mean / 1e12,
                                     "fraction_of_bf16_peak": flops / mean / 1e12 / matmul_peak})
    optimize(model, **PLAIN)


def test_cin256_unet_forward_cpu_smoke(benchmark):
    """One forward of the full-size cin256-v2 UNet (400.9 M parameters) on one 64×64×3 latent, on the CPU."""
    model = random_cin256("cpu")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    c = model.get_learned_conditioning(torch.tensor([1000]))
    t = torch.tensor([501])

    def forward():
        with torch.no_grad():
            return model.apply_model(x, t, c)
    benchmark.group = "cin256-v2 UNet forward, 1 latent, cpu fp32"
    eps = benchmark.pedantic(forward, rounds=1, iterations=1)
    assert eps.shape == (1, 3, 64, 64) and torch.isfinite(eps).all()
