"""Peak memory of one rendering + backward with the cin256-v2 architecture on the CPU, and the planner's prediction.

    nice -n 10 python bench/memory_cin256.py [--max-hours 6] [--resolutions 128 256] [--steps 10 20 50 100] \\
        [--n 2 4] [--impls engine engine_budget reference]     # resumes: finished cases are skipped
    python bench/memory_cin256.py --dry-run [--out /tmp/dry.json]  # the same code paths on a tiny LDM
    python bench/memory_cin256.py --plot-only                    # redraw the PNG from the JSON

The real architecture (``bench.measure.random_cin256``: random weights, float32) at 128² (32×32×3 latents)
and 256² (64×64×3), N images, S steps, one forward + backward of an MSE loss on the images, three ways:

- ``engine``: ``ld3m_fast.render`` with its default plan (backward chunk of 10, so all N here);
- ``engine_budget``: ``render`` with a ``memory_budget`` halfway between the planner's predicted peaks for
  backward chunks of 1 and 2 images (at the largest S of the sweep), so the planner must pick a chunk of 1;
- ``reference``: ``ld3m_fast.reference.official_backward`` (the official no-grad render, image gradient,
  chunked re-render with checkpointed UNet calls).

Peak memory by the allocator (``bench.measure.peak_memory``: the profiler's allocation trace on the CPU),
above what is allocated before the call — the meaning of ``memory_budget``. Beside the engine rows,
``predicted_bytes``: the planner's prediction for the plan that ran (``engine_budget``: the plan ``render``
chose, captured; ``engine``: ``predict_peak`` for the default plan from the same measured costs). One run per
case (no warm-up: a case takes minutes to hours here); ``seconds`` is that run under the profiler.

Cases run cheapest first; the JSON is rewritten after every case, finished cases are skipped on a rerun, and
a case predicted to overrun ``--max-hours`` (from the rate of finished ones) is left for a later run.
The plot (peak vs S, N fixed, one line per implementation and resolution) needs matplotlib
(``pip install matplotlib``); without it no PNG is written and the script says so.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from bench.measure import environment, peak_memory  # noqa: E402
from ld3m_fast import reference, render  # noqa: E402
from ld3m_fast.atomic import write_atomic  # noqa: E402
from ld3m_fast.engine import rendering  # noqa: E402
from ld3m_fast.engine.latent_model import as_latent_model  # noqa: E402
from ld3m_fast.engine.memory import RenderPlan, predict_peak, resolve_plan  # noqa: E402
from ld3m_fast.engine.schedule import DDIMSchedule  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
IMPLS = ("engine", "engine_budget", "reference")
IMPL_COST = {"engine": 1.0, "engine_budget": 1.1, "reference": 1.3}  # relative time per step·image (for ordering)
GUESSED_SECONDS_PER_STEP_IMAGE = {128: 30.0, 256: 110.0}  # 2 busy cores; replaced by measured rates
PROBE_STEPS = 10  # the schedule the cost probe is measured with (memory does not depend on the timestep)


# --------------------------------------------------------------------------------------------- problems

def cin256_model():
    from bench.measure import random_cin256
    return random_cin256("cpu")


def tiny_model():
    from tests.helpers.compvis_style import CompVisStyleLDM
    return CompVisStyleLDM(channels=32, seed=0)


def make_problem(model, resolution: int, n: int, seed: int = 0):
    """Random learnable latents ``Z`` (n, 3, r/4, r/4), class contexts ``c`` and an MSE loss against random images."""
    gen = torch.Generator().manual_seed(seed)
    h = resolution // 4
    Z = torch.randn(n, 3, h, h, generator=gen).requires_grad_(True)
    with torch.no_grad():
        ids = torch.arange(n) % (as_latent_model(model).num_classes or 10)
        c = model.get_learned_conditioning(ids).clone().requires_grad_(True)
    target = torch.rand(n, 3, resolution, resolution, generator=gen)
    return Z, c, lambda images: ((images - target) ** 2).mean()


def measure_costs(model, resolution: int):
    """The planner's measured costs at this resolution (independent of N and S), and their seconds."""
    lm = as_latent_model(model)
    Z, c, _ = make_problem(model, resolution, 1)
    schedule = DDIMSchedule.make(PROBE_STEPS, lm.alphas_cumprod, 3.0, "official", 0.0)
    start = time.perf_counter()
    costs = rendering.cost_probe(lm, Z, c, lm.unconditional_context(1), schedule)()
    return costs, time.perf_counter() - start


def budget_for(n: int, steps: int, costs) -> int:
    """Halfway between the predicted peaks with backward chunks of 1 and 2 images: the planner must pick 1 (where
    one image costs more than two — tiny convolutions of one image run another kernel — the one-image peak)."""
    one = predict_peak(n, steps, RenderPlan(1, 0, 1, 1), costs)
    two = predict_peak(n, steps, RenderPlan(2, 0, 1, 2), costs)
    return (one + two) // 2 if two > one else one


@contextlib.contextmanager
def captured_plans():
    """The plans ``render`` resolves while inside (``rendering.resolve_plan`` wrapped, restored after)."""
    plans = []

    def capture(*args, **kwargs):
        plans.append(resolve_plan(*args, **kwargs))
        return plans[-1]
    rendering.resolve_plan = capture
    try:
        yield plans
    finally:
        rendering.resolve_plan = resolve_plan


def run_case(model, case: dict, costs, budget: int | None) -> dict:
    Z, c, loss_fn = make_problem(model, case["resolution"], case["n"])
    steps, impl = case["steps"], case["impl"]
    lm = as_latent_model(model)
    steps_run = DDIMSchedule.make(steps, lm.alphas_cumprod, 3.0, "official", 0.0).num_steps
    row = dict(case, steps_run=steps_run, predicted_bytes=None, plan=None, budget_bytes=None)
    if impl == "reference":
        def call():
            reference.official_backward(model, Z, c, loss_fn, steps, seed=0)
    else:
        kwargs = {} if impl == "engine" else {"memory_budget": budget}

        def call():
            loss_fn(render(model, Z, c, steps, seed=0, **kwargs)).backward()
    with captured_plans() as plans:
        start = time.perf_counter()
        peak, _ = peak_memory(call, "cpu")
        row["seconds"] = time.perf_counter() - start
    row["peak_bytes"] = int(peak)
    if impl != "reference":
        plan = plans[-1]
        if plan.predicted_bytes is None:  # the default plan: the planner did not run; predict it from the costs
            plan = plan._replace(predicted_bytes=predict_peak(case["n"], steps_run, plan, costs))
        row["plan"] = dict(chunk=plan.chunk, kept_steps=plan.kept_steps, latent_stride=plan.latent_stride,
                           forward_chunk=plan.forward_chunk)
        row["predicted_bytes"] = int(plan.predicted_bytes)
        row["prediction_error"] = plan.predicted_bytes / peak - 1
        row["planned_in_render"] = impl == "engine_budget"
    if budget is not None and impl == "engine_budget":
        row["budget_bytes"] = int(budget)
        row["peak_within_budget"] = peak <= budget
    return row


# --------------------------------------------------------------------------------------------- the sweep

def _key(row: dict) -> tuple:
    return row["resolution"], row["steps"], row["n"], row["impl"]


def _rate(rows, resolution: int, impl: str, guess: float) -> float:
    """Seconds per step·image of the finished cases at this resolution (this implementation's if any)."""
    same = [r for r in rows if r["resolution"] == resolution and "seconds" in r]
    mine = [r for r in same if r["impl"] == impl] or same
    if not mine:
        return guess * IMPL_COST[impl]
    return max(r["seconds"] / (r["steps"] * r["n"]) for r in mine) * (1 if any(r["impl"] == impl for r in same)
                                                                        else IMPL_COST[impl])


def summarize(rows) -> dict:
    """Per implementation, resolution and N: the peak at the largest S over the peak at the smallest (S = 10 in
    the sweep), and the planner's largest error; whether the targets (≤ 1.1×; ≤ 15 %) are met where measured."""
    out = []
    groups = sorted({(r["impl"], r["resolution"], r["n"]) for r in rows})
    for impl, res, n in groups:
        by_s = {r["steps"]: r for r in rows if (r["impl"], r["resolution"], r["n"]) == (impl, res, n)}
        entry = dict(impl=impl, resolution=res, n=n, steps=sorted(by_s))
        if len(by_s) > 1:
            entry["peak_ratio_largest_vs_smallest_S"] = by_s[max(by_s)]["peak_bytes"] / by_s[min(by_s)]["peak_bytes"]
        errors = [abs(r["prediction_error"]) for r in by_s.values() if r.get("prediction_error") is not None]
        if errors:
            entry["max_abs_prediction_error"] = max(errors)
        out.append(entry)
    engine = [e for e in out if e["impl"] != "reference"]
    ratios = [e["peak_ratio_largest_vs_smallest_S"] for e in engine if "peak_ratio_largest_vs_smallest_S" in e]
    errors = [e["max_abs_prediction_error"] for e in engine if "max_abs_prediction_error" in e]
    budgets = [r["peak_within_budget"] for r in rows if "peak_within_budget" in r]
    targets = {"engine_peak_at_largest_S_within_1.1x": (max(ratios) <= 1.1) if ratios else None,
               "prediction_within_15_percent": (max(errors) <= 0.15) if errors else None,
               "budgeted_peaks_within_budget": all(budgets) if budgets else None}
    return {"groups": out, "targets": targets}


def cpu_environment() -> dict:
    """``bench.measure.environment`` on the CPU, with the CPU under ``cpu`` (the plot's title) and the dtype."""
    env = environment(torch.device("cpu"))
    return dict(env, cpu=env["device"], dtype="float32")


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))


def plot(report: dict, png: Path, n: int) -> bool:
    """Peak vs S for ``n`` images, one line per implementation and resolution (+ the engine's predictions)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)", flush=True)
        return False
    rows = [r for r in report["rows"] if r["n"] == n]
    if not rows:
        print(f"no rows with n={n}: no plot written", flush=True)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    unit, scale = ("GiB", 2**30) if max(r["peak_bytes"] for r in rows) >= 2**30 else ("MiB", 2**20)
    styles = {"engine": "o-", "engine_budget": "s-", "reference": "^-"}
    for res in sorted({r["resolution"] for r in rows}):
        for impl in IMPLS:
            pts = sorted((r["steps"], r["peak_bytes"], r["predicted_bytes"]) for r in rows
                         if r["resolution"] == res and r["impl"] == impl)
            if not pts:
                continue
            line, = ax.plot([p[0] for p in pts], [p[1] / scale for p in pts], styles[impl], label=f"{impl}, {res}²")
            predicted = [(p[0], p[2]) for p in pts if p[2] is not None]
            if predicted:
                ax.plot([p[0] for p in predicted], [p[1] / scale for p in predicted], "x", color=line.get_color(),
                        markersize=9)
            budgets = sorted((r["steps"], r["budget_bytes"]) for r in rows
                             if r["resolution"] == res and r["impl"] == impl and r.get("budget_bytes"))
            if budgets:
                ax.plot([b[0] for b in budgets], [b[1] / scale for b in budgets], ":", color=line.get_color(),
                        label=f"its memory_budget, {res}²")
    ax.set_xscale("log")
    steps = sorted({r["steps"] for r in rows})
    ax.minorticks_off()
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("DDIM steps S")
    ax.set_ylabel(f"peak memory above the weights ({unit})")
    env = report["environment"]
    commits = ", ".join(sorted({str(r.get("commit"))[:7] for r in rows}))  # a resumed sweep may span commits
    ax.set_title(f"{report['model']}, N = {n}, forward + backward; × = the planner's prediction\n"
                 f"{env['cpu']}, torch {env['torch']}, commit {commits}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    print(f"wrote {png}", flush=True)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/memory_cin256_cpu.json)")
    p.add_argument("--png", type=Path, default=None, help="plot (default: the JSON's path with .png)")
    p.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--n", type=int, nargs="+", default=[2, 4])
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--max-hours", type=float, default=6.0, help="time budget; cases predicted to overrun are left")
    p.add_argument("--plot-n", type=int, default=2, help="N of the plotted lines")
    p.add_argument("--dry-run", action="store_true", help="a tiny CompVis-style LDM at 32², S ∈ {2, 4}")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON and exit")
    p.add_argument("--fresh", action="store_true", help="ignore the rows already in the JSON")
    args = p.parse_args(argv)
    if args.dry_run:
        args.resolutions, args.steps, args.n = [32], [2, 4], [2]
    out = args.out or (Path(tempfile.gettempdir()) / "memory_cin256_dry_run.json" if args.dry_run
                       else RESULTS / "memory_cin256_cpu.json")
    png = args.png or out.with_suffix(".png")
    old = json.loads(out.read_text()) if out.exists() and not args.fresh else None
    if args.plot_only:
        if old is None:
            raise SystemExit(f"{out} does not exist: run the sweep first")
        plot(old, png, args.plot_n)
        return 0
    rows = list(old["rows"]) if old else []
    done = {_key(r) for r in rows}
    cases = [dict(resolution=res, steps=s, n=n, impl=impl) for res in args.resolutions for s in args.steps
             for n in args.n for impl in args.impls]
    guess = {r: GUESSED_SECONDS_PER_STEP_IMAGE.get(r, 0.01) for r in args.resolutions}
    cases.sort(key=lambda k: (guess[k["resolution"]] * k["steps"] * k["n"] * IMPL_COST[k["impl"]], k["resolution"]))
    t0 = time.perf_counter()
    model = tiny_model() if args.dry_run else cin256_model()
    model_name = "tiny CompVis-style LDM (dry run)" if args.dry_run else "cin256-v2 architecture, random weights"
    report = {"model": model_name, "environment": cpu_environment(), "costs": (old or {}).get("costs", {}),
              "rows": rows, "skipped": []}
    costs_by_res, budgets = {}, {}
    for case in cases:
        if _key(case) in done:
            continue
        res = case["resolution"]
        elapsed = time.perf_counter() - t0
        predicted = _rate(rows, res, case["impl"], guess[res]) * case["steps"] * case["n"]
        if elapsed + predicted > args.max_hours * 3600:
            report["skipped"].append(dict(case, predicted_seconds=predicted))
            print(f"skip {case}: predicted {predicted / 60:.0f} min, {elapsed / 60:.0f} of "
                  f"{args.max_hours * 60:.0f} min used", flush=True)
            continue
        if res not in costs_by_res:
            costs_by_res[res], seconds = measure_costs(model, res)
            c = costs_by_res[res]
            report["costs"][str(res)] = {"probe_seconds": seconds, "latent_bytes": c.latent_bytes,
                                         "image_bytes": c.image_bytes, "denoiser": c.denoiser._asdict(),
                                         "decoder": c.decoder._asdict()}
        budget = None
        if case["impl"] == "engine_budget":
            budget = budgets.setdefault((res, case["n"]), budget_for(case["n"], max(args.steps), costs_by_res[res]))
        print(f"run {case} ...", flush=True)
        row = run_case(model, case, costs_by_res[res], budget)
        row.update(commit=report["environment"]["commit"],
                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        rows.append(row)
        rows.sort(key=lambda r: (r["resolution"], r["n"], r["impl"], r["steps"]))
        report["summary"] = summarize(rows)
        write(out, report)
        err = row.get("prediction_error")
        print(f"  peak {row['peak_bytes'] / 2**20:.1f} MiB" + ("" if err is None else
              f", predicted {row['predicted_bytes'] / 2**20:.1f} MiB ({err:+.1%})") + f", {row['seconds']:.0f} s",
              flush=True)
    report["summary"] = summarize(rows)
    write(out, report)
    print(f"wrote {out}", flush=True)
    plot(report, png, args.plot_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
