"""Build script of ld3m_fast.

The compiled extension ``ld3m_fast._C`` (fused denoising step; C++ for the CPU, plus CUDA when
PyTorch has CUDA and a CUDA toolkit is found) is optional:

* ``pip install --no-build-isolation -e .`` (or without ``-e``) builds it against the torch
  already installed in the environment;
* ``pip install -e .`` with build isolation has no torch in the build environment and installs
  the pure-Python package (the ``torch`` and ``triton`` backends still work);
* a compiler error never fails the install: it is reported as a warning and the package is
  installed without the extension.

Environment variables: ``LD3M_FAST_NO_EXTENSION=1`` skips the extension; ``LD3M_FAST_NATIVE=1``
compiles the C++ code with ``-march=native`` (AVX2 kernels where the machine has AVX2; the
result only runs on CPUs like the build machine); ``LD3M_FAST_NO_CUDA=1`` builds the CPU kernels
only, even where PyTorch has CUDA (e.g. when the CUDA toolkit does not match PyTorch's CUDA).
``MAX_JOBS`` limits ninja's parallelism.
"""
from __future__ import annotations

import os
import sys
import warnings

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _extension_setup() -> dict:
    """``ext_modules``/``cmdclass`` for ``ld3m_fast._C``, or ``{}`` if it cannot or should not be built."""
    if _env_flag("LD3M_FAST_NO_EXTENSION"):
        print("ld3m_fast: LD3M_FAST_NO_EXTENSION is set; installing without the compiled extension")
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as exc:  # no torch in the build environment (pip's build isolation)
        print(f"ld3m_fast: torch is not importable at build time ({exc!r}); installing without the "
              "compiled extension (use `pip install --no-build-isolation` to build it)")
        return {}

    csrc = os.path.join("csrc")
    sources = [os.path.join(csrc, "bindings.cpp"), os.path.join(csrc, "fused_step_cpu.cpp")]
    # -ffp-contract=off / --fmad=false: no FMA contraction, so results round like the reference
    # (one rounding per operation); the op is memory-bound, FMAs would not make it faster.
    cxx_flags = ["-O3", "-ffp-contract=off", "-Wno-unknown-pragmas"]
    nvcc_flags = ["-O3", "--fmad=false"]
    link_flags = []
    macros = []
    if sys.platform.startswith("linux") and getattr(torch._C, "has_openmp", False):
        # at::parallel_for only runs in parallel if the caller is compiled with OpenMP;
        # libgomp resolves to the copy torch has already loaded.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if _env_flag("LD3M_FAST_NATIVE"):
        cxx_flags.append("-march=native")

    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and not _env_flag("LD3M_FAST_NO_CUDA")
    if with_cuda:
        sources.append(os.path.join(csrc, "fused_step_cuda.cu"))
        macros.append(("WITH_CUDA", None))
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension
    ext = ext_cls(
        name="ld3m_fast._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, csrc)],
        depends=[os.path.join(csrc, "fused_step.h")],  # rebuild on change; shipped in sdists
        define_macros=macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda else {"cxx": cxx_flags},
        extra_link_args=link_flags,
        optional=True,
    )
    print(f"ld3m_fast: building ld3m_fast._C ({'C++ + CUDA' if with_cuda else 'C++ only'}, "
          f"torch {torch.__version__})")

    class OptionalBuildExtension(BuildExtension):
        """torch's BuildExtension, but a failure to build an ``optional`` extension only warns.

        (setuptools already tolerates compiler errors of optional extensions, but not the
        RuntimeError torch raises when its ninja build fails or the CUDA versions disagree.)
        """

        def build_extensions(self):
            self._ld3m_failed = []
            try:
                super().build_extensions()
            except Exception as exc:
                if not all(getattr(e, "optional", False) for e in self.extensions):
                    raise
                self._warn(exc)
                self._ld3m_failed.extend(self.extensions)
            # Drop what failed, so that later steps (copying into the source tree for
            # editable installs, listing outputs) do not look for missing files.
            failed = {id(e) for e in self._ld3m_failed}
            self.extensions = [e for e in self.extensions if id(e) not in failed]

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:
                if not getattr(ext, "optional", False):
                    raise
                self._warn(exc)
                self._ld3m_failed.append(ext)

        @staticmethod
        def _warn(exc):
            msg = (f"ld3m_fast: building the compiled extension ld3m_fast._C failed ({exc}); installing "
                   "without it. The 'cpp'/'cuda' backends will be unavailable; 'torch' and 'triton' "
                   "still work.")
            warnings.warn(msg)
            print("WARNING: " + msg, file=sys.stderr)

    use_ninja = True
    try:
        from torch.utils.cpp_extension import is_ninja_available

        use_ninja = is_ninja_available()
    except Exception:
        pass
    return {
        "ext_modules": [ext],
        "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=use_ninja)},
    }


setup(
    name="ld3m_fast",
    version="0.1.0",
    description="Fast LD3M (latent dataset distillation with diffusion models) sampling and training step",
    python_requires=">=3.10",
    packages=sorted(set(find_packages(include=["ld3m_fast", "ld3m_fast.*"])) | {"ld3m_fast.kernels"}),
    package_dir={"ld3m_fast.kernels": "kernels"},
    package_data={"ld3m_fast.data": ["imagenet_classes.txt", "embedded/fashion-mnist/*"],
                  "ld3m_fast": ["priors/*.safetensors", "priors/*.json", "priors/*.png"]},
    install_requires=["torch", "safetensors", "tqdm", "diffusers", "Pillow", "numpy"],
    extras_require={
        "triton": ["triton"],
        "test": ["pytest", "pytest-benchmark", "triton", "ninja"],
    },
    entry_points={"console_scripts": ["ld3m-fast = ld3m_fast.cli:main"]},
    zip_safe=False,
    **_extension_setup(),
)
