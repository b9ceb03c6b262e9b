"""Peak memory and device time of one call, the GPU's measured ceilings, and the model set-ups the benchmarks share.

One convention for peak memory in every benchmark (``PEAK_CONVENTION``): the most bytes allocated while
the call runs *above those allocated before it*, so weights, inputs and anything else that already
exists are excluded and what is left is the call's own working memory. Device times are medians of
per-call CUDA events after a warm-up (a host clock on the CPU). fp32 results that are compared with
each other are computed with TF32 off (``tf32_off``).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from tests.helpers.compvis_style import CompVisStyleLDM

PEAK_CONVENTION = ("peak bytes allocated during the call above the bytes allocated just before it (weights, inputs "
                   "and optimizer state that exist before the call are excluded); CUDA: "
                   "torch.cuda.max_memory_allocated, CPU: torch's CPU allocator trace")
STEP_TENSOR_BYTES = 256 * 2**20  # each fused-step tensor in the bandwidth benches: far beyond any GPU's L2


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
    """Peak extra bytes allocated while ``fn()`` runs (``PEAK_CONVENTION``), and its result.

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
    from ld3m_fast.models import build_ldm  # diffusers: imported only by the benches that build the model

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


@contextlib.contextmanager
def tf32_off():
    """Float32 matmuls and convolutions in true fp32 (no TF32) inside the block: what fp32 comparisons need."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tf32_settings() -> dict:
    return {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def device_time_ms(fn, device: torch.device | str, warmup: int = 3, repeats: int = 20) -> float:
    """Median milliseconds of one ``fn()`` after ``warmup`` calls: CUDA events around each call (a host clock on
    the CPU)."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    if cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        torch.cuda.synchronize()
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bf16_matmul_peak_tflops(n: int = 8192, device: torch.device | str = "cuda", repeats: int = 20) -> float:
    """Measured dense bf16 matmul throughput (TFLOP/s) of an n×n×n product on random data (zeros run faster)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, generator=gen).to(torch.bfloat16) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    ms = device_time_ms(lambda: torch.mm(a, b, out=out), device, warmup=3, repeats=repeats)
    return 2 * n ** 3 / (ms / 1e3) / 1e12


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def copy_bandwidth_gbs(n_bytes: int = STEP_TENSOR_BYTES, device: torch.device | str = "cuda",
                       repeats: int = 20) -> float:
    """Measured device-to-device copy bandwidth (GB/s, bytes read + written) of an ``n_bytes`` fp32 tensor."""
    src = torch.randn(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = device_time_ms(lambda: dst.copy_(src), device, warmup=3, repeats=repeats)
    return 2 * src.numel() * 4 / (ms / 1e3) / 1e9


def step_bytes_moved(numel: int, element_size: int = 4) -> int:
    """Bytes the fused step moves at least, either direction: forward reads z, eps_u, eps_c, anchor and writes
    z_prev; backward reads the incoming gradient and writes g_z, the g_eps pair and g_anchor (five tensors each)."""
    return 5 * numel * element_size


def step_bandwidth(backend: str, numel: int = STEP_TENSOR_BYTES // 4, device: torch.device | str = "cuda",
                   repeats: int = 20) -> dict:
    """GB/s of the fused step's forward and backward on ``backend`` (fp32 tensors of ``numel`` elements, no noise)."""
    from ld3m_fast.engine.fused_step import StepCoefficients, get_backend

    coef = StepCoefficients(0.6, 0.8, 0.7, 0.71, 0.0, 3.0, 0.4, 0.0)
    gen = torch.Generator(device=device).manual_seed(0)
    x = [torch.randn(numel, device=device, generator=gen) for _ in range(4)]
    impl = get_backend(backend)
    out = {}
    for direction, fn in (("forward", lambda: impl.forward(*x, None, coef, False)),
                          ("backward", lambda: impl.backward(x[0], None, coef))):
        ms = device_time_ms(fn, device, warmup=3, repeats=repeats)
        out[direction] = {"ms": ms, "GB_per_s": step_bytes_moved(numel) / (ms / 1e3) / 1e9}
    return out


def write_report(report: dict, out) -> None:
    """Write a benchmark's results JSON to ``out`` and, with matplotlib, time and peak memory vs steps beside it
    (``out`` with ``.png``)."""
    from ld3m_fast.plots import plot_benchmark

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    env = report["environment"]
    png = plot_benchmark(report, out.with_suffix(".png"),
                         title=f"{env['device']}, torch {env['torch']}, commit {str(env['commit'])[:7]}")
    if png is not None:
        print(f"wrote {png}")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        model = None
    return f"{model or platform.processor() or 'cpu'}, {os.cpu_count()} cores"


def environment(device) -> dict:
    """Where and what a benchmark ran: date, git commit (and whether tracked files had changes), torch, device,
    threads, TF32 settings and the peak convention, for its results JSON."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, cwd=Path(__file__).parent).stdout.strip())
    except OSError:
        commit, dirty = None, None
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "uncommitted_changes": dirty, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "threads": torch.get_num_threads(), "tf32": tf32_settings(), "peak_convention": PEAK_CONVENTION,
            "fp32_math": ("true fp32" if not (torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
                          else "PyTorch's TF32 defaults")}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(capability=list(torch.cuda.get_device_capability(device)), multiprocessors=p.multi_processor_count,
                    memory_GiB=round(p.total_memory / 2**30, 1))
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info
