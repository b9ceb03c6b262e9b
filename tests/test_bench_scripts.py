"""The paper-scale sweep script (bench/paper_scale.py) runs its code paths on tiny sizes on the CPU."""
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_paper_scale_dry_run_writes_a_complete_report(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import paper_scale

    assert paper_scale.main(["--dry-run", "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["impl"] for r in report["results"]] == [*paper_scale.IMPLS, paper_scale.THINNED]
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in report["results"])
    assert report["unet"]["TFLOP"] > 0 and any(k.endswith("-backward") for k in report["fused_step"])
    assert report["environment"]["torch"] and report["dry_run"] is True
    # the real sweep puts the targets first: 256², S = 20, N = 100, every implementation
    assert paper_scale.cases(False)[:3] == [(256, 20, 100, impl) for impl in paper_scale.IMPLS]
    sys.modules.pop("paper_scale", None)
