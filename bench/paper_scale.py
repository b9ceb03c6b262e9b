"""Paper-scale sweep in one run: one LD3M-DM iteration with the cin256-v2 architecture (random weights).

    python bench/paper_scale.py --reduced --out $OUT/paper_scale.json --max-seconds 240   # one short GPU call
    python bench/paper_scale.py --out bench/results/paper_scale_<device>.json [--max-seconds 1500]   # everything
    python bench/paper_scale.py --dry-run [--reduced] --out /tmp/dry.json   # the same code paths, tiny, on the CPU

It times one distillation iteration (render → DM loss of a fixed random ConvNet against 256 real images
per class → back-propagation to Z and c → SGD step) three ways, with the same loss:

- ``reference``: ``ld3m_fast.reference.official_backward`` — the official code's no-grad render, image
  gradient, chunked re-render with checkpointed UNet calls — in float32;
- ``engine-fp32``: ``ld3m_fast.render`` (one rendering, per-step recomputation, fused step) in float32;
- ``engine-bf16``: the same after ``ld3m_fast.optimize(model)`` (bf16 autocast, fused GroupNorm+SiLU,
  channels-last, decoder recomputation);
- ``engine-bf16-thinned``: the same keeping only every ⌈√S⌉-th step's latent (``latent_stride``, what the
  planner picks under a budget too tight for all of them).

``--reduced`` (what fits one 10-minute GPU call): 256², S ∈ {10, 20, 100}, N ∈ {10, 100}, cheapest first so
that every implementation has a measured rate before its large cases, then the cases the targets need.
The full sweep adds 128² and S = 50.

Before the cases it measures the GPU's two ceilings (device-to-device copy bandwidth on 256 MiB tensors;
an 8192³ bf16 matmul on random data), the fused step's share of the copy bandwidth (each backend, 256 MiB
fp32 tensors, CUDA events), and the optimised UNet's share of the matmul peak (one guided call, forward +
backward, FLOPs counted by ``torch.utils.flop_counter``). Per case: seconds per iteration (after a warm-up
iteration at ≤ 2 steps, which compiles and autotunes for the case's batch) and peak memory
(``bench.measure.PEAK_CONVENTION``: above what is allocated before the iteration, so the weights are
excluded). float32 runs with PyTorch's TF32 defaults (cuDNN convolutions in TF32, matmuls in fp32), as the
official code runs; ``--no-tf32`` makes it true fp32 (the settings are recorded in the JSON). This is a timing
sweep: the numerical comparisons in fp32 (tests, ``bench/test_models_bench.py``) run with TF32 off.

Time budget (``--max-seconds``): each case's time is predicted from the largest finished case of the same
implementation (seconds per step·image·latent pixel; smaller cases run at a higher rate, so the
prediction errs long; an implementation not measured yet borrows the slowest rate measured); a case
predicted to overrun is recorded as skipped with the prediction, one that runs out of memory as ``oom``.
The first case always runs (the predictions need a rate), so the list starts with the cheapest. The JSON is
rewritten after every case, so a run killed from outside still leaves everything finished. ``targets`` holds
each target of the GPU check with the measured value and ``met`` (``None`` with the reason when it could not
be measured).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from bench.measure import (STEP_TENSOR_BYTES, bf16_matmul_peak_tflops,  # noqa: E402
                           copy_bandwidth_gbs, count_flops, device_time_ms, environment, peak_memory, random_cin256,
                           step_bandwidth)

from ld3m_fast import get_network, optimize, reference, render  # noqa: E402
from ld3m_fast.engine.fused_step import available_backends, select_backend  # noqa: E402
from ld3m_fast.distillation.config import OFFICIAL_SYNTHETIC_MEAN, OFFICIAL_SYNTHETIC_STD  # noqa: E402
from ld3m_fast.engine.memory import thinning_stride  # noqa: E402

PLAIN = dict(bf16=False, fused_groupnorm_silu=False, channels_last=False, attention="sdpa",
             checkpoint_decoder=False, checkpoint_unet=False)
IMPLS = ("reference", "engine-fp32", "engine-bf16")
THINNED = "engine-bf16-thinned"
WARMUP_STEPS = 2  # the warm-up iteration's steps: compilation and autotuning depend on the batch, not on S
MARGIN = 1.2  # predictions are scaled up by this much (set-up, the allocator, noise)


@dataclass(frozen=True)
class Sizes:
    """The sweep's sizes: the paper's, or tiny stand-ins with the same roles for the CPU dry run."""

    resolution: int
    s_low: int      # S = 10
    s_target: int   # S = 20: the speed and memory target
    s_high: int     # S = 100
    n_small: int    # N = 10
    n_large: int    # N = 100


PAPER = Sizes(256, 10, 20, 100, 10, 100)
TINY = Sizes(32, 2, 4, 5, 1, 2)
TARGETS = {"bf16_speedup_vs_reference": 3.0, "bf16_peak_fraction_of_reference": 0.25,
           "bf16_peak_ratio_s_high_vs_s_low": 1.1, "fused_step_fraction_of_copy": 0.8,
           "unet_fraction_of_bf16_matmul_peak": 0.5}


def cases(dry_run: bool) -> list[tuple[int, int, int, str]]:
    """The full sweep's (resolution, steps, N, impl), the README's GPU targets first."""
    if dry_run:
        return [(32, 2, 2, impl) for impl in (*IMPLS, THINNED)]
    first = ([(256, 20, 100, impl) for impl in IMPLS] + [(256, s, 100, "engine-bf16") for s in (10, 50, 100)]
             + [(256, s, 100, THINNED) for s in (10, 100)])
    rest = [(res, s, n, impl) for res in (256, 128) for n in (10, 100) for s in (10, 20, 50, 100) for impl in IMPLS]
    return first + [c for c in rest if c not in first]


def reduced_cases(sz: Sizes = PAPER) -> list[tuple[int, int, int, str]]:
    """The reduced sweep, in run order: a rate for every implementation first (S low, N small), the memory ratio at
    N small as a fallback, then the targets at N large (speed and peak vs the reference at S target; the peak at
    S low and S high), then everything else of S ∈ {low, target, high} × N ∈ {small, large}."""
    r, bf16 = sz.resolution, "engine-bf16"
    first = ([(r, sz.s_low, sz.n_small, impl) for impl in ("engine-bf16", "reference", "engine-fp32")]
             + [(r, sz.s_high, sz.n_small, bf16)]
             + [(r, sz.s_target, sz.n_large, bf16), (r, sz.s_target, sz.n_large, "reference")]
             + [(r, sz.s_low, sz.n_large, bf16), (r, sz.s_high, sz.n_large, bf16)]
             + [(r, sz.s_target, sz.n_large, "engine-fp32")])
    rest = [(r, s, n, impl) for n in (sz.n_small, sz.n_large) for s in (sz.s_low, sz.s_target, sz.s_high)
            for impl in IMPLS] + [(r, sz.s_high, sz.n_large, THINNED)]
    return first + [c for c in rest if c not in first]


def work(case) -> int:
    """What a case's time scales with: steps × images × latent pixels."""
    res, steps, n, _ = case
    return steps * n * (res // 4) ** 2


def predict_seconds(case, finished: list[dict]) -> tuple[float, str] | None:
    """Predicted seconds of ``case`` (warm-up at ≤ WARMUP_STEPS steps + one timed iteration, times MARGIN) and what it
    was scaled from: the rate of the largest finished case of the same implementation, else the slowest rate of any
    implementation. ``None`` before the first case has finished."""
    done = [r for r in finished if r.get("status") == "ok"]
    if not done:
        return None

    def rate(r):
        return r["seconds"] / work((r["resolution"], r["steps"], r["N"], r["impl"]))
    same = [r for r in done if r["impl"] == case[3]]
    if same:
        base = max(same, key=lambda r: work((r["resolution"], r["steps"], r["N"], r["impl"])))
    else:
        base = max(done, key=rate)
    res, steps, n, impl = case
    warm = work((res, min(steps, WARMUP_STEPS), n, impl))
    return (MARGIN * rate(base) * (warm + work(case)),
            f"{base['impl']} at S={base['steps']} N={base['N']}: {base['seconds']:.2f} s")


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


def time_iteration(problem: Problem, impl: str, steps: int, device, quick: bool = False) -> dict:
    """Seconds of one iteration (the median of 3 when one takes under a second) and its peak memory.

    ``quick`` (the dry run): one timed iteration, whose peak is read from the same run even on the CPU.
    """
    problem.iteration(impl, min(steps, WARMUP_STEPS))  # warm-up: compilation, autotuning, allocator
    _sync(device)
    seconds, peak = [], None
    while len(seconds) < (1 if quick or not seconds or seconds[0] >= 1.0 else 3):
        if peak is None and (device.type == "cuda" or quick):  # CUDA's counters cost nothing: peak of a timed run
            start = time.perf_counter()
            peak, _ = peak_memory(lambda: problem.iteration(impl, steps), device)
        else:
            start = time.perf_counter()
            problem.iteration(impl, steps)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    if peak is None:  # CPU: the allocation trace slows the run down, so it gets an untimed one of its own
        peak, _ = peak_memory(lambda: problem.iteration(impl, steps), device)
    return {"seconds": statistics.median(seconds), "seconds_all": seconds, "peak_bytes": int(peak),
            "peak_GiB": peak / 2**30}


def ceilings(device, dry_run: bool) -> dict:
    """The device's copy bandwidth and bf16 matmul rate, measured (tiny stand-ins in a dry run)."""
    n_bytes = 2**20 if dry_run else STEP_TENSOR_BYTES
    return {"copy_GB_per_s": copy_bandwidth_gbs(n_bytes, device), "copy_tensor_bytes": n_bytes,
            "bf16_matmul_TFLOP_per_s": bf16_matmul_peak_tflops(256 if dry_run else 8192, device,
                                                               repeats=3 if dry_run else 20),
            "bf16_matmul_size": 256 if dry_run else 8192}


def fused_step_share(device, copy_gbs: float, dry_run: bool) -> dict:
    """GB/s of the fused step forward and backward on every backend that runs here vs the copy bandwidth; the
    target applies to the backend ``render`` selects on this device."""
    numel = 2**14 if dry_run else STEP_TENSOR_BYTES // 4
    probe = torch.empty(1, device=device)
    out = {"tensor_bytes": numel * 4, "selected_backend": select_backend(probe).name, "backends": {}}
    for name in available_backends(probe):
        if name == "triton" and device.type == "cpu":
            continue  # the interpreter: for correctness, not speed
        res = step_bandwidth(name, numel, device, repeats=3 if dry_run else 20)
        for d in res.values():
            d["fraction_of_copy"] = d["GB_per_s"] / copy_gbs
        out["backends"][name] = res
    return out


def unet_share(model, latent: int, n: int, device, matmul_tflops: float) -> dict:
    """One guided UNet call on N latents (batch 2N) forward + backward: achieved TFLOP/s vs the bf16 matmul rate."""
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(n, 3, latent, latent, device=device, generator=gen).requires_grad_(True)
    c = model.get_learned_conditioning(torch.arange(n, device=device) % model.n_classes).clone().requires_grad_(True)
    uc = model.get_learned_conditioning(torch.full((n,), model.n_classes, device=device))
    t = torch.full((2 * n,), 501, device=device)
    g = torch.randn(2 * n, 3, latent, latent, device=device, generator=gen)

    def run():
        eps = model.apply_model(torch.cat([z, z]), t, torch.cat([uc, c]))
        torch.autograd.grad(eps, (z, c), g)

    flops = count_flops(run)  # also the first (compiling) call
    ms = device_time_ms(run, device, warmup=1, repeats=5 if device.type == "cuda" else 2)
    tflops = flops / (ms / 1e3) / 1e12
    return {"N": n, "batch": 2 * n, "ms": ms, "TFLOP": flops / 1e12, "TFLOP_per_s": tflops,
            "fraction_of_bf16_matmul": tflops / matmul_tflops, "optimizations": dict(model.optimizations)}


def _target(name: str, measured, better: str, **details) -> dict:
    limit = TARGETS[name]
    if measured is None:
        return {"target": f"{better} {limit}", "measured": None, "met": None, **details}
    met = measured >= limit if better == ">=" else measured <= limit
    return {"target": f"{better} {limit}", "measured": measured, "met": bool(met), **details}


def evaluate_targets(report: dict, sz: Sizes) -> dict:
    """Each target of the GPU check with its measured value and ``met`` (``None`` plus ``why`` if not measured)."""
    ok = {(r["steps"], r["N"], r["impl"]): r for r in report["results"]
          if r.get("status") == "ok" and r["resolution"] == sz.resolution}
    out = {}
    bf16, ref = ok.get((sz.s_target, sz.n_large, "engine-bf16")), ok.get((sz.s_target, sz.n_large, "reference"))
    where = {"resolution": sz.resolution, "steps": sz.s_target, "N": sz.n_large}
    if bf16 and ref:
        out["bf16_speedup_vs_reference"] = _target(
            "bf16_speedup_vs_reference", ref["seconds"] / bf16["seconds"], ">=", **where,
            reference_seconds=ref["seconds"], engine_seconds=bf16["seconds"])
        out["bf16_peak_fraction_of_reference"] = _target(
            "bf16_peak_fraction_of_reference", bf16["peak_bytes"] / ref["peak_bytes"], "<=", **where,
            reference_peak_bytes=ref["peak_bytes"], engine_peak_bytes=bf16["peak_bytes"])
    else:
        why = "not measured: " + ", ".join(f"{i} at S={sz.s_target}, N={sz.n_large} was "
                                           f"{_status_of(report, sz.resolution, sz.s_target, sz.n_large, i)}"
                                           for i, r in (("engine-bf16", bf16), ("reference", ref)) if r is None)
        for name in ("bf16_speedup_vs_reference", "bf16_peak_fraction_of_reference"):
            out[name] = _target(name, None, ">=" if "speedup" in name else "<=", **where, why=why)
    for n in (sz.n_large, sz.n_small):  # at N large if both ran, else at N small
        low, high = ok.get((sz.s_low, n, "engine-bf16")), ok.get((sz.s_high, n, "engine-bf16"))
        if low and high:
            out["bf16_peak_ratio_s_high_vs_s_low"] = _target(
                "bf16_peak_ratio_s_high_vs_s_low", high["peak_bytes"] / low["peak_bytes"], "<=",
                resolution=sz.resolution, N=n, steps=[sz.s_low, sz.s_high], peak_bytes=[low["peak_bytes"],
                                                                                         high["peak_bytes"]])
            break
    else:
        out["bf16_peak_ratio_s_high_vs_s_low"] = _target(
            "bf16_peak_ratio_s_high_vs_s_low", None, "<=", why=f"engine-bf16 at S={sz.s_low} and S={sz.s_high} did "
                                                               "not both run at one N")
    step = report.get("fused_step")
    if step and step.get("backends"):
        sel = step["backends"][step["selected_backend"]]
        worst = min(sel["forward"]["fraction_of_copy"], sel["backward"]["fraction_of_copy"])
        out["fused_step_fraction_of_copy"] = _target(
            "fused_step_fraction_of_copy", worst, ">=", backend=step["selected_backend"],
            forward=sel["forward"]["fraction_of_copy"], backward=sel["backward"]["fraction_of_copy"],
            note="the lower of forward and backward")
    else:
        out["fused_step_fraction_of_copy"] = _target("fused_step_fraction_of_copy", None, ">=",
                                                     why=(step or {}).get("error", "not measured"))
    unet = report.get("unet") or {}
    runs = [unet.get(f"N={n}") or {} for n in (sz.n_large, sz.n_small)]  # at N large if it ran, else at N small
    big = next((u for u in runs if "fraction_of_bf16_matmul" in u), None)
    if big:
        out["unet_fraction_of_bf16_matmul_peak"] = _target("unet_fraction_of_bf16_matmul_peak",
                                                           big["fraction_of_bf16_matmul"], ">=", N=big["N"])
    else:
        why = "; ".join(f"N={n}: {u.get('error', 'not measured')}" for n, u in zip((sz.n_large, sz.n_small), runs))
        out["unet_fraction_of_bf16_matmul_peak"] = _target("unet_fraction_of_bf16_matmul_peak", None, ">=", why=why)
    return out


def _status_of(report, res, steps, n, impl) -> str:
    row = next((r for r in report["results"] if (r["resolution"], r["steps"], r["N"], r["impl"]) == (res, steps, n,
                                                                                                    impl)), None)
    return "not reached" if row is None else row.get("status", "?")




def _measure_shares(report, model, device, sz: Sizes, dry_run: bool, write) -> None:
    """Ceilings, the fused step's and the UNet's shares; each part records its error instead of stopping the sweep."""
    try:
        report["ceilings"] = ceilings(device, dry_run)
    except Exception as exc:  # noqa: BLE001 -- recorded; the cases still run
        report["ceilings"] = {"error": f"{type(exc).__name__}: {exc}"}
    write()
    copy, matmul = report["ceilings"].get("copy_GB_per_s"), report["ceilings"].get("bf16_matmul_TFLOP_per_s")
    try:
        report["fused_step"] = fused_step_share(device, copy, dry_run) if copy else {"error": "no copy bandwidth"}
    except Exception as exc:  # noqa: BLE001
        report["fused_step"] = {"error": f"{type(exc).__name__}: {exc}"}
    write()
    report["unet"] = {}
    optimize(model, **({} if not dry_run else PLAIN))
    for n in (sz.n_large,) if dry_run else (sz.n_small, sz.n_large):
        try:
            report["unet"][f"N={n}"] = (unet_share(model, sz.resolution // 4, n, device, matmul) if matmul
                                        else {"error": "no matmul rate"})
        except torch.OutOfMemoryError:
            report["unet"][f"N={n}"] = {"error": "out of memory"}
        except Exception as exc:  # noqa: BLE001
            report["unet"][f"N={n}"] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        write()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--max-seconds", type=float, default=1500, help="time budget for the whole run")
    p.add_argument("--reduced", action="store_true",
                   help="256², S ∈ {10, 20, 100}, N ∈ {10, 100}: one short GPU call")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the code paths")
    p.add_argument("--no-tf32", action="store_true",
                   help="float32 in true fp32 (default: PyTorch's TF32 defaults, as the official code runs)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    sz = TINY if args.dry_run else PAPER
    todo = reduced_cases(sz) if args.reduced else cases(args.dry_run)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(device), "dry_run": args.dry_run,
              "mode": "reduced" if args.reduced else "full",
              "sizes": asdict(sz), "max_seconds": args.max_seconds, "warmup_steps": WARMUP_STEPS, "results": []}

    def write():
        report["seconds_total"] = time.perf_counter() - t0
        report["targets"] = evaluate_targets(report, sz)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(out)  # never a half-written file, even when killed

    if args.dry_run:
        from ld3m_fast.models import load_ldm
        model = load_ldm("tiny")
    else:
        model = random_cin256(device)
    _measure_shares(report, model, device, sz, args.dry_run, write)
    for case in todo:
        res, steps, n, impl = case
        row = {"resolution": res, "steps": steps, "N": n, "impl": impl}
        guess = predict_seconds(case, report["results"])
        left = args.max_seconds - (time.perf_counter() - t0)
        if guess is not None and guess[0] > left:
            row["status"] = "skipped"
            row["reason"] = (f"predicted {guess[0]:.0f} s (from {guess[1]}) but {max(left, 0):.0f} s of "
                             "--max-seconds left")
        elif left <= 0 and report["results"]:  # the first case runs anyway: every prediction needs a measured rate
            row["status"], row["reason"] = "skipped", "--max-seconds used up"
        else:
            optimize(model, **({} if impl in ("engine-bf16", THINNED) and not args.dry_run else PLAIN))
            problem, started = None, time.perf_counter()
            try:
                problem = Problem(model, res, n, device, batch_real=4 if args.dry_run else 256)
                row.update(time_iteration(problem, impl, steps, device, quick=args.dry_run), status="ok")
                if guess is not None:
                    row["predicted_seconds"] = guess[0]
            except torch.OutOfMemoryError:
                row["status"] = "oom"
            finally:
                problem = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                row["case_seconds"] = time.perf_counter() - started  # set-up, warm-up and timed iterations
        report["results"].append(row)
        print(json.dumps(row), flush=True)
        write()
    write()
    print(json.dumps({"targets": report["targets"]}, indent=1))
    print(f"wrote {out} ({report['seconds_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    sys.exit(main())
