"""The GPU check (bench/gpu_run.py) and its paper-scale sweep (bench/paper_scale.py) run their code paths on the CPU.

The dry run is the same command as on the GPU machine, with tiny sizes and the CUDA-only parts skipped (each
with its reason in the JSON); what it writes is what the GPU run will write.
"""
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bench import gpu_run, paper_scale
from bench.measure import peak_memory

REPO = Path(__file__).resolve().parents[1]
STEPS = list(gpu_run.STEPS)


def make_wheel(folder: Path, name: str = "ld3m_probe_pkg", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel, to exercise the wheel-install step without a package index."""
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files = {f"{name}/__init__.py": b"VALUE = 42\n", f"{name}-{version}.dist-info/METADATA": meta,
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, data in files.items():
            z.writestr(p, data)
        z.writestr(f"{name}-{version}.dist-info/RECORD", record)
    return path


def test_gpu_check_dry_run_writes_a_complete_report(tmp_path):
    """The whole command but the official-loop benchmark, whose own dry run is tested beside its script (its command
    line is still built and recorded)."""
    out, site = tmp_path / "out", tmp_path / "site"
    wheel = make_wheel(tmp_path / "wheels")
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_run.sh"), "--dry-run", "--out", str(out), "--wheels",
                           str(wheel.parent), "--site", str(site), "--skip", "official_loop"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "gpu_run.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert [s["name"] for s in summary["steps"]] == STEPS and summary["dry_run"] is True
    assert summary["exit_status"] == 0 and "DRY RUN" in proc.stdout and "target bf16_speedup" in proc.stdout
    # the carried wheels are installed with pip into the site folder, which later steps import from
    assert steps["wheels"]["status"] == "ok" and steps["wheels"]["wheels"] == [wheel.name]
    assert (site / "ld3m_probe_pkg" / "__init__.py").is_file()
    assert "--no-index --no-deps" in steps["wheels"]["command"]
    # what the GPU run builds, and why the dry run does not
    assert steps["build"]["status"] == "skipped" and "dry run" in steps["build"]["reason"]
    assert steps["build"]["command"].endswith("setup.py build_ext --inplace")
    assert steps["build"]["env"]["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert set(summary["environment"]["backend_status"]) == {"torch", "triton", "cpp", "cuda"}
    assert summary["environment"]["missing"] == []
    assert steps["tests"]["status"] == "ok" and "passed" in steps["tests"]["result"]
    assert steps["official_loop"]["status"] == "skipped"
    if (REPO / "bench" / "official_loop.py").exists():
        assert steps["official_loop"]["reason"] == "--skip official_loop"
        assert "bench/official_loop.py --out" in steps["official_loop"]["command"]
        assert "--device cpu --dry-run" in steps["official_loop"]["command"]
    # at most 8 plain files with portable names come back from the GPU machine
    files = [p for p in out.rglob("*")]
    assert len(files) <= 8 and all(p.is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files)
    assert set(summary["files"]) | {"gpu_run.json"} == {p.name for p in files}

    report = json.loads((out / "paper_scale.json").read_text())
    assert report["mode"] == "reduced" and report["dry_run"] is True
    assert set(report["environment"]["tf32"]) == {"matmul_allow_tf32", "cudnn_allow_tf32"}
    assert report["environment"]["fp32_math"] == "PyTorch's TF32 defaults"  # timed as the official code runs
    assert "above the bytes allocated just before" in report["environment"]["peak_convention"]
    rows = report["results"]
    assert [(r["resolution"], r["steps"], r["N"], r["impl"]) for r in rows] == \
        paper_scale.reduced_cases(paper_scale.TINY)
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["seconds"] > 0 and r["peak_bytes"] > 0 for r in ok)
    assert all(r["status"] in ("ok", "skipped", "oom") for r in rows)
    assert all(r["reason"] for r in rows if r["status"] == "skipped")
    assert report["ceilings"]["copy_GB_per_s"] > 0 and report["ceilings"]["bf16_matmul_TFLOP_per_s"] > 0
    assert report["fused_step"]["selected_backend"] in report["fused_step"]["backends"]
    assert report["unet"][f"N={paper_scale.TINY.n_large}"]["TFLOP"] > 0
    targets = report["targets"]
    assert set(targets) == set(paper_scale.TARGETS) and summary["targets"] == targets
    for t in targets.values():
        assert t["met"] in (True, False, None) and (t["met"] is None) == (t["measured"] is None)
        assert t["met"] is not None or t["why"]


def test_gpu_check_stops_loudly_when_a_required_backend_is_missing(tmp_path, capsys):
    """No wheels (as in CI): the install step says so; a backend that is not there stops the run with status 2."""
    code = gpu_run.main(["--dry-run", "--out", str(tmp_path / "out"), "--wheels", str(tmp_path / "none"),
                         "--require", "no_such_backend"])
    assert code == 2
    summary = json.loads((tmp_path / "out" / "gpu_run.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["wheels"]["status"] == "skipped" and "no wheels in" in steps["wheels"]["reason"]
    assert summary["stopped_at"] == "backends" and "tests" not in steps
    assert "no_such_backend" in steps["backends"]["reason"] and "backend_status()" in steps["backends"]["reason"]
    err = capsys.readouterr().err
    assert "STOPPED at step 'backends'" in err and '"cuda": ' in err  # the whole backend_status is printed


def test_time_budget_predicts_from_finished_cases():
    assert paper_scale.predict_seconds((256, 20, 100, "reference"), []) is None
    done = [{"resolution": 256, "steps": 10, "N": 10, "impl": "reference", "status": "ok", "seconds": 4.0},
            {"resolution": 256, "steps": 10, "N": 10, "impl": "engine-bf16", "status": "ok", "seconds": 1.0},
            {"resolution": 256, "steps": 100, "N": 10, "impl": "engine-bf16", "status": "ok", "seconds": 5.0},
            {"resolution": 256, "steps": 20, "N": 100, "impl": "engine-fp32", "status": "skipped"}]
    seconds, source = paper_scale.predict_seconds((256, 20, 100, "reference"), done)
    # 4 s for 10·10 step-images: 2 + 20 steps of 100 images (warm-up + timed) is 22× that, plus the margin
    assert seconds == pytest.approx(paper_scale.MARGIN * 4.0 * 22) and "reference at S=10 N=10" in source
    seconds, source = paper_scale.predict_seconds((256, 100, 100, "engine-bf16"), done)
    assert seconds == pytest.approx(paper_scale.MARGIN * 5.0 / 1000 * (200 + 10000)) and "S=100" in source
    # an implementation not measured yet borrows the slowest measured rate
    seconds, source = paper_scale.predict_seconds((256, 10, 10, paper_scale.THINNED), done)
    assert seconds == pytest.approx(paper_scale.MARGIN * 4.0 * 1.2) and source.startswith("reference")


def test_targets_report_measured_values_and_booleans():
    sz = paper_scale.PAPER

    def row(steps, n, impl, seconds, peak):
        return {"resolution": 256, "steps": steps, "N": n, "impl": impl, "status": "ok", "seconds": seconds,
                "peak_bytes": peak}
    report = {"results": [row(20, 100, "reference", 40.0, 80e9), row(20, 100, "engine-bf16", 10.0, 16e9),
                          row(10, 10, "engine-bf16", 1.0, 2.0e9), row(100, 10, "engine-bf16", 5.0, 2.4e9)],
              "fused_step": {"selected_backend": "cuda", "backends": {"cuda": {
                  "forward": {"fraction_of_copy": 0.9}, "backward": {"fraction_of_copy": 0.7}}}},
              "unet": {"N=100": {"N": 100, "fraction_of_bf16_matmul": 0.55}}}
    t = paper_scale.evaluate_targets(report, sz)
    assert t["bf16_speedup_vs_reference"]["measured"] == 4.0 and t["bf16_speedup_vs_reference"]["met"] is True
    assert t["bf16_peak_fraction_of_reference"]["measured"] == pytest.approx(0.2)
    assert t["bf16_peak_fraction_of_reference"]["met"] is True
    ratio = t["bf16_peak_ratio_s_high_vs_s_low"]  # N = 100 did not run both S: falls back to N = 10
    assert ratio["N"] == 10 and ratio["measured"] == pytest.approx(1.2) and ratio["met"] is False
    assert t["fused_step_fraction_of_copy"]["measured"] == 0.7 and t["fused_step_fraction_of_copy"]["met"] is False
    assert t["unet_fraction_of_bf16_matmul_peak"]["met"] is True
    report["results"] = report["results"][1:]
    report["results"].append({"resolution": 256, "steps": 20, "N": 100, "impl": "reference", "status": "skipped"})
    report["unet"] = {"N=100": {"error": "out of memory"}, "N=10": {"N": 10, "fraction_of_bf16_matmul": 0.3}}
    t = paper_scale.evaluate_targets(report, sz)
    assert t["bf16_speedup_vs_reference"]["met"] is None and "reference at S=20, N=100 was skipped" in \
        t["bf16_speedup_vs_reference"]["why"]
    assert t["unet_fraction_of_bf16_matmul_peak"]["N"] == 10 and t["unet_fraction_of_bf16_matmul_peak"]["met"] is False
    report["unet"] = {"N=100": {"error": "out of memory"}}
    t = paper_scale.evaluate_targets(report, sz)
    assert t["unet_fraction_of_bf16_matmul_peak"]["met"] is None
    assert "N=100: out of memory" in t["unet_fraction_of_bf16_matmul_peak"]["why"]


def test_reduced_sweep_covers_the_grid_with_rates_first_and_targets_early():
    todo = paper_scale.reduced_cases(paper_scale.PAPER)
    assert len(todo) == len(set(todo))
    grid = {(256, s, n, i) for s in (10, 20, 100) for n in (10, 100) for i in paper_scale.IMPLS}
    assert grid <= set(todo)
    assert {c[3] for c in todo[:3]} == set(paper_scale.IMPLS) and all(c[1:3] == (10, 10) for c in todo[:3])
    first_targets = [todo.index((256, 20, 100, i)) for i in ("engine-bf16", "reference")]
    assert max(first_targets) < 6  # after one rate per implementation and the N = 10 memory fallback
    # the full sweep puts the targets first: 256², S = 20, N = 100, every implementation
    assert paper_scale.cases(False)[:3] == [(256, 20, 100, impl) for impl in paper_scale.IMPLS]


def test_peak_memory_counts_only_what_the_call_allocates():
    weights = torch.ones(4 * 2**20)  # 16 MiB that exist before the call: excluded

    def call():
        scratch = torch.ones(2**18)  # 1 MiB allocated and freed inside
        return float((scratch * weights[: 2**18]).sum())
    peak, out = peak_memory(call, "cpu")
    assert out == 2**18 and 2**20 <= peak < 4 * 2**20
