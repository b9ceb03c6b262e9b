"""bench/memory_cin256.py runs its code paths on a tiny LDM: the JSON has every field the committed results have,
a rerun resumes (finished cases are not run again), and the plot is optional."""
import importlib.util
import json
import sys

import pytest

from bench import memory_cin256

ROW_FIELDS = {"resolution", "steps", "n", "impl", "peak_bytes", "predicted_bytes", "seconds", "plan", "commit", "date"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory_bench") / "memory.json"
    assert memory_cin256.main(["--dry-run", "--out", str(out)]) == 0
    return out, json.loads(out.read_text())


def test_dry_run_writes_every_case_with_its_fields(dry_run):
    _, report = dry_run
    rows = report["rows"]
    assert {(r["steps"], r["impl"]) for r in rows} == {(s, i) for s in (2, 4) for i in memory_cin256.IMPLS}
    for r in rows:
        assert ROW_FIELDS <= set(r) and r["peak_bytes"] > 0 and r["seconds"] > 0
        if r["impl"] == "reference":
            assert r["predicted_bytes"] is None and r["plan"] is None
        else:  # the planner's prediction beside every engine row, and its error
            assert r["predicted_bytes"] > 0
            assert r["prediction_error"] == pytest.approx(r["predicted_bytes"] / r["peak_bytes"] - 1)
    budgeted = [r for r in rows if r["impl"] == "engine_budget"]
    assert all(r["budget_bytes"] > 0 and isinstance(r["peak_within_budget"], bool) for r in budgeted)
    assert all(r["planned_in_render"] for r in budgeted)
    assert {"cpu", "torch", "threads", "commit", "date"} <= set(report["environment"])
    assert set(report["costs"]) == {"32"}  # the planner's measured costs per resolution
    groups = {g["impl"]: g for g in report["summary"]["groups"]}
    assert groups["engine"]["peak_ratio_largest_vs_smallest_S"] > 0
    assert set(report["summary"]["targets"]) == {"engine_peak_at_largest_S_within_1.1x",
                                                 "prediction_within_15_percent", "budgeted_peaks_within_budget"}


def test_a_rerun_skips_finished_cases(dry_run, capsys):
    out, report = dry_run
    assert memory_cin256.main(["--dry-run", "--out", str(out)]) == 0
    assert "run {" not in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"] == report["rows"]


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is an optional extra")
def test_the_plot_is_written_with_matplotlib(dry_run):
    out, _ = dry_run
    assert out.with_suffix(".png").stat().st_size > 0


def test_without_matplotlib_no_plot_and_a_message(dry_run, tmp_path, monkeypatch, capsys):
    _, report = dry_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "none.png"
    assert memory_cin256.plot(report, png, 2) is False
    assert not png.exists() and "matplotlib is not installed" in capsys.readouterr().out
