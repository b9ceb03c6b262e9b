"""The fused step on each available backend vs the reference op chain (the ``torch`` backend)."""
import pytest
import torch

from ld3m_fast.engine.fused_step import StepCoefficients, available_backends, get_backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [b for b in available_backends() if get_backend(b).supports(torch.empty(0, device=DEVICE))
            and not (b == "triton" and DEVICE == "cpu")]  # interpreted Triton is for correctness, not speed
COEF = StepCoefficients(0.6, 0.8, 0.7, 0.71, 0.0, 3.0, 0.4, 0.0)


@pytest.mark.parametrize("n", [10, 100])
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_step(benchmark, backend, direction, n):
    impl = get_backend(backend)
    shape = (n, 3, 64, 64)  # 256² latents
    z, eps_u, eps_c, anchor = (torch.randn(shape, device=DEVICE) for _ in range(4))
    if direction == "forward":
        def run():
            return impl.forward(z, eps_u, eps_c, anchor, None, COEF, False)
        bytes_moved = 5 * z.numel() * 4  # 4 reads, 1 write
    else:
        def run():
            return impl.backward(z, None, COEF)
        bytes_moved = 5 * z.numel() * 4  # 1 read, 4 writes (g_z, g_eps pair, g_anchor)
    if DEVICE == "cuda":
        def timed():
            out = run()
            torch.cuda.synchronize()
            return out
    else:
        timed = run
    benchmark.group = f"fused step {direction}, N={n}, 3x64x64 fp32, {DEVICE}"
    benchmark(timed)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GB/s"] = bytes_moved / benchmark.stats.stats.mean / 1e9
