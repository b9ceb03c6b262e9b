"""The GPU check: one command that installs, builds, tests and measures ld3m_fast on a fresh GPU machine.

    bash bench/gpu_run.sh                      # from the repository root; JSON and logs in $OUT (or --out DIR)
    bash bench/gpu_run.sh --dry-run            # the same steps on the CPU, tiny, CUDA-only parts skipped
                                               # (also LD3M_FAST_DRY_RUN=1)

Written for a machine with one GPU, the CUDA toolkit (nvcc), torch, Triton, pytest and setuptools but no
package index: the packages the machine lacks (diffusers and what it needs) travel as wheels in ``.whl/``.
This script imports only the standard library; every step runs in a child process, each capped in time so
that the whole run ends within ``--budget`` seconds (default 480):

1. ``wheels``: ``pip install --no-index --no-deps --target SITE .whl/*.whl``, SITE then first on PYTHONPATH
   (skipped, saying so, when ``.whl/`` holds no wheels).
2. ``install``: ``pip install --no-build-isolation --no-deps --no-index -e .`` without compiling (it registers
   ``ld3m_fast`` and ``ld3m_fast.kernels``); skipped when they already import.
3. ``build``: ``python setup.py build_ext --inplace`` with ``TORCH_CUDA_ARCH_LIST=9.0``: ``ld3m_fast/_C`` with its
   CUDA kernels (``ptxas -v`` resource lines in build.log). Skipped in a dry run (no nvcc, no GPU).
4. ``backends``: versions, the GPU, ``ld3m_fast.engine.backend_status()``; fails unless CUDA works, the ``cuda``
   and ``triton`` backends are available and diffusers imports (printing the status and the build's reason).
5. ``tests``: pytest on the CUDA and Triton tests (a small selection in a dry run).
6. ``paper_scale``: ``bench/paper_scale.py --reduced`` with what is left of the budget as ``--max-seconds``.
7. ``official_loop``: ``bench/official_loop.py`` when it exists.

A failure in steps 1–4 stops the run at once (exit status 2), a failed test or benchmark after the others
have run (exit status 1). ``--skip STEP ...`` leaves steps out (e.g. ``--skip build tests`` to rerun only the
sweep on a machine that is still warm; the backends check always runs).

At most 8 files land in the output folder: gpu_run.json (every step's status, time, command and reason; the
versions; the targets from paper_scale.json), gpu_run.log, build.log, pytest.log, paper_scale.json,
paper_scale.log, official_loop.json, official_loop.log.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import importlib.machinery
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DRY_ENV = "LD3M_FAST_DRY_RUN"
# the tests with CUDA or Triton code paths (the files that exist are run)
GPU_TESTS = ("tests/engine/test_fused_step.py", "tests/kernels", "tests/csrc", "tests/models/test_speedups.py",
             "tests/test_augment.py::test_same_seed_same_result_on_cpu_and_cuda")
DRY_TESTS = ("tests/engine/test_fused_step.py::test_backend_raw_contract_pair_layout",)
STEPS = ("wheels", "install", "build", "backends", "tests", "paper_scale", "official_loop")
# (at most these seconds, seconds kept back for the steps after it) of each step; what a step leaves unused
# goes to the sweep, which gets everything left but OFFICIAL_LOOP_RESERVE
CAPS = {"wheels": (60, 400), "install": (90, 380), "build": (240, 240), "backends": (60, 220), "tests": (150, 180)}
OFFICIAL_LOOP_RESERVE = 75  # seconds kept for bench/official_loop.py after the sweep, when it exists
DRY_PAPER_SECONDS = 10  # paper_scale's --max-seconds in a dry run: its first case or two, the rest skipped

BACKENDS_PROBE = r"""
import importlib, json, os, subprocess, sys
info = {"python": sys.version.split()[0], "executable": sys.executable}
import torch
info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                multiprocessors=p.multi_processor_count, memory_GiB=round(p.total_memory / 2**30, 1),
                gpus=torch.cuda.device_count())
import importlib.metadata as md
for name, dist in (("triton", "triton"), ("diffusers", "diffusers"), ("huggingface_hub", "huggingface-hub"),
                   ("safetensors", "safetensors"), ("numpy", "numpy"), ("PIL", "pillow"), ("regex", "regex"),
                   ("requests", "requests"), ("filelock", "filelock"), ("importlib_metadata", "importlib-metadata"),
                   ("zipp", "zipp"), ("lazy_importer", "lazy-importer"), ("pytest", "pytest"),
                   ("pytest_benchmark", "pytest-benchmark"), ("setuptools", "setuptools"), ("ninja", "ninja")):
    try:
        module = importlib.import_module(name)
        try:
            version = md.version(dist)
        except Exception:
            version = getattr(module, "__version__", "?")
        info[name] = version + " (" + os.path.dirname(module.__file__) + ")"
    except Exception as exc:
        info[name] = "MISSING: " + type(exc).__name__ + ": " + str(exc)[:200]
try:
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30)
    info["nvcc"] = nvcc.stdout.strip().splitlines()[-1]
except Exception as exc:
    info["nvcc"] = "MISSING: " + type(exc).__name__
from ld3m_fast.engine import extension
from ld3m_fast.engine.fused_step import backend_status
info["backend_status"] = backend_status()
ext = extension.load()
info["extension"] = None if ext is None else {"file": ext.__file__, "has_cuda": bool(ext.has_cuda())}
info["build_failure"] = extension._build_failure()
need = json.loads(sys.argv[1])
missing = [f"backend {b!r}: {info['backend_status'].get(b, 'unknown backend')}" for b in need["backends"]
           if info["backend_status"].get(b, "unknown") is not None]
if need["cuda"] and not info["cuda_available"]:
    missing.insert(0, "torch sees no CUDA GPU")
if need["diffusers"] and str(info["diffusers"]).startswith("MISSING"):
    missing.append("diffusers: " + info["diffusers"] + " (carry its wheels in .whl/)")
info["missing"] = missing
print("BACKENDS " + json.dumps(info))
sys.exit(1 if missing else 0)
"""


class Run:
    """The steps' bookkeeping: time budget, logs, the JSON summary."""

    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.t0 = time.monotonic()
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "gpu_run.log"
        self.log_path.write_text("")
        self.summary = {"dry_run": self.dry, "budget_s": args.budget, "repo": str(REPO),
                        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "commit": _git("rev-parse", "HEAD"), "uncommitted_changes": bool(_git("status", "--porcelain",
                                                                                             "--untracked-files=no")),
                        "steps": [], "environment": None, "targets": None}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        self.env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        if self.dry:  # Triton in its interpreter; one thread: tiny tensors run fastest so, also on a busy machine
            self.env["TRITON_INTERPRET"] = "1"
            self.env.setdefault("OMP_NUM_THREADS", "1")
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.t0)

    def cap(self, want: float, reserve: float) -> int:
        """``want`` seconds, or less so that ``reserve`` seconds stay for later steps; at least 10."""
        return int(max(10, min(want, self.left() - reserve)))

    def log(self, msg: str) -> None:
        line = f"[{datetime.datetime.now():%H:%M:%S} +{time.monotonic() - self.t0:5.0f}s] {msg}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def record(self, name: str, status: str, seconds: float = 0.0, **extra) -> dict:
        step = {"name": name, "status": status, "seconds": round(seconds, 1), **extra}
        self.summary["steps"].append(step)
        why = f": {extra['reason']}" if extra.get("reason") else ""
        self.log(f"step {name}: {status.upper()} ({seconds:.0f} s){why}")
        self.write()
        return step

    def write(self) -> None:
        self.summary["seconds_total"] = round(time.monotonic() - self.t0, 1)
        self.summary["files"] = sorted(p.name for p in self.out.iterdir() if p.is_file() and p.name != "gpu_run.json")
        tmp = self.out / "gpu_run.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=1))
        tmp.replace(self.out / "gpu_run.json")

    def run(self, name: str, cmd: list[str], log: str | None, timeout: int, env: dict | None = None, append=False):
        """Run ``cmd`` in the repository, its output to ``log`` in the output folder (``None``: returned instead).

        Returns (status, return code, seconds, captured output or ``None``)."""
        env_extra = env or {}
        shown = shlex.join(a if len(a) < 200 else a[:60].strip() + " ..." for a in cmd)
        self.log(f"step {name}: {' '.join(f'{k}={v}' for k, v in env_extra.items())} {shown} "
                 f"(timeout {timeout} s{f', log {log}' if log else ''})")
        start = time.monotonic()
        with (open(self.out / log, "a" if append else "w") if log else tempfile.TemporaryFile("w+")) as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            try:
                proc = subprocess.run(cmd, cwd=REPO, env={**self.env, **env_extra}, stdout=f, stderr=subprocess.STDOUT,
                                      timeout=timeout)
                rc = proc.returncode
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
                f.write(f"\n*** killed after {timeout} s\n")
            text = None
            if log is None:
                f.seek(0)
                text = f.read()
        return status, rc, time.monotonic() - start, text

    def tail(self, log: str, lines: int = 25) -> str:
        try:
            return "\n".join((self.out / log).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def step_wheels(r: Run) -> bool:
    wheels = sorted(glob.glob(str(Path(r.args.wheels) / "*.whl")))
    if not wheels:
        r.record("wheels", "skipped", reason=f"no wheels in {r.args.wheels}: using the packages already installed "
                                             "(CI and dry runs; on the GPU machine diffusers must then be there)")
        return True
    site = Path(r.args.site)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site), *wheels]
    status, rc, sec, _ = r.run("wheels", cmd, "build.log", r.cap(*CAPS["wheels"]))
    r.env["PYTHONPATH"] = os.pathsep.join([str(site), r.env["PYTHONPATH"]])
    names = [Path(w).name for w in wheels]
    r.record("wheels", status, sec, rc=rc, wheels=names, site=str(site), command=shlex.join(cmd),
             reason=None if status == "ok" else f"pip could not install the wheels:\n{r.tail('build.log')}")
    return status == "ok"


KERNELS_LINK = REPO / "ld3m_fast" / "kernels"  # the install fallback: ld3m_fast.kernels straight from kernels/


def step_install(r: Run) -> bool:
    probe = [sys.executable, "-c", "import ld3m_fast, ld3m_fast.kernels"]  # neither imports torch: quick

    def imports() -> bool:
        return subprocess.run(probe, cwd=REPO, env=r.env, capture_output=True, timeout=300).returncode == 0
    start = time.monotonic()
    if imports():
        r.record("install", "skipped", time.monotonic() - start,
                 reason="ld3m_fast and ld3m_fast.kernels already import from this checkout")
        return True
    if r.dry:
        r.record("install", "failed", reason="dry run: ld3m_fast.kernels does not import and a dry run does not "
                                              "install: run `pip install --no-build-isolation -e .` first")
        return False
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "--no-cache-dir",
           "-e", "."]
    status, rc, sec, _ = r.run("install", cmd, "build.log", r.cap(*CAPS["install"]),
                               env={"LD3M_FAST_NO_EXTENSION": "1"}, append=True)
    note = None
    if (status != "ok" or not imports()) and not KERNELS_LINK.exists():
        # e.g. a read-only environment: the package runs from the checkout, kernels/ linked where setup.py maps it
        KERNELS_LINK.symlink_to(Path("..") / "kernels", target_is_directory=True)
        r.summary["kernels_link"] = str(KERNELS_LINK)
        note = f"editable install {status}; fell back to running from the checkout with {KERNELS_LINK} -> ../kernels"
        status = "ok" if imports() else "failed"
    r.record("install", status, sec, rc=rc, command=shlex.join(cmd), note=note,
             reason=None if status == "ok" else f"ld3m_fast.kernels does not import after the install:\n"
                                                f"{r.tail('build.log')}")
    return status == "ok"


def cuda_home() -> str | None:
    """The CUDA toolkit to build with: $CUDA_HOME, else the folder above the real ``nvcc`` (links resolved), else
    /usr/local/cuda*: the first that holds bin/nvcc and include/cuda_runtime.h (torch's own guess, the folder
    above the first ``nvcc`` on PATH, can be a wrapper script's folder without the headers)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parents[1])
    candidates += [Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"), reverse=True)]
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    return None


def step_build(r: Run) -> bool:
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
    env = {"TORCH_CUDA_ARCH_LIST": r.args.arch, "MAX_JOBS": str(os.cpu_count() or 4), "NVCC_APPEND_FLAGS": "-Xptxas=-v"}
    if r.dry:
        r.record("build", "skipped", command=shlex.join(cmd), env=env,
                 reason="dry run: no CUDA build on the CPU; the installed ld3m_fast._C is used")
        return True
    home = cuda_home()
    if home is None:
        r.record("build", "failed", command=shlex.join(cmd), env=env,
                 reason="no CUDA toolkit: no nvcc with include/cuda_runtime.h beside it; set CUDA_HOME")
        return False
    env["CUDA_HOME"] = home
    target = REPO / "ld3m_fast" / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])  # this Python's extension
    for stale in (target, REPO / "ld3m_fast" / "_build_failed.txt"):
        stale.unlink(missing_ok=True)  # an older build, or an old failure record, must not count
    status, rc, sec, _ = r.run("build", cmd, "build.log", r.cap(*CAPS["build"]), env=env, append=True)
    built = [target.name] if target.exists() else []
    failure = REPO / "ld3m_fast" / "_build_failed.txt"
    reason = None
    if status != "ok" or not built or failure.exists():
        status = "failed"
        reason = (f"no ld3m_fast/{target.name} after the build" if not built else "setup.py recorded a failure") + (
            f": {failure.read_text().strip()}" if failure.exists() else "") + f"\n{r.tail('build.log', 40)}"
    ptxas = [line.strip() for line in (r.out / "build.log").read_text(errors="replace").splitlines()
             if "registers" in line or "spill" in line][:40]
    r.record("build", status, sec, rc=rc, command=shlex.join(cmd), env=env, built=built, ptxas=ptxas, reason=reason)
    return status == "ok"


def step_backends(r: Run) -> bool:
    need = ({"backends": [], "cuda": False, "diffusers": False} if r.dry
            else {"backends": ["cuda", "triton"], "cuda": True, "diffusers": True})
    if r.args.require is not None:
        need["backends"] = r.args.require
    cmd = [sys.executable, "-c", BACKENDS_PROBE, json.dumps(need)]
    status, rc, sec, text = r.run("backends", cmd, None, r.cap(*CAPS["backends"]))
    with open(r.log_path, "a") as f:
        f.write(text)
    info = next((json.loads(line[len("BACKENDS "):]) for line in text.splitlines() if line.startswith("BACKENDS ")),
                None)
    r.summary["environment"] = info
    if info is None:
        reason = f"the probe did not run:\n{text[-3000:]}"
    elif info["missing"]:
        reason = ("missing: " + "; ".join(info["missing"]) + "\nbackend_status() = "
                  + json.dumps(info["backend_status"], indent=1) + (f"\nbuild failure: {info['build_failure']}"
                                                                    if info.get("build_failure") else ""))
    else:
        reason = None
    r.record("backends", status, sec, rc=rc, required=need, reason=reason)
    if info is not None:
        r.log("backend_status(): " + json.dumps(info["backend_status"]))
    return status == "ok"


def step_tests(r: Run) -> bool:
    paths = [p for p in (DRY_TESTS if r.dry else GPU_TESTS) if (REPO / p.split("::")[0]).exists()]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *paths]
    if r.args.pytest_k:
        cmd += ["-k", r.args.pytest_k]
    status, rc, sec, _ = r.run("tests", cmd, "pytest.log", r.cap(*CAPS["tests"]))
    summary = r.tail("pytest.log", 1)
    r.record("tests", status, sec, rc=rc, command=shlex.join(cmd), result=summary,
             reason=None if status == "ok" else f"pytest: {summary}")
    return status == "ok"


def step_paper_scale(r: Run, official_loop_follows: bool) -> bool:
    if r.dry:  # the code paths, not the numbers: a short sweep that also exercises the time guard's skips
        max_seconds, timeout = DRY_PAPER_SECONDS, r.cap(DRY_PAPER_SECONDS + 150, 0)
    else:
        timeout = r.cap(r.left(), (OFFICIAL_LOOP_RESERVE if official_loop_follows else 0) + 5)
        max_seconds = max(5, timeout - 30)  # for imports, the model's set-up and the last JSON beyond its own budget
    json_path = r.out / "paper_scale.json"
    cmd = [sys.executable, "bench/paper_scale.py", "--reduced", "--out", str(json_path),
           "--max-seconds", str(max_seconds)] + (["--dry-run"] if r.dry else [])
    status, rc, sec, _ = r.run("paper_scale", cmd, "paper_scale.log", timeout)
    report = _read_json(json_path)
    if report is not None:
        r.summary["targets"] = report.get("targets")
        counts = {}
        for row in report.get("results", []):
            counts[row.get("status", "?")] = counts.get(row.get("status", "?"), 0) + 1
    else:
        counts = None
    r.record("paper_scale", status, sec, rc=rc, command=shlex.join(cmd), cases=counts,
             reason=None if status == "ok" else f"paper_scale.py ended with {status}:\n{r.tail('paper_scale.log')}")
    return status == "ok"


def step_official_loop(r: Run) -> bool:
    script = REPO / "bench" / "official_loop.py"
    if not script.exists():
        r.record("official_loop", "skipped", reason="bench/official_loop.py does not exist in this checkout")
        return True
    source = script.read_text()  # which of the flags below it takes (quicker than running --help)
    timeout = r.cap(max(r.left() - 5, 10), 0)
    cmd = [sys.executable, "bench/official_loop.py"]
    if "--out" in source:
        cmd += ["--out", str(r.out / "official_loop.json")]
    if "--device" in source:
        cmd += ["--device", "cpu" if r.dry else "cuda"]
    if r.dry and "--dry-run" in source:
        cmd += ["--dry-run"]
    if "--max-seconds" in source:
        cmd += ["--max-seconds", str(max(5, timeout - 20))]
    if "official_loop" in r.args.skip:
        r.record("official_loop", "skipped", command=shlex.join(cmd), reason="--skip official_loop")
        return True
    status, rc, sec, _ = r.run("official_loop", cmd, "official_loop.log", timeout)
    r.record("official_loop", status, sec, rc=rc, command=shlex.join(cmd),
             reason=None if status == "ok" else f"official_loop.py ended with {status}:\n{r.tail('official_loop.log')}")
    return status == "ok"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def final_table(r: Run) -> str:
    lines = ["", "== ld3m_fast GPU check" + (" (DRY RUN on the CPU)" if r.dry else ""),
             f"{'step':<14}{'status':<10}{'seconds':>8}"]
    lines += [f"{s['name']:<14}{s['status']:<10}{s['seconds']:>8.0f}" for s in r.summary["steps"]]
    env = r.summary.get("environment") or {}
    if env:
        lines.append(f"device: {env.get('gpu', 'cpu')}, torch {env.get('torch')}, CUDA {env.get('torch_cuda')}, "
                     f"triton {str(env.get('triton')).split(' ')[0]}, commit {(r.summary.get('commit') or '?')[:10]}")
    for name, t in (r.summary.get("targets") or {}).items():
        measured = t.get("measured")
        value = "—" if measured is None else f"{measured:.3g}"
        met = {True: "met", False: "MISSED", None: "not measured"}[t.get("met")]
        lines.append(f"target {name:<38} {t.get('target'):<8} measured {value:<8} {met}")
    lines.append(f"total {r.summary['seconds_total']:.0f} s; files in {r.out}: {', '.join(r.summary['files'])}")
    return "\n".join(lines)


def run_steps(r: Run) -> int:
    args = r.args
    r.log(f"ld3m_fast GPU check in {REPO}, output in {r.out}, budget {args.budget:.0f} s"
          + (", DRY RUN (CPU, tiny sizes, CUDA-only parts skipped)" if args.dry_run else ""))
    failed = False
    for name, step in (("wheels", step_wheels), ("install", step_install), ("build", step_build),
                       ("backends", step_backends)):
        if name in args.skip:
            r.record(name, "skipped", reason=f"--skip {name}")
            continue
        if not step(r):
            r.summary["exit_status"] = 2
            r.summary["stopped_at"] = name
            r.write()
            reason = r.summary["steps"][-1].get("reason") or ""
            print(final_table(r))
            print(f"\n*** GPU check STOPPED at step '{name}': {reason}", file=sys.stderr, flush=True)
            return 2
    if "tests" in args.skip:
        r.record("tests", "skipped", reason="--skip tests")
    else:
        failed |= not step_tests(r)
    official = (REPO / "bench" / "official_loop.py").exists() and "official_loop" not in args.skip
    if "paper_scale" in args.skip:
        r.record("paper_scale", "skipped", reason="--skip paper_scale")
    else:
        failed |= not step_paper_scale(r, official)
    failed |= not step_official_loop(r)
    r.summary["exit_status"] = 1 if failed else 0
    r.write()
    print(final_table(r))
    return r.summary["exit_status"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", default=os.environ.get(DRY_ENV, "") not in ("", "0"),
                   help=f"the same steps on the CPU with tiny sizes (also {DRY_ENV}=1)")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(tempfile.gettempdir(), "ld3m_gpu_run"),
                   help="folder for the JSON and logs (default $OUT, else /tmp/ld3m_gpu_run)")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole run (default 480)")
    p.add_argument("--wheels", default=str(REPO / ".whl"), help="folder of carried wheels (default .whl/)")
    p.add_argument("--site", default=None, help="where the wheels are installed (default /tmp/site; a temporary "
                                                "folder in a dry run)")
    p.add_argument("--arch", default="9.0", help="TORCH_CUDA_ARCH_LIST for the CUDA build (default 9.0: H100/H200)")
    p.add_argument("--require", nargs="*", default=None,
                   help="backends that must be available (default: cuda triton; none in a dry run)")
    p.add_argument("--pytest-k", default=None,
                   help="pytest -k expression for the tests step (default on the GPU: 'not aot': the ahead-of-time "
                        "compile tests need no GPU and run in CI)")
    p.add_argument("--skip", nargs="*", default=[], choices=[s for s in STEPS if s != "backends"],
                   help="steps to leave out, e.g. `--skip build tests` to rerun the sweep on a warm machine (the "
                        "backends check always runs)")
    args = p.parse_args(argv)
    if args.pytest_k is None and not args.dry_run:
        args.pytest_k = "not aot"
    scratch = None
    if args.site is None:
        if args.dry_run:
            scratch = tempfile.TemporaryDirectory(prefix="ld3m_gpu_run_site_")
            args.site = scratch.name
        else:
            args.site = "/tmp/site"
    r = Run(args)
    try:
        return run_steps(r)
    finally:
        if r.summary.get("kernels_link"):
            KERNELS_LINK.unlink(missing_ok=True)  # leave the checkout as it was
        if scratch is not None:
            scratch.cleanup()


if __name__ == "__main__":
    sys.exit(main())
