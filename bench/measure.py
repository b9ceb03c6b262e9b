"""Peak memory of one call, and the model set-ups the benchmarks share."""
from __future__ import annotations

import math

import torch

from ld3m_fast.models import build_ldm
from tests.helpers.compvis_style import CompVisStyleLDM


def _walk(events):
    for event in events:
        yield event
        yield from _walk(event.children)


def _cpu_allocation_peak(fn) -> tuple[int, object]:
    """Peak of the bytes allocated through torch's CPU allocator while ``fn()`` runs, above the start.

    The profiler records every allocation and free with its size and time (what ``max_memory_allocated``
    gives on CUDA); the running sum of the sizes, in time order, peaks at the answer. Unlike the process's
    resident set it is exact to the byte and blind to the C library's heap and other threads.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    sizes = sorted((e.start_time_ns, e.extra_fields.alloc_size)
                   for e in _walk(prof.profiler.kineto_results.experimental_event_tree())
                   if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu")
    live = peak = 0
    for _, size in sizes:
        live += size
        peak = max(peak, live)
    return peak, out


def peak_memory(fn, device: torch.device | str) -> tuple[int, object]:
    """Peak extra bytes allocated while ``fn()`` runs, and its result.

    CUDA: ``max_memory_allocated`` above the memory allocated before. CPU: the same from the profiler's
    allocation trace (``_cpu_allocation_peak``).
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, out
    return _cpu_allocation_peak(fn)


def small_problem(n: int, latent: int = 8, channels: int = 64, seed: int = 0):
    """A small LDM with random learnable Z and c: by default the small CPU stack of docs/design.md §5 (0.9 M-parameter
    UNet, 8×8×3 latents, 32² images); ``latent`` and ``channels`` scale it."""
    model = CompVisStyleLDM(channels=channels, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, 3, latent, latent, generator=gen).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(n) % model.n_classes).clone().requires_grad_(True)
    target = torch.rand(n, 3, 4 * latent, 4 * latent, generator=gen)
    return model, Z, c, lambda images: ((images - target) ** 2).mean()


def prior_problem(n: int, seed: int = 0):
    """The shipped Fashion-MNIST LDM (1.7 M-parameter diffusers UNet, 7×7×3 latents, 28² images), random Z and c."""
    from ld3m_fast.demo import prior_path
    from ld3m_fast.models import load_ldm

    model = load_ldm(prior_path())
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, 3, 7, 7, generator=gen).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(n) % 10).clone().requires_grad_(True)
    target = torch.rand(n, 1, 28, 28, generator=gen)
    return model, Z, c, lambda images: ((images - target) ** 2).mean()


def random_cin256(device):
    """cin256-v2 (the exact CompVis architecture) with random weights, initialised from one generator (fast), frozen."""
    model = build_ldm("cin256-v2", device="meta").to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.1, generator=gen)
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=gen)
    return model.requires_grad_(False).eval()


def cin256_problem(n: int, device: str = "cuda", seed: int = 0):
    """The cin256-v2 architecture with random weights at 256² (64×64×3 latents), random learnable Z and c."""
    model = random_cin256(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    Z = torch.randn(n, 3, 64, 64, device=device, generator=gen).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(n, device=device) % 1000).clone().requires_grad_(True)
    target = torch.rand(n, 3, 256, 256, device=device, generator=gen)
    return model, Z, c, lambda images: ((images - target) ** 2).mean()


def bf16_matmul_peak_tflops(n: int = 8192, iters: int = 20) -> float:
    """Measured dense bf16 matmul throughput of this GPU (TFLOP/s)."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n ** 3 * iters / (start.elapsed_time(end) / 1e3) / 1e12


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def copy_bandwidth_gbs(n_bytes: int = 2**30, iters: int = 20) -> float:
    """Measured device-to-device copy bandwidth of this GPU (GB/s, bytes read + written)."""
    src = torch.empty(n_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * n_bytes * iters / (start.elapsed_time(end) / 1e3) / 1e9
