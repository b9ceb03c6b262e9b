"""Interrupts lose nothing: SIGINT/SIGTERM at random moments, then a resume, end bit-identical to an uninterrupted
run, for DM, DC with several updates per iteration and MTT; a hard stop mid-iteration rewinds to the boundary."""
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ld3m_fast.distillation import distill
from ld3m_fast.distillation.checkpoint import load_checkpoint
from ld3m_fast.errors import RunInterrupted
from tests.helpers import interruptible_run
from tests.helpers.toy import toy_data

WORKER = Path(interruptible_run.__file__)


def same_result(a, b) -> None:
    assert a.history == b.history
    for name in ("images", "Z", "c"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y), name


def interrupt(case, out, experts, signals, delay, during_setup=False):
    """Start the worker, send ``signals`` (0.05 s apart) ``delay`` seconds after its loop starts (or after distill is
    called, ``during_setup``); return its exit code and output."""
    cmd = [sys.executable, str(WORKER), case, "--out", str(out)] + (["--experts", str(experts)] if experts else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    if not during_setup:
        assert proc.stdout.readline().strip() == "ITERATING"
    time.sleep(delay)
    for s in signals:
        if proc.poll() is None:
            proc.send_signal(s)
            time.sleep(0.05)
    out_text, err = proc.communicate(timeout=300)
    # 130/143: stopped by the run; -SIGINT/-SIGTERM: a later signal arrived after the run had stopped and given the
    # default handlers back (the process was then ending anyway); 0: the run had finished
    assert proc.returncode in (0, 130, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM), err[-2000:]
    return proc.returncode, out_text


_REFERENCES: dict = {}

ATTEMPTS = [  # (case, signals, sent during set-up?)
    ("dm", [signal.SIGINT], False), ("dm", [signal.SIGTERM], True), ("dc", [signal.SIGTERM], False),
    ("dc", [signal.SIGINT, signal.SIGINT], False), ("mtt", [signal.SIGINT], False),
]


@pytest.mark.parametrize("case, signals, during_setup", ATTEMPTS,
                         ids=[f"{c}-{'+'.join(s.name for s in sig)}{'-setup' if setup else ''}"
                              for c, sig, setup in ATTEMPTS])
def test_signals_at_random_moments_resume_bit_identically(case, signals, during_setup, experts, tmp_path):
    model, kw = interruptible_run.settings(case, str(experts.path) if case == "mtt" else None)
    if case not in _REFERENCES:
        _REFERENCES[case] = distill(toy_data(), model, **kw)
    delay = random.Random(f"{case}-{signals}-{during_setup}").uniform(0.0, 0.5)
    out = tmp_path / "run"
    code, text = interrupt(case, out, experts.path if case == "mtt" else None, signals, delay, during_setup)
    if not during_setup:
        assert code, f"the run ended before the signal: {text}"
    if code:
        saved = load_checkpoint(out)
        assert saved is None or 0 < saved.completed < kw["iterations"]
        assert not list(out.glob(".state.*.tmp.safetensors"))
    same_result(distill(toy_data(), model, checkpoint_dir=out, **kw), _REFERENCES[case])


def test_a_hard_stop_mid_iteration_rewinds_to_the_boundary(data, tmp_path, monkeypatch):
    """DC with two updates per iteration, stopped after the first of them: the checkpoint holds the boundary."""
    from ld3m_fast.distillation import run as run_module
    kw = dict(algorithm="dc", outer_loop=2, inner_loop=1, ipc=1, iterations=5, checkpoint_every=100, seed=1,
              batch_real=8, net_width=16, progress=False)
    reference = distill(data, None, **kw)
    original = run_module.prepare

    def stopped_in_iteration_3(*args, **kwargs):
        prepared = original(*args, **kwargs)
        step = prepared.run if hasattr(prepared, "run") else prepared
        update = step.step_on_images
        calls = {"n": 0}

        def counting(*a, **k):
            calls["n"] += 1
            if calls["n"] == 2 * 3 + 2:  # the second update of iteration 3 (0-based): after the first was applied
                raise KeyboardInterrupt()
            return update(*a, **k)
        step.step_on_images = counting
        return prepared

    monkeypatch.setattr(run_module, "prepare", stopped_in_iteration_3)
    with pytest.raises(KeyboardInterrupt):
        distill(data, None, checkpoint_dir=tmp_path, **kw)
    monkeypatch.setattr(run_module, "prepare", original)
    saved = load_checkpoint(tmp_path)
    assert saved.completed == 3 and len(saved.history) == 3
    same_result(distill(data, None, checkpoint_dir=tmp_path, **kw), reference)


def test_a_signal_in_process_stops_at_the_boundary_with_its_checkpoint(data, tmp_path, monkeypatch, request):
    from ld3m_fast.distillation import run as run_module
    original = run_module.prepare

    def signalled_in_iteration_2(*args, **kwargs):
        prepared = original(*args, **kwargs)
        step = prepared.algorithm.iteration

        def iteration(it):
            if it == 2:
                signal.raise_signal(signal.SIGINT)  # arrives mid-iteration; the iteration still completes
            return step(it)
        prepared.algorithm.iteration = iteration
        return prepared

    monkeypatch.setattr(run_module, "prepare", signalled_in_iteration_2)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (not a background job)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with pytest.raises(RunInterrupted, match="stopped after iteration 3 of 10") as info:
        distill(data, None, ipc=1, iterations=10, checkpoint_every=100, checkpoint_dir=tmp_path, batch_real=8,
                net_width=16, progress=False)
    assert info.value.signal == signal.SIGINT
    saved = load_checkpoint(tmp_path)
    assert saved.completed == 3 and len(saved.history) == 3 and "X" in saved.tensors
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back


def test_an_ignored_signal_stays_ignored(data, tmp_path, request):
    """A run started as a background job (SIGINT ignored by the shell) is not stopped by a terminal's Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    from ld3m_fast.distillation import run as run_module

    with run_module._StopSignals() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and callable(signal.getsignal(signal.SIGTERM))
        signal.raise_signal(signal.SIGINT)
        assert stop.signal is None
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
