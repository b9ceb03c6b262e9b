"""Ahead-of-time compile of every Triton kernel for given CUDA targets, on a machine without a GPU.

What: the four launchers (``step_forward``, ``step_backward``, ``group_norm_silu_forward``,
``group_norm_silu_backward``) are called over ``CALLS`` — the shapes, dtypes and layouts the
cin256-v2 UNet, the VQ-f4 decoder and the tests give them, plus huge ones — on fake CUDA tensors
(``FakeTensorMode``: shapes, strides, dtypes, no memory). Triton's launch is replaced by a recorder,
so each launch's real arguments, constexprs and grid are captured instead of run. Each launch is
turned into the specialisation Triton's JIT builds for it (the JIT's own argument binder, for every
autotune configuration), and each distinct one is compiled with
``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32))``
through the whole pipeline (ttir → ttgir → llir → ptx → cubin by ptxas).

Also reported, for ``tests/kernels/test_launch_limits.py``: every launch grid (CUDA allows
x ≤ 2³¹ − 1, y, z ≤ 65 535), and every host synchronisation in the launch path (``.item()``-style
reads, host↔device copies), found by a dispatch mode that watches every tensor op the launchers run.

Why a separate process: the kernels are decorated when imported, interpreted under
``TRITON_INTERPRET=1`` (as the CPU tests run), so compiling needs a process without it.

Run: ``python -m tests.kernels.aot_compile [--targets 90,80] [--no-compile] [--kernels DIR]``
(``--kernels``: a folder holding other ``fused_step.py``/``groupnorm_silu.py`` to count, e.g. an
older version). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
import types
import warnings
from dataclasses import dataclass, field

if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes"):
    sys.exit("aot_compile: unset TRITON_INTERPRET (the kernels would be decorated for the interpreter)")

import torch  # noqa: E402
import triton  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

GRID_X_LIMIT, GRID_YZ_LIMIT = 2**31 - 1, 65_535
SM_COUNT = 132  # H100/H200 SXM; the launchers size their reduction grids by it

# --- the wrapper calls -------------------------------------------------------------------------------

# Every GroupNorm→SiLU of the cin256-v2 UNet (block channels 192/384/576/960, 2 res blocks per level,
# 3 per up level with the skip concatenated) by latent side; and of its VQ-f4 decoder (128·(1, 2, 4)).
UNET_NORMS = {64: (192, 384, 576), 32: (192, 384, 576, 768, 960), 16: (384, 576, 960, 1152, 1536),
              8: (576, 960, 1536, 1920)}
DECODER_NORMS = {64: (512,), 128: (256, 512), 256: (128, 256)}
GROUPS = 32
LATENT = (3, 64, 64)


@dataclass(frozen=True)
class Call:
    """One launcher call: ``op`` in {step_forward, step_backward, gn_forward, gn_backward}."""

    op: str
    shape: tuple
    dtype: torch.dtype
    channels_last: bool = False      # group norm: x (and grad_y) in channels-last layout
    groups: int = GROUPS
    weight_dtype: torch.dtype | None = None  # group norm: affine dtype (default: x's)
    grad_layout_differs: bool = False        # group norm backward: grad_y contiguous while x is not
    noise: bool = False              # step forward
    want_x0: bool = False            # step forward
    grad_x0: bool = False            # step backward
    tags: tuple = ()                 # "huge": checked for grid limits, compiled too


def _step_calls():
    calls = []
    for dtype in (torch.bfloat16, torch.float32):  # the two dtypes LD3M runs: every flag combination
        for batch in (1, 10, 100):
            shape = (batch, *LATENT)
            calls += [Call("step_forward", shape, dtype, noise=nz, want_x0=x0) for nz in (False, True)
                      for x0 in (False, True)]
            calls += [Call("step_backward", shape, dtype, grad_x0=h) for h in (False, True)]
    for dtype in (torch.float16, torch.float64):
        calls += [Call("step_forward", (10, *LATENT), dtype, want_x0=x0) for x0 in (False, True)]
        calls += [Call("step_backward", (10, *LATENT), dtype, grad_x0=h) for h in (False, True)]
    for batch in (8, 12, 16, 20, 24, 30):  # chunk sizes a memory plan may pick: one tuning per power-of-two bucket
        calls += [Call("step_forward", (batch, *LATENT), torch.bfloat16),
                  Call("step_backward", (batch, *LATENT), torch.bfloat16)]
    for shape in ((3, 3, 7, 5), (1, 1, 1, 1)):  # n not a multiple of 16; n = 1
        calls += [Call("step_forward", shape, torch.float32, noise=True, want_x0=True),
                  Call("step_backward", shape, torch.float32, grad_x0=True)]
    for batch in (87_382, 174_763, 4096):  # 2n past int32 offsets; n itself past int32; N in the thousands
        calls += [Call("step_forward", (batch, *LATENT), torch.bfloat16, tags=("huge",)),
                  Call("step_backward", (batch, *LATENT), torch.bfloat16, tags=("huge",))]
    return calls


def _gn_pair(shape, dtype, **kw):
    return [Call("gn_forward", shape, dtype, **kw), Call("gn_backward", shape, dtype, **kw)]


def _gn_calls():
    calls = []
    for dtype in (torch.bfloat16, torch.float32):
        for cl in (True, False):
            for side, chans in UNET_NORMS.items():
                for c in chans:
                    calls += _gn_pair((20, c, side, side), dtype, channels_last=cl)
            for side, chans in DECODER_NORMS.items():
                for c in chans:
                    calls += _gn_pair((4, c, side, side), dtype, channels_last=cl)
    for dtype in (torch.float16, torch.float64):
        for cl in (True, False):
            calls += _gn_pair((2, 192, 64, 64), dtype, channels_last=cl) + _gn_pair((2, 960, 8, 8), dtype,
                                                                                  channels_last=cl)
    for cl in (True, False):  # bf16 activations with float32 affine parameters (autocast-style)
        calls += _gn_pair((20, 384, 32, 32), torch.bfloat16, channels_last=cl, weight_dtype=torch.float32)
    calls.append(Call("gn_backward", (20, 576, 16, 16), torch.bfloat16, channels_last=True, grad_layout_differs=True))
    for shape, groups, cl in (((2, 12, 5, 7), 4, False), ((3, 6, 9, 1), 3, False), ((1, 8, 33), 2, False),
                              ((2, 16, 6, 6), 8, True), ((1, 6, 41, 43), 3, False), ((2, 96, 5, 3), 32, True)):
        calls += _gn_pair(shape, torch.float32, channels_last=cl, groups=groups)  # the kernel tests' odd sizes
    for shape in ((1, 128, 1448, 1448), (1, 128, 4096, 4096), (4096, 960, 8, 8), (4096, 192, 64, 64)):
        for cl in (True, False):
            calls += _gn_pair(shape, torch.bfloat16, channels_last=cl, tags=("huge",))
    return calls


CALLS = _step_calls() + _gn_calls()

# --- fake CUDA tensors and the launch recorder -------------------------------------------------------


@dataclass
class Launch:
    """One captured kernel launch: the JIT function, its arguments, grid and (autotuned) configurations."""

    kernel: JITFunction
    args: tuple
    kwargs: dict
    grid: object
    configs: list = field(default_factory=lambda: [None])
    tune_key: tuple | None = None  # the autotuner's cache key: one benchmarking of all configs per distinct key


class _Recorder:
    """Replaces ``JITFunction.run`` and ``Autotuner.run``: launches are recorded, nothing is run or compiled."""

    def __init__(self):
        self.launches: list[Launch] = []

    def __enter__(self):
        recorder = self
        self._saved = JITFunction.run, Autotuner.run

        def jit_run(kernel, *args, grid, warmup, **kwargs):
            recorder.launches.append(Launch(kernel, args, kwargs, grid))

        def autotune_run(tuner, *args, grid, warmup=False, **kwargs):
            if not isinstance(tuner.fn, JITFunction):
                raise TypeError(f"cannot capture {tuner.fn!r} (autotuner over a non-JIT function)")
            tuner.nargs = dict(zip(tuner.arg_names, args))  # as Autotuner.run: pruning may read the arguments
            configs = list(tuner.prune_configs(kwargs)) if len(tuner.configs) > 1 else list(tuner.configs)
            named = {k: v for k, v in {**tuner.nargs, **kwargs}.items() if k in tuner.arg_names}
            key = [named[k] for k in tuner.keys if k in named] + [str(v.dtype) for v in named.values()
                                                                  if hasattr(v, "dtype")]
            tuner.nargs = None
            recorder.launches.append(Launch(tuner.fn, args, kwargs, grid, configs, (tuner.fn.__name__, *key)))

        JITFunction.run, Autotuner.run = jit_run, autotune_run
        return self

    def __exit__(self, *exc):
        JITFunction.run, Autotuner.run = self._saved


class _NoDevice:
    """``torch.cuda.device`` stand-in: fake tensors need no current device."""

    def __init__(self, device):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _basic_getitem(t: torch.Tensor, index):
    """``t[index]`` for ints, slices, ``None`` and ``...`` through view ops. (Python indexing takes a CUDA device
    guard, which a PyTorch built without CUDA lacks even for fake tensors; the view ops need none.)"""
    index = index if isinstance(index, tuple) else (index,)
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index):
        raise TypeError(f"the fake-CUDA capture supports basic indexing only, not {index!r}")
    if any(i is Ellipsis for i in index):
        k = next(j for j, i in enumerate(index) if i is Ellipsis)
        real = sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:k] + (slice(None),) * (t.dim() - real) + index[k + 1:]
    dim = 0
    for i in index:
        if i is None:
            t = t.unsqueeze(dim)
            dim += 1
        elif isinstance(i, slice):
            start, stop, step = i.indices(t.shape[dim])
            if step != 1:
                raise TypeError(f"the fake-CUDA capture supports unit-step slices only, not {i!r}")
            t = t.narrow(dim, start, max(0, stop - start))
            dim += 1
        else:
            t = t.select(dim, i)
    return t


@contextlib.contextmanager
def fake_cuda():
    """Fake CUDA tensors on a machine without CUDA; the CUDA queries the launchers make, answered for an H200."""
    saved = torch.cuda.device, torch.cuda.get_device_properties, torch.Tensor.__getitem__
    torch.cuda.device = _NoDevice
    torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(multi_processor_count=SM_COUNT)
    torch.Tensor.__getitem__ = _basic_getitem
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # data_ptr() of fake tensors (0: 16-byte aligned, as real allocations)
            with FakeTensorMode(allow_non_fake_inputs=True):
                yield
    finally:
        torch.cuda.device, torch.cuda.get_device_properties, torch.Tensor.__getitem__ = saved


class HostSyncDetector(TorchDispatchMode):
    """Records every tensor op that makes the host wait for the device: a read of a value to the host
    (``.item()``, ``.tolist()``, ``bool(t)``), or a copy between host and device memory."""

    READS = ("aten._local_scalar_dense", "aten.item", "aten.equal", "aten.is_nonzero", "aten.nonzero")

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)
        if name.startswith(self.READS):
            self.found.append(f"{func}: reads a device value on the host")
        out = func(*args, **kwargs)
        devices_in = {t.device.type for t in _tensors((args, kwargs))}
        devices_out = {t.device.type for t in _tensors(out)}
        if "cpu" in devices_in | devices_out and "cuda" in devices_in | devices_out:
            self.found.append(f"{func}: moves data between {sorted(devices_in)} and {sorted(devices_out)}")
        return out


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


# --- driving the launchers ---------------------------------------------------------------------------

def load_kernels(folder: str | None):
    """The ``(fused_step, groupnorm_silu)`` modules: the installed ones, or those in ``folder``."""
    if folder is None:
        from ld3m_fast.kernels import fused_step, groupnorm_silu
        return fused_step, groupnorm_silu
    modules = []
    for name in ("fused_step", "groupnorm_silu"):
        path = os.path.join(folder, name + ".py")
        spec = importlib.util.spec_from_file_location(f"aot_kernels_under_test.{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return tuple(modules)


def _inputs(call: Call):
    """Fake CUDA tensors for ``call`` (created outside the host-sync watch)."""
    dev = "cuda"

    def t(shape=call.shape, dtype=call.dtype, cl=False):
        out = torch.empty(shape, dtype=dtype, device=dev)
        return out.to(memory_format=torch.channels_last) if cl and len(shape) == 4 else out

    if call.op == "step_forward":
        return (t(), t(), t(), t(), t() if call.noise else None)
    if call.op == "step_backward":
        return (t(), t() if call.grad_x0 else None)
    c = call.shape[1]
    wd = call.weight_dtype or call.dtype
    x, w, b = t(cl=call.channels_last), t((c,), wd), t((c,), wd)
    if call.op == "gn_forward":
        return (x, w, b)
    stats_dtype = torch.float64 if call.dtype == torch.float64 else torch.float32
    mean, rstd = t((call.shape[0], call.groups), stats_dtype), t((call.shape[0], call.groups), stats_dtype)
    dy = t(cl=call.channels_last and not call.grad_layout_differs)
    return (dy, x, w, b, mean, rstd)


def _run(call: Call, fused_step, groupnorm_silu, inputs):
    from ld3m_fast.engine.fused_step import StepCoefficients

    coef = StepCoefficients(0.7, 0.71, 0.8, 0.6, 0.1, 3.0, 0.25, 0.5)
    if call.op == "step_forward":
        return fused_step.step_forward(*inputs[:4], inputs[4], coef, call.want_x0)
    if call.op == "step_backward":
        return fused_step.step_backward(inputs[0], inputs[1], coef)
    if call.op == "gn_forward":
        return groupnorm_silu.group_norm_silu_forward(*inputs, call.groups, 1e-5)
    return groupnorm_silu.group_norm_silu_backward(*inputs, call.groups)


def capture(fused_step, groupnorm_silu, calls=CALLS):
    """Drive the launchers over ``calls``: ``[(call, [Launch], [host syncs], error or None)]``."""
    results = []
    with fake_cuda():
        for call in calls:
            inputs = _inputs(call)
            detector = HostSyncDetector()
            error = None
            with _Recorder() as recorder:
                try:
                    with detector:
                        _run(call, fused_step, groupnorm_silu, inputs)
                except Exception as exc:  # reported, fails the tests
                    error = f"{type(exc).__name__}: {exc}"
            results.append((call, recorder.launches, detector.found, error))
    return results


def sync_self_check():
    """Host-syncing snippets, each of which the detector must flag (so a clean launch path means something)."""
    snippets = {
        "item": lambda x: x.sum().item(),
        "tolist": lambda x: x[:2].tolist(),
        "bool": lambda x: bool((x > 0).any()),
        "host tensor to device": lambda x: torch.arange(4, dtype=torch.float32).to(x.device),
        "torch.tensor on device": lambda x: torch.tensor([1.0, 2.0], device=x.device),
        "device to host": lambda x: x.cpu(),
    }
    flagged = {}
    with fake_cuda():
        x = torch.empty(8, device="cuda")
        for name, fn in snippets.items():
            detector = HostSyncDetector()
            try:
                with detector:
                    fn(x)
            except Exception:  # fake tensors cannot produce values; the op was recorded before that
                pass
            flagged[name] = detector.found
    return flagged


# --- specialisations and compiling -------------------------------------------------------------------

def _variant(kernel: JITFunction, args, kwargs, backend):
    """``(key, (signature, constexprs, attrs, options), bound_args)`` as ``JITFunction.run`` builds them."""
    from triton import knobs

    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):  # options JITFunction.run adds (Triton 3.9)
        if hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    if hasattr(kernel, "_pack_args"):  # Triton 3.9
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    else:  # older Triton does the same inside JITFunction.run
        from triton._utils import find_paths_if, get_iterable_path

        options = backend.parse_options(kwargs)
        sigvals = [x[0] for x in specialization]
        signature = dict(zip([p.name for p in kernel.params], sigvals))
        constexprs = {path: get_iterable_path(list(bound_args.values()), path)
                      for path in find_paths_if(sigvals, lambda _, val: val == "constexpr")}
        attrvals = [x[1] for x in specialization]
        attrs = {k: backend.parse_attr(get_iterable_path(attrvals, k))
                 for k in find_paths_if(attrvals, lambda _, x: isinstance(x, str))}
    key = (kernel.fn.__qualname__, kernel.cache_key, repr(sorted(signature.items())),
           repr(sorted(constexprs.items(), key=repr)), repr(sorted(attrs.items(), key=repr)), options.hash())
    return key, (signature, constexprs, attrs, options), bound_args


def _grid(grid, bound_args, config):
    if callable(grid):
        grid = grid(dict(bound_args, **(config.kwargs if config is not None else {})))
    return tuple(grid) + (1,) * (3 - len(grid))


def variants(results, arch: int):
    """Distinct specialisations for ``arch`` over all launches and autotune configs, and each launch's grids."""
    backend = make_backend(GPUTarget("cuda", arch, 32))
    found, grids = {}, []
    for call, launches, _, _ in results:
        for launch in launches:
            for config in launch.configs:
                kwargs = dict(launch.kwargs, **(config.all_kwargs() if config is not None else {}))
                key, spec, bound = _variant(launch.kernel, launch.args, kwargs, backend)
                found.setdefault(key, (launch.kernel, spec, f"{_describe(call)}, {config or 'no autotuning'}"))
                grids.append((call, launch.kernel.fn.__name__, _grid(launch.grid, bound, config)))
    return found, grids


_WORK: list = []  # (arch, kernel, spec, origin) for the forked compile workers


def _compile_one(index: int):
    arch, kernel, (signature, constexprs, attrs, options), _ = _WORK[index]
    start = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                  target=GPUTarget("cuda", arch, 32), options=options.__dict__)
        if not compiled.asm.get("cubin"):
            return index, "no cubin produced", time.perf_counter() - start
        return index, None, time.perf_counter() - start
    except Exception:
        return index, traceback.format_exc(limit=4)[-2000:], time.perf_counter() - start


def compile_all(work, jobs: int):
    """Compile every ``(arch, kernel, spec, origin)``; ``[(arch, kernel, origin, error or None, seconds)]``."""
    _WORK[:] = work
    if jobs > 1 and len(work) > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            done = pool.map(_compile_one, range(len(work)), chunksize=1)
    else:
        done = [_compile_one(i) for i in range(len(work))]
    return [(work[i][0], work[i][1], work[i][3], err, secs) for i, err, secs in done]


def _describe(call: Call) -> str:
    extra = [k for k in ("channels_last", "noise", "want_x0", "grad_x0", "grad_layout_differs") if getattr(call, k)]
    if call.weight_dtype is not None:
        extra.append(f"weight {call.weight_dtype}")
    return f"{call.op}{tuple(call.shape)} {str(call.dtype).removeprefix('torch.')} {' '.join(extra)}".strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="90,80", help="compute capabilities, comma separated (90: sm_90)")
    parser.add_argument("--no-compile", action="store_true", help="capture and count only")
    parser.add_argument("--kernels", default=None, help="folder with fused_step.py and groupnorm_silu.py to use")
    parser.add_argument("--jobs", type=int, default=max(1, min(8, os.cpu_count() or 1)), help="compile processes")
    opts = parser.parse_args(argv)
    targets = [int(t) for t in opts.targets.split(",") if t]

    start = time.perf_counter()
    fused_step, groupnorm_silu = load_kernels(opts.kernels)
    results = capture(fused_step, groupnorm_silu)
    report = {
        "triton": triton.__version__, "calls": len(results),
        "launches": sum(len(launches) for _, launches, _, _ in results),
        "call_errors": [f"{_describe(c)}: {e}" for c, _, _, e in results if e],
        "host_syncs": {_describe(c): found for c, _, found, _ in results if found},
        "host_sync_self_check": {k: len(v) for k, v in sync_self_check().items()},
        "capture_seconds": round(time.perf_counter() - start, 1),
    }
    work, per_kernel = [], {}
    for arch in targets:
        found, grids = variants(results, arch)
        report[f"variants_sm{arch}"] = len(found)
        per_kernel[f"sm{arch}"] = {}
        for kernel, spec, origin in found.values():
            name = kernel.fn.__name__
            per_kernel[f"sm{arch}"][name] = per_kernel[f"sm{arch}"].get(name, 0) + 1
            work.append((arch, kernel, spec, origin))
    report["variants_by_kernel"] = per_kernel
    report["autotune_configs"] = {name: sorted({str(c) for _, launches, _, _ in results for launch in launches
                                                for c in launch.configs if launch.kernel.fn.__name__ == name
                                                and c is not None})
                                  for name in sorted({launch.kernel.fn.__name__ for _, launches, _, _ in results
                                                      for launch in launches if launch.tune_key})}
    report["autotune_keys"] = len({launch.tune_key for _, launches, _, _ in results for launch in launches
                                   if launch.tune_key})
    report["grids_checked"] = len(grids)
    report["grid_violations"] = sorted({f"{_describe(c)}: {name} grid {g}" for c, name, g in grids
                                        if g[0] > GRID_X_LIMIT or max(g[1:]) > GRID_YZ_LIMIT})
    report["largest_grid"] = {axis: max(g[i] for _, _, g in grids) for i, axis in enumerate("xyz")}
    report["huge_calls"] = sorted({_describe(c) for c, _, _ in grids if "huge" in c.tags})
    if not opts.no_compile:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="aot_triton_cache_") as scratch:
            os.environ.setdefault("TRITON_CACHE_DIR", scratch)  # a fresh cache unless one is given: real compiles
            done = compile_all(work, opts.jobs)
        report.update(stage="cubin", compiled=sum(err is None for *_, err, _ in done),
                      compile_failures=[f"sm{a} {k.fn.__name__} (first from {o}):\n{e}" for a, k, o, e, _ in done if e],
                      compile_seconds=round(time.perf_counter() - t0, 1),
                      slowest_compile_seconds=round(max((s for *_, s in done), default=0.0), 1), jobs=opts.jobs)
    print(json.dumps(report, indent=1))
    ok = not report["call_errors"] and (opts.no_compile or not report["compile_failures"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
