"""RunLog: JSONL + CSV rows flushed per call, resume without duplicates, optional TensorBoard/wandb."""
import csv
import json
import math
import subprocess
import sys
import textwrap
import types
import typing

import numpy as np
import pytest
import torch

from ld3m_fast.errors import DamagedFileError, InvalidArgumentError, InvalidTypeError, MissingDependencyError
from ld3m_fast.tracking import RunLog


def jsonl(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def csv_rows(folder):
    with open(folder / "log.csv", newline="") as f:
        return list(csv.reader(f))


def test_rows_in_jsonl_and_csv(tmp_path):
    with RunLog(tmp_path / "run") as log:
        log.log(0, loss=1.5, lr=torch.tensor(0.01), n=np.int64(3))
        log.log(1, loss=torch.tensor([0.75]), lr=0.01, n=4)
    folder = tmp_path / "run"
    assert jsonl(folder) == [{"step": 0, "loss": 1.5, "lr": pytest.approx(0.01), "n": 3},
                             {"step": 1, "loss": 0.75, "lr": 0.01, "n": 4}]
    rows = csv_rows(folder)
    assert rows[0] == ["step", "loss", "lr", "n"] and rows[2] == ["1", "0.75", "0.01", "4"]
    assert float(rows[1][2]) == pytest.approx(0.01)


def test_new_keys_widen_the_csv_header(tmp_path):
    with RunLog(tmp_path) as log:
        log.log(0, loss=2.0)
        log.log(1, loss=1.0, acc=0.5)
        log.log(2, acc=0.75)
    assert csv_rows(tmp_path) == [["step", "loss", "acc"], ["0", "2.0", ""], ["1", "1.0", "0.5"], ["2", "", "0.75"]]
    assert jsonl(tmp_path)[2] == {"step": 2, "acc": 0.75}


def test_non_finite_values(tmp_path):
    with RunLog(tmp_path) as log:
        log.log(0, loss=float("nan"), grad=float("inf"))
    assert jsonl(tmp_path) == [{"step": 0, "loss": None, "grad": None}]  # JSON has no NaN
    assert csv_rows(tmp_path)[1] == ["0", "nan", "inf"]


def test_every_row_is_on_disk_when_the_process_is_killed(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from ld3m_fast.tracking import RunLog
        log = RunLog({str(tmp_path)!r})
        for step in range(3):
            log.log(step, loss=1.0 / (step + 1))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert done.returncode == -9
    assert [r["step"] for r in jsonl(tmp_path)] == [0, 1, 2] and len(csv_rows(tmp_path)) == 4


def test_resume_rewrites_the_same_rows_without_duplicates(tmp_path):
    def run(folder, start=0, resume_from=None):
        with RunLog(folder, resume_from=resume_from) as log:
            for step in range(start, 10):
                log.log(step, loss=1.0 / (step + 1), **({"acc": step / 10} if step % 4 == 0 else {}))

    run(tmp_path / "whole")
    run(tmp_path / "resumed")
    RunLog(tmp_path / "resumed", resume_from=5).close()  # killed and restarted from the checkpoint at step 5
    assert [r["step"] for r in jsonl(tmp_path / "resumed")] == [0, 1, 2, 3, 4]
    assert len(csv_rows(tmp_path / "resumed")) == 6
    run(tmp_path / "resumed", start=5, resume_from=5)
    for name in ("log.jsonl", "log.csv"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_resume_drops_a_line_cut_short_and_refuses_a_damaged_one(tmp_path):
    with RunLog(tmp_path) as log:
        log.log(0, loss=float("nan"))
        log.log(1, loss=1.0)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # killed mid-line
    with RunLog(tmp_path, resume_from=10) as log:
        assert [r["step"] for r in log.rows] == [0, 1] and math.isnan(log.rows[0]["loss"])
    (tmp_path / "log.jsonl").write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(DamagedFileError, match="line 2"):
        RunLog(tmp_path, resume_from=1)


def test_a_new_run_starts_the_log_afresh(tmp_path):
    with RunLog(tmp_path) as log:
        log.log(0, loss=1.0)
    with RunLog(tmp_path) as log:
        log.log(0, loss=2.0)
    assert jsonl(tmp_path) == [{"step": 0, "loss": 2.0}]


def test_bad_use(tmp_path):
    with pytest.raises(InvalidArgumentError, match="unknown"):
        RunLog(tmp_path, backends=("mlflow",))
    with pytest.raises(InvalidArgumentError, match="resume_from"):
        RunLog(tmp_path, resume_from=-1)
    log = RunLog(tmp_path)
    with pytest.raises(InvalidTypeError, match="loss"):
        log.log(0, loss="low")
    with pytest.raises(InvalidTypeError, match="several"):
        log.log(0, loss=torch.ones(2))
    with pytest.raises(InvalidArgumentError, match="step"):
        log.log(-1, loss=1.0)
    log.close()
    log.close()
    with pytest.raises(InvalidArgumentError, match="closed"):
        log.log(1, loss=1.0)


def hide(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError


def test_missing_packages_are_named_and_nothing_is_written(tmp_path, monkeypatch):
    hide(monkeypatch, "tensorboard", "torch.utils.tensorboard", "wandb")
    with pytest.raises(MissingDependencyError, match="pip install tensorboard"):
        RunLog(tmp_path / "a", backends=("jsonl", "tensorboard"))
    with pytest.raises(MissingDependencyError, match="pip install wandb"):
        RunLog(tmp_path / "b", backends="wandb")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with RunLog(tmp_path / "c", backends=("jsonl", "csv")) as log:  # never imported unless asked for
        log.log(0, loss=1.0)


class Recorder:
    """Stands in for SummaryWriter: records the constructor's and every method's arguments."""
    calls: typing.ClassVar[list] = []

    def __init__(self, *args, **kwargs):
        Recorder.calls.append(("init", args, kwargs))

    def __getattr__(self, name):
        return lambda *args, **kwargs: Recorder.calls.append((name, args, kwargs))


def test_tensorboard_receives_every_scalar(tmp_path, monkeypatch):
    Recorder.calls = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Recorder))
    with RunLog(tmp_path, backends=("tensorboard",), config={"ipc": 1}, resume_from=3) as log:
        log.log(3, loss=0.5, acc=torch.tensor(0.25))
    (_, _, init), *rest = Recorder.calls
    assert init == {"log_dir": str(tmp_path / "tensorboard"), "purge_step": 3}
    assert ("add_scalar", ("loss", 0.5, 3), {}) in rest and ("add_scalar", ("acc", 0.25, 3), {}) in rest
    assert any(name == "add_text" and '"ipc": 1' in args[1] for name, args, _ in rest)
    assert rest[-1][0] == "close"


def test_wandb_is_offline_by_default_and_a_resumed_run_keeps_its_id(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    ids = iter(["first", "second"])
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or Run(),
                                 util=types.SimpleNamespace(generate_id=lambda: next(ids)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with RunLog(tmp_path, backends=("wandb",), config={"ipc": 10}) as log:
        log.log(0, loss=1.0)
    assert calls[0][1]["mode"] == "offline" and calls[0][1]["id"] == "first" and calls[0][1]["config"] == {"ipc": 10}
    assert calls[1:] == [("log", {"loss": 1.0}, 0), ("finish",)]
    monkeypatch.setenv("WANDB_MODE", "online")
    calls.clear()
    RunLog(tmp_path, backends=("wandb",), resume_from=1).close()
    assert calls[0][1]["mode"] == "online" and calls[0][1]["id"] == "first" and calls[0][1]["resume"] == "allow"
