"""Every Triton kernel compiles ahead of time for Hopper (sm_90) and Ampere (sm_80) on a machine without a GPU.

``tests/kernels/aot_compile.py`` drives the real launchers over the shapes, dtypes and layouts the
cin256-v2 UNet, its VQ decoder and the kernel tests use (plus huge ones), captures every launch's
arguments and constexprs, and compiles each distinct specialisation, for every autotune
configuration, with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` down to a
cubin (ptxas). Select with ``pytest -k aot``.
"""
import pytest

from tests.kernels.launch_report import launch_report

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia.compiler", reason="Triton is installed without its CUDA backend")

KERNELS = ("_step_forward_kernel", "_step_backward_kernel", "_channel_stats", "_apply", "_grad_sums", "_grad_input")


def test_aot_every_kernel_variant_compiles_for_sm90_and_sm80(tmp_path):
    from ld3m_fast.kernels.fused_step import _GPU_CONFIGS

    report = launch_report("--targets", "90,80", timeout=1800, cache_dir=str(tmp_path))  # fresh cache: real compiles
    assert report["call_errors"] == []
    assert report["compile_failures"] == [], "\n\n".join(report["compile_failures"])
    assert report["stage"] == "cubin"
    assert report["compiled"] == report["variants_sm90"] + report["variants_sm80"]
    for arch in ("sm90", "sm80"):
        assert set(report["variants_by_kernel"][arch]) == set(KERNELS)
    # the autotuned step kernels were compiled with every one of their configurations
    for name in ("_step_forward_kernel", "_step_backward_kernel"):
        assert report["autotune_configs"][name] == sorted(str(c) for c in _GPU_CONFIGS)
    # huge inputs (int64 offsets, 64-bit sizes) are among the compiled calls
    assert any("(1, 128, 4096, 4096)" in call for call in report["huge_calls"])
    assert any("step_forward(174763" in call for call in report["huge_calls"])
