"""Run checkpoints: everything a distillation run needs to continue exactly where it stopped.

One file, ``state.safetensors``, written atomically: the synthetic parameters, the optimisers'
momentum buffers, the algorithm's state (MTT's step size) and, as JSON metadata, the config, the
history and the number of completed iterations. Because every random draw of an iteration is
derived from (seed, iteration), these are all a resumed run needs to finish bit-identically.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..atomic import write_atomic

FILENAME = "state.safetensors"
_FORMAT = "ld3m_fast.checkpoint/1"
# knobs that may differ between a run and its resumption: how long, how often, and how it is computed
RESUMABLE_CHANGES = ("iterations", "checkpoint_every", "eval_every", "eval_archs", "eval_repeats", "eval_epochs",
                     "memory_budget", "chunk_size", "backend")


def save_checkpoint(directory, completed: int, tensors: dict[str, torch.Tensor], config: dict, history: list) -> Path:
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"format": _FORMAT, "completed": str(completed), "config": json.dumps(config), "history": json.dumps(history)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return write_atomic(d / FILENAME, lambda p: save_file(tensors, p, metadata=meta))


def load_checkpoint(directory):
    """``(completed, tensors, config, history)`` from ``directory``, or ``None`` if it has no checkpoint."""
    from safetensors import safe_open

    path = Path(directory) / FILENAME
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({exc}); delete it to start over") from exc
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{str(path)!r} is not an ld3m_fast checkpoint")
    return int(meta["completed"]), tensors, json.loads(meta["config"]), json.loads(meta["history"])


def check_same_run(saved: dict, current: dict, directory) -> None:
    """Refuse to resume a checkpoint made with different settings (other than ``RESUMABLE_CHANGES``).

    Both configs are in their JSON form (lists, not tuples)."""
    diff = {k: (saved.get(k), v) for k, v in current.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v}
    if diff:
        text = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"checkpoint_dir={str(directory)!r} holds a run with other settings ({text}); use another "
                         "checkpoint_dir, or resume=False to start over there")


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
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        if f"{prefix}{i}" in tensors:
            optimizer.state[p] = {"momentum_buffer": tensors[f"{prefix}{i}"].to(p.device, p.dtype).clone()}
