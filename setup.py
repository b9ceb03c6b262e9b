"""Build script of ld3m_fast.

The compiled extension ``ld3m_fast._C`` (fused denoising step; C++ for the CPU, plus CUDA when
PyTorch has CUDA, a CUDA toolkit is found and there is an architecture to compile for) is optional:

* ``pip install --no-build-isolation -e .`` (or without ``-e``) builds it against the torch
  already installed in the environment;
* ``pip install -e .`` with build isolation has no torch in the build environment and installs
  the pure-Python package (the ``torch`` and ``triton`` backends still work);
* a failed build never fails the install, but it is not silent either: what was not built and
  why (the compiler's error lines) goes to ``ld3m_fast/_build_failed.txt``, which the ``cpp``/
  ``cuda`` backends report (``ld3m-fast check``, ``backend_status()``) and the tests show. When the
  CUDA part fails, the C++ part is built alone. A complete build deletes the file.

Environment variables: ``LD3M_FAST_NO_EXTENSION=1`` skips the extension; ``LD3M_FAST_NATIVE=1``
compiles the C++ code with ``-march=native`` (AVX2 kernels where the machine has AVX2; the
result only runs on CPUs like the build machine); ``LD3M_FAST_NO_CUDA=1`` builds the CPU kernels
only, even where PyTorch has CUDA (e.g. when the CUDA toolkit does not match PyTorch's CUDA).
``TORCH_CUDA_ARCH_LIST`` (e.g. ``9.0``) chooses the GPU architectures; without it, those of the
visible GPUs. ``MAX_JOBS`` limits ninja's parallelism.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _extension_setup() -> dict:
    """``ext_modules``/``cmdclass`` for ``ld3m_fast._C`` (``{}`` if it cannot be built); records why a part is missing.

    The record is ``ld3m_fast/_build_failed.txt`` in the source tree (and in the build tree the
    wheel is made from); ``ld3m_fast.engine.extension`` reads it.
    """
    def record(reason: str | None, build_lib: str | None = None) -> None:
        for root in {HERE, build_lib or HERE}:
            path = os.path.join(root, "ld3m_fast", "_build_failed.txt")
            if reason is None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            elif os.path.isdir(os.path.dirname(path)):
                with open(path, "w") as f:
                    f.write(reason + "\n")
        if reason is not None:
            print(f"WARNING: ld3m_fast: {reason}", file=sys.stderr)

    if _env_flag("LD3M_FAST_NO_EXTENSION"):
        record("LD3M_FAST_NO_EXTENSION is set: installed without the compiled extension")
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension, is_ninja_available
    except Exception as exc:  # noqa: BLE001 - no torch in the build environment (pip's build isolation)
        record(f"torch was not importable at build time ({exc!r}), so the compiled extension was not built; "
               "use `pip install --no-build-isolation` to build it")
        return {}

    # Why the CUDA kernels are left out although torch has CUDA (None: they are built, or torch has none).
    cuda_reason = None
    if torch.version.cuda is not None:
        if _env_flag("LD3M_FAST_NO_CUDA"):
            cuda_reason = "LD3M_FAST_NO_CUDA is set: built without the CUDA kernels"
        elif CUDA_HOME is None:
            cuda_reason = (f"torch {torch.__version__} has CUDA {torch.version.cuda} but no CUDA toolkit (nvcc) was "
                           "found: built without the CUDA kernels; set CUDA_HOME to the toolkit and rebuild")
        elif not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
            cuda_reason = ("no GPU is visible and TORCH_CUDA_ARCH_LIST is unset, so there was no CUDA architecture to "
                           "compile for: built without the CUDA kernels; set e.g. TORCH_CUDA_ARCH_LIST=9.0 and rebuild")
    with_cuda = torch.version.cuda is not None and cuda_reason is None

    def make_extension(cuda: bool):
        # -ffp-contract=off / --fmad=false: no FMA contraction, so results round like the reference
        # (one rounding per operation); the op is memory-bound, FMAs would not make it faster.
        cxx = ["-O3", "-ffp-contract=off", "-Wno-unknown-pragmas"]
        link = []
        if sys.platform.startswith("linux") and getattr(torch._C, "has_openmp", False):
            # at::parallel_for only runs in parallel if the caller is compiled with OpenMP;
            # libgomp resolves to the copy torch has already loaded.
            cxx.append("-fopenmp")
            link.append("-fopenmp")
        if _env_flag("LD3M_FAST_NATIVE"):
            cxx.append("-march=native")
        sources = ["csrc/bindings.cpp", "csrc/fused_step_cpu.cpp"] + (["csrc/fused_step_cuda.cu"] if cuda else [])
        return (CUDAExtension if cuda else CppExtension)(
            name="ld3m_fast._C",
            sources=sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            depends=["csrc/fused_step.h"],  # rebuild on change; shipped in sdists
            define_macros=[("WITH_CUDA", None)] if cuda else [],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--fmad=false"]} if cuda else {"cxx": cxx},
            extra_link_args=link,
        )

    def key_lines(exc: Exception, log: str) -> str:
        """The compiler's error lines (a few hundred characters), else the exception."""
        errors = [line.strip()[:240] for line in log.splitlines()
                  if re.search(r"\berror\b|cannot find|undefined reference", line, re.IGNORECASE)
                  and not line.startswith(("[", "FAILED:")) and len(line) < 1000]  # not the command lines
        text = " | ".join(dict.fromkeys(errors)) or f"{type(exc).__name__}: {exc}"
        return text[:600]

    class RecordingBuildExtension(BuildExtension):
        """torch's BuildExtension that never fails: it records what failed, retrying without CUDA first."""

        def build_extensions(self):
            compiler_state = dict(vars(self.compiler))  # torch wraps the compiler on every call
            failure = self._attempt()
            if failure is None:
                return record(cuda_reason, self.build_lib)
            if with_cuda:
                vars(self.compiler).clear()
                vars(self.compiler).update(compiler_state)
                ext, = self.extensions  # keeps setuptools' per-extension state, takes the C++-only settings
                vars(ext).update({k: v for k, v in vars(make_extension(cuda=False)).items() if not k.startswith("_")})
                retry = self._attempt()
                if retry is None:
                    return record(f"the CUDA kernels failed to build ({failure}); built the C++ kernels only",
                                  self.build_lib)
                failure = f"{failure}; without CUDA: {retry}"
            record(f"building the compiled extension ld3m_fast._C failed ({failure}); installed without it: the "
                   "'cpp' and 'cuda' backends are unavailable, 'torch' and 'triton' still work", self.build_lib)
            self.extensions = []  # later steps (copy to the source tree, outputs) must not look for it

        def _attempt(self) -> str | None:
            """Builds, with the compiler's output caught (and echoed): ``None``, or the failure's key lines."""
            with tempfile.TemporaryFile() as log:
                sys.stdout.flush()
                sys.stderr.flush()
                saved = os.dup(1), os.dup(2)
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                try:
                    super().build_extensions()
                    failure = None
                except Exception as exc:  # noqa: BLE001 - any failure is recorded, never raised
                    failure = exc
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os.dup2(saved[0], 1)
                    os.dup2(saved[1], 2)
                    os.close(saved[0])
                    os.close(saved[1])
                log.seek(0)
                text = log.read().decode(errors="replace")
            sys.stdout.write(text)
            return None if failure is None else key_lines(failure, text)

    print(f"ld3m_fast: building ld3m_fast._C ({'C++ + CUDA' if with_cuda else 'C++ only'}, torch {torch.__version__})")
    return {
        "ext_modules": [make_extension(with_cuda)],
        "cmdclass": {"build_ext": RecordingBuildExtension.with_options(use_ninja=is_ninja_available())},
    }


# The package's metadata, dependencies, extras and entry point are in pyproject.toml; this script adds what
# pyproject.toml cannot say: the package laid out over two folders (kernels/ is ld3m_fast.kernels) and the extension.
setup(
    packages=sorted(set(find_packages(include=["ld3m_fast", "ld3m_fast.*"])) | {"ld3m_fast.kernels"}),
    package_dir={"ld3m_fast.kernels": "kernels"},
    package_data={"ld3m_fast.data": ["imagenet_classes.txt", "embedded/fashion-mnist/*"],
                  "ld3m_fast": ["priors/*.safetensors", "priors/*.json", "priors/*.png"]},
    zip_safe=False,
    **_extension_setup(),
)
