"""The fused step on each available backend vs the reference op chain (the ``torch`` backend) and a plain copy.

GPU: fp32 tensors of 256 MiB each (``measure.STEP_TENSOR_BYTES``, far beyond the L2 cache), timed with CUDA
events (the median of per-call events after a warm-up, ``measure.device_time_ms``); ``extra_info`` holds the
step's GB/s and its share of the device-to-device copy bandwidth measured the same way on a tensor of the same
size. CPU: the latents of N = 10 and 100 images at 256² (3×64×64 fp32), timed by pytest-benchmark.
"""
import pytest
import torch

from bench.measure import STEP_TENSOR_BYTES, copy_bandwidth_gbs, device_time_ms, step_bytes_moved
from ld3m_fast.engine.fused_step import StepCoefficients, available_backends, get_backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [b for b in available_backends() if get_backend(b).supports(torch.empty(0, device=DEVICE))
            and not (b == "triton" and DEVICE == "cpu")]  # interpreted Triton is for correctness, not speed
COEF = StepCoefficients(0.6, 0.8, 0.7, 0.71, 0.0, 3.0, 0.4, 0.0)
SIZES = ({"256MiB per tensor": STEP_TENSOR_BYTES // 4} if DEVICE == "cuda"
         else {"N=10 3x64x64": 10 * 3 * 64 * 64, "N=100 3x64x64": 100 * 3 * 64 * 64})


@pytest.fixture(scope="module")
def copy_gbs():
    return copy_bandwidth_gbs(STEP_TENSOR_BYTES, DEVICE) if DEVICE == "cuda" else None


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_step(benchmark, copy_gbs, backend, direction, size):
    impl = get_backend(backend)
    numel = SIZES[size]
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    z, eps_u, eps_c, anchor = (torch.randn(numel, device=DEVICE, generator=gen) for _ in range(4))
    if direction == "forward":
        def run():
            return impl.forward(z, eps_u, eps_c, anchor, None, COEF, False)
    else:
        def run():
            return impl.backward(z, None, COEF)
    if DEVICE == "cuda":
        ms = device_time_ms(run, DEVICE)
        gbs = step_bytes_moved(numel) / (ms / 1e3) / 1e9
        benchmark.extra_info.update({"event_ms_median": ms, "GB/s": gbs, "copy_GB/s": copy_gbs,
                                     "fraction_of_copy": gbs / copy_gbs})

        def timed():
            out = run()
            torch.cuda.synchronize()
            return out
    else:
        timed = run
    benchmark.group = f"fused step {direction}, {size} fp32, {DEVICE}"
    out = benchmark(timed)
    assert torch.isfinite(out[0] if isinstance(out, tuple) else out).all()
    if DEVICE != "cuda" and benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GB/s"] = step_bytes_moved(numel) / benchmark.stats.stats.mean / 1e9
