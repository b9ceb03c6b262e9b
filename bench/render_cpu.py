"""``render`` forward+backward vs ``ld3m_fast.reference`` on the CPU: time (interleaved repeats) and peak memory.

    python bench/render_cpu.py --out bench/results/render_cpu.json [--repeats 5]

Small models, N = 20, S ∈ {10, 100}: the 0.9 M-parameter CompVis-style test LDM
(``tests/helpers/compvis_style.py``, 8×8×3 latents) and the shipped Fashion-MNIST prior (1.7 M-parameter
diffusers UNet, 7×7×3 latents). Three ways: the engine as
``render`` runs by default (every step's latent kept), the engine keeping every ⌈√S⌉-th latent (what
the planner picks when a memory budget is too tight for all of them), and ``ld3m_fast.reference``.
CPU timings drift with the machine's load, so the three alternate, and the medians of the repeats are
reported with their ratio to the reference; peak memory (bytes through torch's CPU allocator) is
measured once per case (``measure.peak_memory``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from bench.measure import environment, peak_memory, prior_problem, small_problem, write_report  # noqa: E402

from ld3m_fast import reference, render  # noqa: E402
from ld3m_fast.engine.memory import thinning_stride  # noqa: E402

IMPLS = ("engine", "engine_thinned", "reference")
PROBLEMS = {"CompVis-style test LDM 0.9M, 8x8x3": small_problem, "Fashion-MNIST prior 1.7M, 7x7x3": prior_problem}


def step(impl, model, Z, c, loss_fn, steps):
    Z.grad = c.grad = None
    if impl == "engine":
        loss_fn(render(model, Z, c, steps, seed=0)).backward()
    elif impl == "engine_thinned":
        loss_fn(render(model, Z, c, steps, seed=0, latent_stride=thinning_stride(steps))).backward()
    else:
        reference.official_backward(model, Z, c, loss_fn, steps, seed=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n", type=int, default=20)
    args = p.parse_args(argv)
    rows = []
    for name, make in PROBLEMS.items():
        model, Z, c, loss_fn = make(args.n)
        for steps in (10, 100):
            times = {impl: [] for impl in IMPLS}
            peaks = {}
            for impl in times:
                step(impl, model, Z, c, loss_fn, steps)  # warm-up
                peaks[impl], _ = peak_memory(lambda: step(impl, model, Z, c, loss_fn, steps), "cpu")
            for _ in range(args.repeats):
                for impl in times:
                    start = time.perf_counter()
                    step(impl, model, Z, c, loss_fn, steps)
                    times[impl].append(time.perf_counter() - start)
            row = {"model": name, "N": args.n, "steps": steps, "threads": torch.get_num_threads(),
                   "thinned_latent_stride": thinning_stride(steps)}
            for impl in times:
                row[f"{impl}_seconds_median"] = statistics.median(times[impl])
                row[f"{impl}_seconds"] = times[impl]
                row[f"{impl}_peak_MiB"] = peaks[impl] / 2**20
            for impl in ("engine", "engine_thinned"):
                row[f"{impl}_speedup"] = row["reference_seconds_median"] / row[f"{impl}_seconds_median"]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_seconds")}), flush=True)
    for name in PROBLEMS:
        by_steps = {r["steps"]: r for r in rows if r["model"] == name}
        for impl in IMPLS:
            by_steps[100][f"{impl}_peak_ratio_S100_vs_S10"] = (by_steps[100][f"{impl}_peak_MiB"]
                                                                / by_steps[10][f"{impl}_peak_MiB"])
    report = {"environment": environment(torch.device("cpu")), "rows": rows}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
