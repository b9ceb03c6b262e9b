"""The command line: --version, defaults in every help, --config files and run folders, the old --model spelling,
export and eval of the exported files, logs and plots of a run."""
import json
import subprocess
import sys

import pytest

from ld3m_fast import __version__
from ld3m_fast.cli import build_parser, main

QUICK = ["--iterations", "2", "--batch-real", "4", "--net-width", "8", "--quiet"]


def test_version_and_a_help_without_torch():
    out = subprocess.run([sys.executable, "-m", "ld3m_fast", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"ld3m-fast {__version__}"
    probe = ("import sys, ld3m_fast.cli; ld3m_fast.cli.build_parser().format_help(); "
             "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.split() == \
        ["False", "False"]


@pytest.mark.parametrize("command", ["distill", "eval", "experts", "train-prior", "demo", "check", "export"])
def test_every_option_with_a_default_shows_it(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    text = sub.format_help()
    for action in sub._actions:
        if action.default not in (None, False, [], "==SUPPRESS==") and action.help not in (None, "==SUPPRESS=="):
            assert "default" in (action.help or "") or f"(default: {action.default})" in " ".join(text.split()), \
                action.dest


def test_closed_sets_fail_while_parsing(capsys):
    assert main(["distill", "--skip", "bogus"]) == 2
    assert "--skip" in capsys.readouterr().err
    assert main(["distill", "--preset", "nope"]) == 2
    assert "--preset" in capsys.readouterr().err


def test_a_run_writes_its_config_logs_and_loss_plot_and_its_config_repeats_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["distill", "--out", str(out), *QUICK, "--no-dsa"]) == 0
    settings = json.loads((out / "config.json").read_text())
    assert settings["iterations"] == 2 and settings["dsa"] is False and settings["ldm"] == "none"
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all("loss" in r for r in rows)
    assert (out / "log.csv").read_text().splitlines()[0].startswith("step")
    again = tmp_path / "again"
    assert main(["distill", "--config", str(out), "--out", str(again)]) == 0  # the run folder's settings, a new folder
    a = json.loads((out / "distilled.json").read_text())
    b = json.loads((again / "distilled.json").read_text())
    assert a["history"] == b["history"] and a["config"] == b["config"]


def test_a_config_file_sets_defaults_that_flags_override(tmp_path):
    settings = tmp_path / "run.json"
    settings.write_text(json.dumps({"ipc": 2, "iterations": 1, "batch_real": 4, "net_width": 8, "quiet": True}))
    out = tmp_path / "run"
    assert main(["distill", "--config", str(settings), "--iterations", "2", "--out", str(out)]) == 0
    config = json.loads((out / "distilled.json").read_text())["config"]
    assert config["ipc"] == 2 and config["iterations"] == 2


def test_the_old_model_flag_still_works_with_a_warning(tmp_path, capsys):
    assert main(["distill", "--model", "none", "--out", str(tmp_path / "r"), *QUICK]) == 0
    assert "--model is now --ldm" in capsys.readouterr().err


def test_export_then_eval_the_official_pair_and_the_folder(tmp_path):
    out = tmp_path / "run"
    assert main(["distill", "--out", str(out), *QUICK]) == 0
    for fmt in ("mtt", "folder"):
        assert main(["export", str(out), "--format", fmt]) == 0
    pair = out / "export-mtt" / "images_best.pt"
    assert pair.is_file() and (out / "export-mtt" / "labels_best.pt").is_file()
    for source in (out, pair, out / "export-folder"):
        table = tmp_path / f"{source.name}.json"
        assert main(["eval", str(source), "--archs", "ConvNet", "--repeats", "1", "--epochs", "1", "--quiet",
                     "--out", str(table)]) == 0
        assert 0 <= json.loads(table.read_text())["rows"][0]["mean"] <= 1
