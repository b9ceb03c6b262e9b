"""plots: PNGs of a run's history, the demo's report and benchmark results; deterministic; without matplotlib, None."""
import importlib.util
import json
import sys
import warnings

import pytest
from PIL import Image

from ld3m_fast import plots
from ld3m_fast.errors import InvalidArgumentError, InvalidTypeError

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib is an optional extra (pip install matplotlib)")

HISTORY = ([{"iteration": i, "loss": 10.0 / (i + 1)} for i in range(50)]
           + [{"iteration": i, "eval": {"rows": [{"arch": a, "mean": 0.5 + i / 500 + k / 20, "std": 0.01}
                                                 for k, a in enumerate(("ConvNet", "VGG11"))]}} for i in (0, 25, 49)])
REPORT = {"rows": [{"method": m, "ipc": ipc, "arch": a, "mean": 0.3 + 0.02 * ipc + 0.1 * j, "std": 0.01}
                   for j, m in enumerate(("ld3m-dm", "pixel-dm")) for ipc in (1, 10, 50) for a in ("ConvNet", "VGG11")]}
CASES = [{"resolution": r, "steps": s, "N": 10, "impl": impl, "seconds": 0.1 * s * f, "peak_bytes": 2**20 * s * f ** 3,
          "status": "ok"} for r in (128, 256) for s in (10, 20, 100) for impl, f in (("reference", 4), ("engine", 1))]


def png_info(path):
    with Image.open(path) as image:
        return image.format, image.size, dict(image.info)


@needs_matplotlib
@pytest.mark.parametrize("draw,data,size", [
    (plots.plot_history, HISTORY, (1100, 400)),
    (plots.plot_history, HISTORY[:50], (550, 400)),  # loss only: one panel
    (plots.plot_accuracy_vs_ipc, REPORT, (550, 400)),
    (plots.plot_benchmark, {"results": CASES}, (1100, 400)),
])
def test_writes_a_deterministic_png(tmp_path, draw, data, size):
    first, second = draw(data, tmp_path / "a.png"), draw(data, tmp_path / "sub" / "b.png")
    assert first == tmp_path / "a.png" and second.is_file()
    fmt, got, info = png_info(first)
    assert fmt == "PNG" and got == size and "Software" not in info
    assert first.read_bytes() == second.read_bytes()  # same input, same bytes


@needs_matplotlib
def test_the_figure_depends_on_the_data(tmp_path):
    changed = [dict(h, loss=h["loss"] * 2) if "loss" in h else h for h in HISTORY]
    a, b = plots.plot_history(HISTORY, tmp_path / "a.png"), plots.plot_history(changed, tmp_path / "b.png")
    assert a.read_bytes() != b.read_bytes()


def test_benchmark_rows_accepts_the_result_shapes_and_drops_failed_cases(tmp_path):
    rows = CASES + [{"resolution": 256, "steps": 100, "N": 10, "impl": "x", "status": "oom"}]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"environment": {}, "results": rows}))
    for given in (rows, {"rows": rows}, {"cases": rows}, {"results": rows}, path, str(path)):
        assert plots.benchmark_rows(given) == CASES
    with pytest.raises(InvalidArgumentError, match="rows"):
        plots.benchmark_rows({"benchmarks": []})


@needs_matplotlib
def test_wide_rows_are_read_per_implementation(tmp_path):
    row = {"model": "tiny", "N": 20, "steps": 10, "engine_seconds_median": 0.2, "engine_seconds": [0.2, 0.3],
           "engine_peak_MiB": 8.0, "reference_seconds_median": 0.3, "reference_peak_MiB": 9.0, "engine_speedup": 1.5}
    assert sorted(plots._melt(row, "seconds")) == [("engine", 0.2), ("reference", 0.3)]
    assert sorted(plots._melt(row, "peak_bytes")) == [("engine", 8.0 * 2**20), ("reference", 9.0 * 2**20)]
    assert plots.plot_benchmark([row, dict(row, steps=100)], tmp_path / "w.png").is_file()


def test_rows_of_one_case_each_are_read_by_their_case():
    row = {"case": "one_render", "steps": 10, "seconds_median": 2.5, "seconds": [2.2, 2.5, 3.6], "peak_MiB": 4.0}
    assert plots._melt(row, "seconds") == [("one_render", 2.5)]
    assert plots._melt(row, "peak_bytes") == [("one_render", 4.0 * 2**20)]
    assert plots._melt(dict(row, impl="engine", peak_bytes=7), "peak_bytes") == [("engine", 7.0)]


@needs_matplotlib
def test_log_scale_only_when_values_span_orders_of_magnitude():
    from matplotlib.figure import Figure

    wide, narrow = Figure().subplots(), Figure().subplots()
    plots._log_if_wide(wide, [1.0, 50.0, 300.0])
    plots._log_if_wide(narrow, [1.0, 50.0, 90.0])
    assert wide.get_yscale() == "log" and narrow.get_yscale() == "linear"


@needs_matplotlib
def test_bad_inputs(tmp_path):
    with pytest.raises(InvalidArgumentError, match="nothing to plot"):
        plots.plot_history([{"iteration": 0}], tmp_path / "x.png")
    with pytest.raises(InvalidTypeError):
        plots.plot_history({"loss": 1}, tmp_path / "x.png")
    with pytest.raises(InvalidArgumentError, match="rows"):
        plots.plot_accuracy_vs_ipc({"rows": []}, tmp_path / "x.png")
    with pytest.raises(InvalidArgumentError, match="nothing to plot"):
        plots.plot_benchmark(CASES, tmp_path / "x.png", x="resolution_px")
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_one_warning_and_no_files(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setattr(plots, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert plots.plot_history(HISTORY, tmp_path / "a.png") is None
        assert plots.plot_accuracy_vs_ipc(REPORT, tmp_path / "b.png") is None
        assert plots.plot_benchmark(CASES, tmp_path / "c.png") is None
    assert len(caught) == 1 and "pip install matplotlib" in str(caught[0].message)
    assert "\n" not in str(caught[0].message) and not list(tmp_path.iterdir())
