"""A missing compiled backend is a failure where it should exist, and its build's reason is shown.

``setup.py`` never fails an install over the extension: it records why a part is missing in
``ld3m_fast/_build_failed.txt``, and ``ld3m_fast.engine.extension.unavailable_reason`` reports it.
These tests turn that record into a red suite where the backend is expected (the C++ one always,
the CUDA one where a GPU is visible), instead of a suite that quietly runs without it.
"""
from __future__ import annotations

import types

import pytest
import torch

from ld3m_fast.engine import extension
from ld3m_fast.engine.fused_step import backend_status


def test_cpp_backend_is_built():
    reason = backend_status()["cpp"]
    assert reason is None, f"the C++ backend of ld3m_fast._C is missing: {reason}"


def test_cuda_backend_is_built_where_a_gpu_is_visible():
    if torch.version.cuda is None or not torch.cuda.is_available():
        pytest.skip(f"no CUDA GPU is visible (torch {torch.__version__}, CUDA {torch.version.cuda}): the 'cuda' "
                    "backend is only required where one is")
    reason = backend_status()["cuda"]
    assert reason is None, f"a GPU is visible but the 'cuda' backend of ld3m_fast._C is missing: {reason}"


@pytest.fixture
def recorded_failure(monkeypatch, tmp_path):
    """The extension module as if installed in ``tmp_path`` (the real record file is never touched)."""
    (tmp_path / "engine").mkdir()
    monkeypatch.setattr(extension, "__file__", str(tmp_path / "engine" / "extension.py"))
    monkeypatch.setattr(extension, "_state", {})
    return tmp_path / extension.BUILD_FAILED_FILE


def test_recorded_build_failure_explains_a_missing_extension(recorded_failure, monkeypatch):
    monkeypatch.setitem(extension._state, "module", None)
    monkeypatch.setitem(extension._state, "error", ModuleNotFoundError("No module named 'ld3m_fast._C'"))
    without_record = extension.unavailable_reason("cpu")
    assert "ModuleNotFoundError" in without_record

    reason = "csrc/fused_step_cpu.cpp:116:75: error: 'undefined_cpu_fn' was not declared in this scope"
    recorded_failure.write_text(f"building the compiled extension ld3m_fast._C failed ({reason})\n")
    for device_type in ("cpu", "cuda"):
        message = extension.unavailable_reason(device_type)
        assert reason in message and "the build failed" in message, message
    assert reason in backend_status()["cpp"] and reason in backend_status()["cuda"]


def test_recorded_build_failure_explains_missing_cuda_kernels(recorded_failure, monkeypatch):
    cpu_only = types.SimpleNamespace(has_cuda=lambda: False)
    monkeypatch.setitem(extension._state, "module", cpu_only)
    monkeypatch.setitem(extension._state, "error", None)
    assert "without its CUDA kernels" in extension.unavailable_reason("cuda")
    assert extension.unavailable_reason("cpu") is None

    reason = "the CUDA kernels failed to build (fused_step_cuda.cu(87): error: identifier \"x\" is undefined)"
    recorded_failure.write_text(reason + "\n")
    message = backend_status()["cuda"]
    assert reason in message, message
    assert backend_status()["cpp"] is None  # the C++ kernels were built: the record does not hide them
