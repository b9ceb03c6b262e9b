"""A machine-readable log of a run, always; TensorBoard and wandb when asked for.

``RunLog(folder)`` appends one JSON line to ``folder/log.jsonl`` and one row to ``folder/log.csv`` per
``log(step, **scalars)`` call, flushed at once, so a killed run keeps every row it logged. The CSV's
header comes from the first row; a later row with new keys rewrites the file with the wider header
(older rows get empty cells). ``resume_from=k`` keeps the rows of steps < k, so a resumed run that
logs steps k, k+1, … again leaves no duplicates. A new run (``resume_from=None``) starts the files
afresh. Non-finite values are written as ``null`` in JSON (which has no NaN) and as ``nan``/``inf`` in
the CSV.

Backends ``"tensorboard"`` (``torch.utils.tensorboard``, needs the ``tensorboard`` package; events in
``folder/tensorboard``) and ``"wandb"`` (offline unless ``WANDB_MODE`` says otherwise; files in
``folder/wandb``) are imported only when asked for; a missing package is a ``MissingDependencyError``.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from .atomic import write_atomic
from .errors import DamagedFileError, InvalidArgumentError, InvalidTypeError, MissingDependencyError

BACKENDS = ("jsonl", "csv", "tensorboard", "wandb")  # jsonl and csv are always written


class RunLog:
    """Scalars per step of a run: ``log.jsonl`` + ``log.csv`` in ``folder``, plus optional TensorBoard/wandb.

    backends: any of ``BACKENDS``; config: a JSON-able dict given to wandb (its run config) and TensorBoard (as
    text); resume_from: the first step the resumed run will log (rows at steps >= it are dropped).
    """

    def __init__(self, folder, backends=("jsonl",), config: dict | None = None, resume_from: int | None = None):
        if isinstance(backends, str):
            backends = (backends,)
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise InvalidArgumentError(f"backends {unknown} are unknown; use any of {BACKENDS}")
        if resume_from is not None and (isinstance(resume_from, bool) or not isinstance(resume_from, int)
                                        or resume_from < 0):
            raise InvalidArgumentError(f"resume_from must be None or a step >= 0, got {resume_from!r}")
        writer_class = _tensorboard() if "tensorboard" in backends else None  # fail before any file is touched
        wandb = _wandb() if "wandb" in backends else None
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jsonl_path, self.csv_path = self.folder / "log.jsonl", self.folder / "log.csv"
        self.rows = _read_rows(self.jsonl_path) if resume_from is not None else []
        self.rows = [r for r in self.rows if r["step"] < (resume_from or 0)]
        self.columns = _columns(self.rows)
        self._rewrite()
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self._csv = open(self.csv_path, "a", encoding="utf-8", newline="")
        self._tb = self._wandb_run = None
        if writer_class is not None:
            self._tb = writer_class(log_dir=str(self.folder / "tensorboard"), purge_step=resume_from)
            if config:
                self._tb.add_text("config", f"```\n{json.dumps(config, indent=1, default=str)}\n```", 0)
        if wandb is not None:
            self._wandb_run = _start_wandb(wandb, self.folder, config, resume_from is not None)

    # --- writing -------------------------------------------------------------------------------
    def log(self, step: int, **scalars) -> None:
        """Record ``scalars`` (numbers, or 1-element tensors) at ``step`` in every backend."""
        if self._jsonl is None:
            raise InvalidArgumentError(f"RunLog({str(self.folder)!r}) is closed")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InvalidArgumentError(f"step must be an int >= 0, got {step!r}")
        row = {"step": step, **{k: _scalar(k, v) for k, v in scalars.items()}}
        self.rows.append(row)
        self._jsonl.write(json.dumps(_json_safe(row)) + "\n")
        self._jsonl.flush()
        if any(k not in self.columns for k in row):
            self.columns = _columns(self.rows)
            self._csv.close()
            self._rewrite(jsonl=False)  # the wider header, every row again
            self._csv = open(self.csv_path, "a", encoding="utf-8", newline="")
        else:
            csv.writer(self._csv).writerow(_csv_cells(row, self.columns))
            self._csv.flush()
        if self._tb is not None:
            for key in scalars:
                self._tb.add_scalar(key, row[key], step)
            self._tb.flush()
        if self._wandb_run is not None:
            self._wandb_run.log({k: row[k] for k in scalars}, step=step)

    def _rewrite(self, jsonl: bool = True) -> None:
        """Write the kept rows afresh (atomically): on start, on resume, and when the CSV header widens."""
        if jsonl:
            text = "".join(json.dumps(_json_safe(r)) + "\n" for r in self.rows)
            write_atomic(self.jsonl_path, lambda p: Path(p).write_text(text, encoding="utf-8"))

        def write_csv(p):
            with open(p, "w", encoding="utf-8", newline="") as f:
                out = csv.writer(f)
                if self.columns:
                    out.writerow(self.columns)
                out.writerows(_csv_cells(r, self.columns) for r in self.rows)

        write_atomic(self.csv_path, write_csv)

    def close(self) -> None:
        """Close the files and the backends (idempotent)."""
        for handle in (self._jsonl, self._csv):
            if handle is not None:
                handle.close()
        self._jsonl = self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- rows --------------------------------------------------------------------------------------

def _scalar(key: str, value):
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        try:
            value = value.item()  # a 1-element tensor or array, a numpy scalar
        except (ValueError, RuntimeError):
            raise InvalidTypeError(f"log(): {key} holds several values; log one number per key") from None
    if isinstance(value, int):  # bool included
        return int(value)
    if isinstance(value, float):
        return value
    raise InvalidTypeError(f"log(): {key}={value!r} is not a number; log scalars (int, float, 1-element tensor)")


def _json_safe(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r)) if rows else []


def _csv_cells(row: dict, columns: list[str]) -> list:
    return [row.get(c, "") for c in columns]


def _read_rows(path: Path) -> list[dict]:
    """The rows of an existing ``log.jsonl`` (a last line cut short by a kill is dropped)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a row with an integer 'step'")
        except ValueError as err:
            if number == len(lines):
                break  # the run was killed while writing this line
            raise DamagedFileError(f"{str(path)!r} line {number} is not a log row ({err}); delete the file or start "
                                   "a new run folder") from None
        rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
    return rows


# --- optional backends -------------------------------------------------------------------------

def _tensorboard():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise MissingDependencyError("the 'tensorboard' log backend needs the tensorboard package: pip install "
                                     f"tensorboard (or leave 'tensorboard' out of the backends / --log); {_cause(err)}") \
            from None
    return SummaryWriter


def _wandb():
    try:
        import wandb
    except ImportError as err:
        raise MissingDependencyError("the 'wandb' log backend needs the wandb package: pip install wandb (or leave "
                                     f"'wandb' out of the backends / --log); {_cause(err)}") from None
    return wandb


def _cause(err: ImportError) -> str:
    """What failed to import: the package itself, or one of its own dependencies (a broken install)."""
    return f"importing it failed with: {err}"


def _start_wandb(wandb, folder: Path, config: dict | None, resume: bool):
    """One wandb run per run folder: its id is kept in ``folder/wandb_id.txt`` so that a resumed run continues it.
    Offline unless the user set ``WANDB_MODE``; wandb keeps the steps it already has (it cannot drop them)."""
    id_file = folder / "wandb_id.txt"
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else wandb.util.generate_id()
    write_atomic(id_file, lambda p: Path(p).write_text(run_id))
    (folder / "wandb").mkdir(exist_ok=True)
    return wandb.init(dir=str(folder / "wandb"), id=run_id, resume="allow", config=config or {},
                      mode=os.environ.get("WANDB_MODE") or "offline", project=os.environ.get("WANDB_PROJECT") or
                      "ld3m_fast", name=folder.resolve().name)


__all__ = ["BACKENDS", "RunLog"]
