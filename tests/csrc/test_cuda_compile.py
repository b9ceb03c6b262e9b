"""csrc/ compiles for Hopper (sm_90) and Ampere (sm_80) on any machine with nvcc and a CUDA build of torch.

No GPU is needed: the sources are compiled to object files only (into a temporary folder), with the
defines, include paths and C++ standard that torch's ``CUDAExtension`` uses and the flags of
``setup.py``, so a CUDA compile error shows up here before the first contact with a GPU. Where the
installed torch is a CPU build (CI's) or nvcc is missing, the test is skipped and says why.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

CSRC = Path(__file__).resolve().parents[2] / "csrc"
ARCHS = ("90", "80")  # H100/H200, A100
DEFINES = ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C", "-DWITH_CUDA"]
NVCC_FLAGS = ["-O3", "--fmad=false"]  # setup.py's
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]  # setup.py's
TIMEOUT_S = 1200


def _toolchain() -> tuple[str, list[str], list[str]]:
    """(nvcc, include flags, nvcc's common flags) for the installed torch, or skip with the reason."""
    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is a CPU build (torch.version.cuda is None): csrc/ compiles against "
                    "a CUDA build of torch and its CUDA headers, which CI's CPU torch does not have. Run this "
                    "test with a CUDA torch (e.g. `pip install torch` into a separate venv) and nvcc on PATH")
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    if not (nvcc and os.access(nvcc, os.X_OK)):
        nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip(f"no nvcc (CUDA_HOME={home!r}, none on PATH): cannot compile csrc/fused_step_cuda.cu")
    includes = cpp_extension.include_paths("cuda") + [sysconfig.get_paths()["include"], str(CSRC)]
    missing = [h for h in ("c10/cuda/CUDAGuard.h", "ATen/cuda/CUDAContext.h")
               if not any(os.path.exists(os.path.join(d, h)) for d in includes)]
    if missing:
        pytest.skip(f"torch {torch.__version__} ships no CUDA headers ({', '.join(missing)} not found)")
    return nvcc, [f"-I{d}" for d in includes], list(cpp_extension.COMMON_NVCC_FLAGS)


def _cxx_standard() -> str:
    """The -std torch's BuildExtension adds when an extension passes none (setup.py passes none)."""
    import inspect

    from torch.utils import cpp_extension

    found = re.search(r"cpp_flag_prefix \+ '(c\+\+\d+)'", inspect.getsource(cpp_extension))
    if found:
        return found.group(1)
    version = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    return "c++20" if version >= (2, 13) else "c++17"  # torch 2.13 made C++20 the minimum


def _key_lines(log: str, limit: int = 40) -> str:
    """The compiler's error and warning lines (with the line after each), else the log's end."""
    lines = log.splitlines()
    keep = [i for i, line in enumerate(lines) if re.search(r"\b(error|warning)\b", line, re.IGNORECASE)]
    if not keep:
        return "\n".join(lines[-limit:])
    picked = sorted({j for i in keep for j in (i, i + 1) if j < len(lines)})
    return "\n".join(lines[j] for j in picked[:limit])


def test_csrc_compiles_for_sm90_and_sm80(tmp_path):
    nvcc, includes, nvcc_common = _toolchain()
    std = f"-std={_cxx_standard()}"
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cxx = os.environ.get("CXX", "c++")
    commands = {
        "fused_step_cuda.cu": [nvcc, "-c", str(CSRC / "fused_step_cuda.cu"), "-o", str(tmp_path / "cuda.o"),
                               *includes, *DEFINES, *nvcc_common, "-Xcompiler", "-fPIC", *NVCC_FLAGS, *gencode, std],
        **{name: [cxx, "-c", str(CSRC / name), "-o", str(tmp_path / f"{name}.o"), *includes, *DEFINES, "-fPIC",
                  *CXX_FLAGS, std]
           for name in ("bindings.cpp", "fused_step_cpu.cpp")},
    }
    # All three at once: each takes tens of seconds.
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, cmd in commands.items()}
    own_warning = re.compile(re.escape(str(CSRC)) + r"/[\w.]+[:(]\d+.*warning")
    failures, warnings = [], []
    try:
        for name, proc in procs.items():
            log, _ = proc.communicate(timeout=TIMEOUT_S)
            if proc.returncode != 0:
                failures.append(f"{name}: exit {proc.returncode}\n$ {' '.join(commands[name])}\n{_key_lines(log)}")
            elif own_warning.search(log):
                warnings.append(f"{name}:\n{_key_lines(log)}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not failures, (f"csrc/ does not compile for sm_{'/sm_'.join(ARCHS)} against torch {torch.__version__} "
                          f"(CUDA {torch.version.cuda}, {std}):\n" + "\n\n".join(failures))
    assert not warnings, "compiler warnings in csrc/:\n" + "\n\n".join(warnings)
    assert all((tmp_path / out).stat().st_size > 0
               for out in ("cuda.o", "bindings.cpp.o", "fused_step_cpu.cpp.o"))
