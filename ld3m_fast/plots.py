"""Figures of a run, of the demo and of the benchmarks, so results can be looked at rather than read.

``plot_history`` (loss per iteration, and accuracy per architecture when the run evaluated),
``plot_accuracy_vs_ipc`` (the demo's report), ``plot_benchmark`` (time and peak memory vs steps from a
benchmark's results JSON). matplotlib is an optional extra (``pip install matplotlib``): without it
each function returns ``None`` and the first call warns once. Figures are drawn on the Agg canvas with
matplotlib's default style, fixed sizes and dpi, and no ``Software`` entry in the PNG, so the same input
gives the same bytes with the same matplotlib.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

from .atomic import write_atomic
from .errors import InvalidArgumentError, InvalidTypeError

DPI = 100
_AXIS_LABELS = {"seconds": "time (s)", "peak_bytes": "peak memory (MiB)"}
GROUP_KEYS = ("impl", "model", "resolution", "N", "n", "device", "dtype", "threads")  # what tells benchmark lines apart
_warned = False


def _matplotlib():
    """The matplotlib module, or None (warning once) when it is not installed."""
    global _warned
    try:
        import matplotlib
        import matplotlib.style
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401  (the Agg canvas must exist)
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        if not _warned:
            _warned = True
            warnings.warn("matplotlib is not installed: no plots are written (pip install matplotlib)", stacklevel=3)
        return None
    return matplotlib


def _figure(mpl, panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * panels, 4.0), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    return write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=DPI, metadata={"Software": None}))


def _log_if_wide(ax, values, axis: str = "y", ratio: float = 100.0) -> None:
    """Log scale when all values are positive and span at least ``ratio``."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) >= ratio:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _x_ticks(ax, xs) -> None:
    xs = sorted(set(xs))
    _log_if_wide(ax, xs, "x", 10.0)
    if len(xs) <= 12:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()


def plot_history(history, path, *, title: str | None = None) -> Path | None:
    """``loss.png``-style figure of a run's ``history``: the loss per iteration and, when the history has
    evaluation entries (``{"iteration": i, "eval": {"rows": [{"arch", "mean", "std"}, ...]}}``), the test
    accuracy (%) per architecture with ± std bands. Returns the path, or None without matplotlib."""
    if not isinstance(history, (list, tuple)):
        raise InvalidTypeError(f"history must be a list of dicts (DistilledSet.history), got {type(history).__name__}")
    losses = [(h["iteration"], float(h["loss"])) for h in history if isinstance(h, dict) and "loss" in h]
    evals = [(h["iteration"], h["eval"]) for h in history if isinstance(h, dict) and "eval" in h]
    if not losses and not evals:
        raise InvalidArgumentError("history holds no 'loss' or 'eval' entries: nothing to plot")
    mpl = _matplotlib()
    if mpl is None:
        return None
    with mpl.style.context("default"):
        fig, axes = _figure(mpl, 2 if losses and evals else 1)
        if losses:
            ax = axes[0]
            ax.plot([i for i, _ in losses], [v for _, v in losses], lw=1)
            _log_if_wide(ax, [v for _, v in losses])
            ax.set(xlabel="iteration", ylabel="loss", title="distillation loss")
            ax.grid(alpha=0.3)
        if evals:
            ax = axes[-1]
            curves: dict[str, list] = {}
            for it, table in evals:
                for row in table.get("rows", []):
                    curves.setdefault(row["arch"], []).append((it, 100 * row["mean"], 100 * row.get("std", 0.0)))
            for arch, pts in curves.items():
                pts.sort()
                xs, ms, ss = zip(*pts)
                line, = ax.plot(xs, ms, "o-", ms=3, label=arch)
                ax.fill_between(xs, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)],
                                color=line.get_color(), alpha=0.2, lw=0)
            ax.set(xlabel="iteration", ylabel="test accuracy (%)", title="evaluation (mean ± std)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        if title:
            fig.suptitle(title, fontsize=10)
        return _save(fig, path)


def plot_accuracy_vs_ipc(report, path, *, title: str | None = None) -> Path | None:
    """Accuracy (%) vs images per class from the demo's report (``report["rows"]``: ``{"method", "ipc", "arch",
    "mean", "std"}``): one line per method (colour) and architecture (line style), error bars = std."""
    rows = report.get("rows") if isinstance(report, dict) else None
    if not rows:
        raise InvalidArgumentError("report must be a dict with a non-empty 'rows' list (the demo's report.json)")
    mpl = _matplotlib()
    if mpl is None:
        return None
    methods = list(dict.fromkeys(r["method"] for r in rows))
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    styles, markers = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v")
    with mpl.style.context("default"):
        fig, (ax,) = _figure(mpl, 1)
        for i, method in enumerate(methods):
            for j, arch in enumerate(archs):
                pts = sorted((r["ipc"], 100 * r["mean"], 100 * r.get("std", 0.0)) for r in rows
                             if r["method"] == method and r["arch"] == arch)
                if pts:
                    xs, ms, ss = zip(*pts)
                    ax.errorbar(xs, ms, yerr=ss, color=f"C{i % 10}", ls=styles[j % len(styles)],
                                marker=markers[j % len(markers)], ms=4, capsize=3, label=f"{method}, {arch}")
        _x_ticks(ax, [r["ipc"] for r in rows])
        ax.set(xlabel="images per class", ylabel="test accuracy (%)", title=title or "accuracy vs images per class")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return _save(fig, path)


def benchmark_rows(results) -> list[dict]:
    """The case rows of a benchmark's results: a list, a dict with a ``rows``/``cases``/``results`` list, or the path
    of such a JSON file. Rows whose ``status`` is not 'ok' (skipped, oom) are left out."""
    if isinstance(results, (str, os.PathLike)):
        results = json.loads(Path(results).read_text())
    if isinstance(results, dict):
        results = next((results[k] for k in ("rows", "cases", "results") if isinstance(results.get(k), list)), None)
    if not isinstance(results, list):
        raise InvalidArgumentError("results must be a list of case rows or a dict with a 'rows', 'cases' or "
                                   "'results' list")
    return [r for r in results if isinstance(r, dict) and r.get("status", "ok") == "ok"]


def _melt(row: dict, y: str) -> list[tuple[str | None, float]]:
    """(impl, value) of ``y`` in a row: ``row[y]`` (or ``<y>_median``, ``peak_MiB`` for ``peak_bytes``) of the
    row's ``impl`` (or ``case``), or per implementation from wide keys ``<impl>_<y>_median``, ``<impl>_<y>`` (and
    ``<impl>_peak_MiB`` for ``peak_bytes``)."""
    long_keys = [(y, 1.0), (f"{y}_median", 1.0)] + ([("peak_MiB", 2.0 ** 20)] if y == "peak_bytes" else [])
    for key, scale in long_keys:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [(row.get("impl", row.get("case")), float(value) * scale)]
    suffixes = [(f"_{y}_median", 1.0), (f"_{y}", 1.0)] + ([("_peak_MiB", 2.0 ** 20)] if y == "peak_bytes" else [])
    found = {}
    for key, value in row.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        for suffix, scale in suffixes:
            if key.endswith(suffix) and key[:-len(suffix)] and key[:-len(suffix)] not in found:
                found[key[:-len(suffix)]] = float(value) * scale
                break
    return list(found.items())


def plot_benchmark(results, path, x: str = "steps", ys=("seconds", "peak_bytes"), *, group_by=None,
                   title: str | None = None) -> Path | None:
    """One panel per quantity in ``ys`` (time, peak memory) vs ``x`` (number of steps), one line per
    implementation and any other case key that varies (``group_by``, default: those of ``GROUP_KEYS`` that
    differ between rows). ``results``: see :func:`benchmark_rows`; rows that store each implementation in its own
    keys (``engine_seconds_median``, ``engine_peak_MiB``, …) are read too. ``*_bytes`` are drawn in MiB; a panel
    whose values span two orders of magnitude is log-scaled."""
    rows = [r for r in benchmark_rows(results) if x in r]
    if isinstance(ys, str):
        ys = (ys,)
    series: dict[str, dict[tuple, list]] = {y: {} for y in ys}
    for index, r in enumerate(rows):
        for y in ys:
            for impl, value in _melt(r, y):
                series[y].setdefault((impl, index), []).append(value)
    if not any(series.values()):
        raise InvalidArgumentError(f"no rows have {x!r} and any of {tuple(ys)}: nothing to plot")
    mpl = _matplotlib()
    if mpl is None:
        return None
    if group_by is None:
        group_by = [k for k in GROUP_KEYS if len({repr(r.get(k)) for r in rows}) > 1]
    group_by = [k for k in group_by if k != "impl"]  # the implementation always names its line
    with mpl.style.context("default"):
        fig, axes = _figure(mpl, len(ys))
        for ax, y in zip(axes, ys):
            scale = 2.0 ** 20 if y.endswith("_bytes") else 1.0
            lines: dict[str, list] = {}
            for (impl, index), values in series[y].items():
                r = rows[index]
                label = ", ".join([str(impl)] * (impl is not None) + [f"{k}={r.get(k)}" for k in group_by])
                lines.setdefault(label or y, []).extend((r[x], v / scale) for v in values)
            for label in sorted(lines):
                pts = sorted(lines[label])
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=4, label=label)
            _x_ticks(ax, [r[x] for r in rows])
            _log_if_wide(ax, [p[1] for pts in lines.values() for p in pts])
            ax.set(xlabel=x, ylabel=_AXIS_LABELS.get(y, y.replace("_", " ") + (" (MiB)" if scale > 1 else "")))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        if title:
            fig.suptitle(title, fontsize=10)
        return _save(fig, path)


__all__ = ["benchmark_rows", "plot_accuracy_vs_ipc", "plot_benchmark", "plot_history"]
