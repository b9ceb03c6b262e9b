"""Run checkpoints: everything a distillation run needs to continue exactly where it stopped.

One file, ``state.safetensors``, written atomically: the synthetic parameters, the optimisers'
momentum buffers, the algorithm's state (MTT's step size) and, as JSON metadata, the config, the
history, the number of completed iterations and fingerprints of the model, the data and the expert
buffer the run worked on. Because every random draw of an iteration is derived from (seed,
iteration), these are all a resumed run needs to finish bit-identically; the fingerprints make a
resume with another model or other data a clear error instead of a silent mix.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from ..atomic import write_atomic
from ..errors import DamagedFileError, IncompatibleRunError, InvalidArgumentError

FILENAME = "state.safetensors"
_FORMAT = "ld3m_fast.checkpoint/2"
_OLDER = ("ld3m_fast.checkpoint/1",)  # readable; they hold no fingerprints
# knobs that may differ between a run and its resumption: how long, how often, and how it is computed
RESUMABLE_CHANGES = ("iterations", "checkpoint_every", "eval_every", "eval_archs", "eval_repeats", "eval_epochs",
                     "memory_budget", "chunk_size", "backend")
FORCE_HINT = ("use another checkpoint_dir, resume=False to start over there, or resume='force' (CLI: --force-resume) "
              "to continue it anyway")


class Checkpoint(NamedTuple):
    completed: int                 # iterations done
    tensors: dict                  # synthetic set, optimiser and algorithm state
    config: dict                   # the resolved settings (JSON form)
    history: list
    fingerprints: dict             # what the run worked on: model, data, experts (see ld3m_fast.fingerprint)


def remove_stale_temporaries(directory) -> None:
    """Delete half-written checkpoints a killed writer left behind (``.state.*.tmp.safetensors``)."""
    for tmp in Path(directory).glob(f".{Path(FILENAME).stem}.*.tmp{Path(FILENAME).suffix}"):
        tmp.unlink(missing_ok=True)


def save_checkpoint(directory, completed: int, tensors: dict[str, torch.Tensor], config: dict, history: list,
                    fingerprints: dict) -> Path:
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"format": _FORMAT, "completed": str(completed), "config": json.dumps(config), "history": json.dumps(history),
            "fingerprints": json.dumps(fingerprints)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    out = write_atomic(d / FILENAME, lambda p: save_file(tensors, p, metadata=meta))
    remove_stale_temporaries(d)
    return out


def load_checkpoint(directory) -> Checkpoint | None:
    """The checkpoint in ``directory``, or ``None`` if it has none; a damaged one is an error naming the file."""
    from safetensors import safe_open

    remove_stale_temporaries(directory)
    path = Path(directory) / FILENAME
    if not path.exists():
        return None
    fix = f"delete {str(path)!r} to start over (or restore it from a backup)"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise DamagedFileError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); {fix}") from None
    if meta.get("format") not in (_FORMAT, *_OLDER):
        raise DamagedFileError(f"{str(path)!r} is not an ld3m_fast checkpoint (format {meta.get('format')!r}); {fix}")
    try:
        completed = int(meta["completed"])
        config, history = json.loads(meta["config"]), json.loads(meta["history"])
        fingerprints = json.loads(meta.get("fingerprints", "{}"))
        if completed < 0 or not isinstance(config, dict) or not isinstance(history, list) \
                or not isinstance(fingerprints, dict):
            raise InvalidArgumentError("fields of the wrong kind")
    except (KeyError, ValueError, TypeError) as exc:
        raise DamagedFileError(f"checkpoint {str(path)!r} has damaged metadata ({exc}); {fix}") from None
    return Checkpoint(completed, tensors, config, history, fingerprints)


def check_same_run(saved: Checkpoint, config: dict, fingerprints: dict, directory, force: bool = False) -> None:
    """Refuse to resume a checkpoint of other settings (other than ``RESUMABLE_CHANGES``) or of another model, data
    or expert buffer (by fingerprint) — unless ``force``, which still refuses other settings.

    Both configs are in their JSON form (lists, not tuples)."""
    diff = {k: (saved.config.get(k), v) for k, v in config.items()
            if k not in RESUMABLE_CHANGES and saved.config.get(k) != v}
    if diff:
        text = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise IncompatibleRunError(f"checkpoint_dir={str(directory)!r} holds a run with other settings ({text}); use "
                                   "another checkpoint_dir, or resume=False to start over there")
    if force:
        return
    changed = [k for k, v in fingerprints.items() if k in saved.fingerprints and saved.fingerprints[k] != v]
    if changed:
        what = {"model": "the model's weights", "data": "the training data", "experts": "the expert buffer"}
        raise IncompatibleRunError(f"checkpoint_dir={str(directory)!r} holds a run made with other "
                                   f"{' and '.join(what.get(k, k) for k in changed)} than this one; {FORCE_HINT}")


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """The SGD momentum buffers of ``optimizer``'s parameters, named ``<prefix><i>``."""
    out = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[f"{prefix}{i}"] = buf
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Set the SGD momentum buffers from ``optimizer_state``'s tensors; a parameter without one gets none (as before
    its first step). A buffer of the wrong shape is a damaged checkpoint."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        buf = tensors.get(f"{prefix}{i}")
        if buf is None:
            optimizer.state.pop(p, None)
        elif buf.shape != p.shape or not buf.is_floating_point():
            raise DamagedFileError(f"a checkpoint's momentum buffer {prefix}{i} is {tuple(buf.shape)} {buf.dtype} but "
                                   f"its parameter is {tuple(p.shape)}: the checkpoint is damaged; delete it to start over")
        else:
            optimizer.state[p] = {"momentum_buffer": buf.to(p.device, p.dtype).clone()}
