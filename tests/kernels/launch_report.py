"""Runs ``tests/kernels/aot_compile.py`` in a child process without ``TRITON_INTERPRET`` and returns its report.

The tests run with ``TRITON_INTERPRET=1`` and the kernels are decorated when first imported, so the
launchers' compiled-mode path (and Triton's compiler) can only be reached from a fresh process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def launch_report(*args: str, timeout: float, cache_dir: str | None = None) -> dict:
    """The JSON report of ``python -m tests.kernels.aot_compile *args`` (fails loudly if it did not finish)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, even where one exists: targets are explicit
    if cache_dir is not None:
        env["TRITON_CACHE_DIR"] = cache_dir
    proc = subprocess.run([sys.executable, "-m", "tests.kernels.aot_compile", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"aot_compile exited with {proc.returncode} without a report:\n{proc.stderr[-4000:]}")
