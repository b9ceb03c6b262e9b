"""Paper-scale sweep in one run: one LD3M-DM iteration with the cin256-v2 architecture (random weights).

    python bench/paper_scale.py --out bench/results/paper_scale_<device>.json [--max-seconds 1500]
    python bench/paper_scale.py --dry-run --out /tmp/dry.json     # the same code paths, tiny, on the CPU

For 256² (64×64×3 latents, ConvNet-6) and 128² (32×32×3, ConvNet-5), S ∈ {10, 20, 50, 100} and
N ∈ {10, 100} it times one distillation iteration (render → DM loss against 256 real images per class
→ back-propagation to Z and c → SGD step) three ways, with the same loss:

- ``reference``: ``ld3m_fast.reference.official_backward`` — the official code's no-grad render, image
  gradient, chunked re-render with checkpointed UNet calls — in float32;
- ``engine-fp32``: ``ld3m_fast.render`` (one rendering, per-step recomputation, fused step) in float32;
- ``engine-bf16``: the same after ``ld3m_fast.optimize(model)`` (bf16 autocast, fused GroupNorm+SiLU,
  channels-last, decoder recomputation);
- ``engine-bf16-thinned``: the same keeping only every ⌈√S⌉-th step's latent (``latent_stride``, what the
  planner picks under a budget too tight for all of them), at 256², N = 100, S ∈ {10, 100}.

It records seconds per iteration and peak ``torch.cuda.max_memory_allocated``; the UNet's share of the
measured bf16 matmul peak (one guided call, N = 10, forward + backward, FLOPs counted by
``torch.utils.flop_counter``); and the fused step's share of the measured copy bandwidth (per backend).
Cases run in order of importance (the targets of README, 'Benchmarks', first); a case whose predicted time would overrun
``--max-seconds`` is recorded as skipped, one that runs out of memory as ``oom``. The JSON file holds the
device, the torch/Triton/CUDA versions, the commit and the date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from bench.measure import bf16_matmul_peak_tflops, copy_bandwidth_gbs, count_flops, random_cin256  # noqa: E402

from ld3m_fast import get_network, optimize, reference, render  # noqa: E402
from ld3m_fast.engine.fused_step import StepCoefficients, available_backends, get_backend  # noqa: E402
from ld3m_fast.distillation.config import OFFICIAL_SYNTHETIC_MEAN, OFFICIAL_SYNTHETIC_STD  # noqa: E402
from ld3m_fast.engine.memory import thinning_stride  # noqa: E402

PLAIN = dict(bf16=False, fused_groupnorm_silu=False, channels_last=False, attention="sdpa",
             checkpoint_decoder=False, checkpoint_unet=False)
IMPLS = ("reference", "engine-fp32", "engine-bf16")
THINNED = "engine-bf16-thinned"


def cases(dry_run: bool) -> list[tuple[int, int, int, str]]:
    """(resolution, steps, N, impl), the README's GPU targets first."""
    if dry_run:
        return [(32, 2, 2, impl) for impl in (*IMPLS, THINNED)]
    first = ([(256, 20, 100, impl) for impl in IMPLS] + [(256, s, 100, "engine-bf16") for s in (10, 50, 100)]
             + [(256, s, 100, THINNED) for s in (10, 100)])
    rest = [(res, s, n, impl) for res in (256, 128) for n in (10, 100) for s in (10, 20, 50, 100) for impl in IMPLS]
    return first + [c for c in rest if c not in first]


class Problem:
    """Model, learnable Z and c, a DM loss with a fixed random ConvNet and fixed real batches."""

    def __init__(self, model, resolution: int, n: int, device, classes: int = 10, batch_real: int = 256):
        self.model, self.device = model, device
        latent = resolution // 4
        gen = torch.Generator(device=device).manual_seed(0)
        self.Z = torch.randn(n, 3, latent, latent, device=device, generator=gen).requires_grad_(True)
        ids = torch.arange(n, device=device) % classes
        self.labels = ids
        self.c = model.get_learned_conditioning(ids).detach().clone().requires_grad_(True)
        depth = {256: 6, 128: 5}.get(resolution, 2)
        self.net = get_network("ConvNet", 3, classes, resolution, depth=depth, seed=0).to(device).requires_grad_(False)
        with torch.no_grad():
            self.real_means = torch.stack([self.net.embed(torch.randn(batch_real, 3, resolution, resolution,
                                                                      device=device, generator=gen)).mean(0)
                                           for _ in range(classes)])
        self.mean = torch.tensor(OFFICIAL_SYNTHETIC_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(OFFICIAL_SYNTHETIC_STD, device=device).view(1, 3, 1, 1)
        self.opt = torch.optim.SGD([self.Z, self.c], lr=1.0, momentum=0.5)

    def loss(self, images):  # images in [0, 1]
        emb = self.net.embed((images - self.mean) / self.std)
        return sum(((self.real_means[k] - emb[self.labels == k].mean(0)) ** 2).sum()
                   for k in self.labels.unique().tolist())

    def iteration(self, impl: str, steps: int) -> None:
        self.opt.zero_grad(set_to_none=True)
        if impl == "reference":
            reference.official_backward(self.model, self.Z, self.c, self.loss, steps, seed=0)
        else:
            stride = thinning_stride(steps) if impl == THINNED else 1
            self.loss(render(self.model, self.Z, self.c, steps, seed=0, latent_stride=stride)).backward()
        self.opt.step()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_iteration(problem: Problem, impl: str, steps: int, device) -> dict:
    problem.iteration(impl, steps)  # warm-up: kernel selection, autotuning, allocator
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    problem.iteration(impl, steps)
    _sync(device)
    out = {"seconds": time.perf_counter() - start}
    if device.type == "cuda":
        out["peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def unet_share_of_peak(model, latent: int, device) -> dict:
    """One guided UNet call (N = 10) forward + backward: achieved TFLOP/s vs the measured bf16 matmul peak."""
    n = 10
    z = torch.randn(n, 3, latent, latent, device=device).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(n, device=device)).clone().requires_grad_(True)
    uc = model.get_learned_conditioning(torch.full((n,), model.n_classes, device=device))
    t = torch.full((2 * n,), 501, device=device)

    def run():
        eps = model.apply_model(torch.cat([z, z]), t, torch.cat([uc, c]))
        torch.autograd.grad(eps, (z, c), torch.ones_like(eps))

    run()
    flops = count_flops(run)
    _sync(device)
    start = time.perf_counter()
    for _ in range(5):
        run()
    _sync(device)
    seconds = (time.perf_counter() - start) / 5
    out = {"seconds": seconds, "TFLOP": flops / 1e12, "TFLOP_per_s": flops / seconds / 1e12}
    if device.type == "cuda":
        peak = bf16_matmul_peak_tflops()
        out.update(bf16_matmul_peak_TFLOP_per_s=peak, fraction_of_bf16_peak=out["TFLOP_per_s"] / peak)
    return out


def fused_step_share_of_bandwidth(device, n: int = 100, latent: int = 64) -> dict:
    """The fused step forward and backward on (n, 3, latent, latent) fp32: GB/s vs measured copy bandwidth."""
    coef = StepCoefficients(0.6, 0.8, 0.7, 0.71, 0.0, 3.0, 0.4, 0.0)
    x = [torch.randn(n, 3, latent, latent, device=device) for _ in range(4)]
    bytes_moved = 5 * x[0].numel() * 4  # forward: 4 reads + 1 write; backward: 1 read + 4 writes
    out = {}
    copy = copy_bandwidth_gbs() if device.type == "cuda" else None
    for name in available_backends(x[0]):
        impl = get_backend(name)
        for direction, fn in (("forward", lambda: impl.forward(*x, None, coef, False)),
                              ("backward", lambda: impl.backward(x[0], None, coef))):
            fn()
            _sync(device)
            start = time.perf_counter()
            for _ in range(20):
                fn()
            _sync(device)
            gbs = bytes_moved / ((time.perf_counter() - start) / 20) / 1e9
            out[f"{name}-{direction}"] = {"GB_per_s": gbs, **({"fraction_of_copy": gbs / copy} if copy else {})}
    if copy:
        out["copy_GB_per_s"] = copy
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        model = None
    return f"{model or platform.processor() or 'cpu'}, {os.cpu_count()} cores"


def environment(device) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = None
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "threads": torch.get_num_threads()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--max-seconds", type=float, default=1500, help="time budget for the sweep")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the code paths")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    t0 = time.perf_counter()
    if args.dry_run:
        from ld3m_fast.models import load_ldm
        model = load_ldm("tiny")
    else:
        model = random_cin256(device)
    report = {"environment": environment(device), "dry_run": args.dry_run, "results": []}
    measured = []  # (steps * n * latent², seconds) of finished cases, to predict the next ones
    for res, steps, n, impl in cases(args.dry_run):
        row = {"resolution": res, "steps": steps, "N": n, "impl": impl}
        work = steps * n * (res // 4) ** 2
        same = [s / w for w, s, i in measured if i == impl]
        predicted = 2.2 * work * max(same) if same else 0.0  # warm-up + timed iteration
        if time.perf_counter() - t0 + predicted > args.max_seconds:
            row["status"] = f"skipped: predicted {predicted:.0f} s exceeds the time left"
        else:
            optimize(model, **({} if impl in ("engine-bf16", THINNED) and not args.dry_run else PLAIN))
            try:
                problem = Problem(model, res, n, device)
                row.update(time_iteration(problem, impl, steps, device), status="ok")
                measured.append((work, row["seconds"], impl))
            except torch.OutOfMemoryError:
                row["status"] = "oom"
            finally:
                problem = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        report["results"].append(row)
        print(json.dumps(row), flush=True)
    optimize(model, **({} if not args.dry_run else PLAIN))
    report["unet"] = unet_share_of_peak(model, 8 if args.dry_run else 64, device)
    report["fused_step"] = fused_step_share_of_bandwidth(device, **({"n": 2, "latent": 8} if args.dry_run else {}))
    report["seconds_total"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    sys.exit(main())
