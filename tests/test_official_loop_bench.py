"""bench/official_loop.py runs every case on tiny sizes on the CPU and writes a complete report."""
import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
ROW_FIELDS = {"case", "steps", "steps_run", "seconds_median", "seconds_min", "seconds", "speedup_vs_official",
              "speedup_vs_official_min", "peak_MiB", "peak_ratio_vs_official", "unet_forwards_per_step"}


def test_official_loop_dry_run_writes_every_case_and_field(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import official_loop

    out = tmp_path / "official_loop.json"
    assert official_loop.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["cases"] == list(official_loop.CASES)
    assert {"device", "torch", "commit", "threads", "date"} <= set(report["environment"])
    assert {"model", "N", "sg_batch", "latents", "images", "steps", "unet_parameters"} <= set(report["sizes"])
    steps = report["sizes"]["steps"]
    assert [(r["case"], r["steps"]) for r in report["rows"]] == [(c, s) for s in steps for c in official_loop.CASES]
    for row in report["rows"]:
        assert ROW_FIELDS <= set(row), row
        assert row["seconds_median"] > 0 and row["peak_MiB"] > 0 and len(row["seconds"]) >= 1
        # the official pattern renders three times per step, the one-render step twice (both guided)
        assert row["unet_forwards_per_step"] == (2.0 if row["case"].startswith("one_render") else 3.0)
        if row["case"].startswith("one_render"):
            assert row["grad_rel_diff_vs_official"] < 1e-4  # the official pattern's gradient (same noise)
    # time and peak vs steps beside the JSON, when matplotlib is installed
    assert out.with_suffix(".png").is_file() == (importlib.util.find_spec("matplotlib") is not None)
    sys.modules.pop("official_loop", None)
