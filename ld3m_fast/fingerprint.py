"""Short fingerprints of what a run works on (settings, data, model weights, expert trajectories).

A run's checkpoint stores them, so that resuming it with another model, other data or another expert
buffer is refused instead of silently carrying on; the ranks of a sharded run compare them to
agree on settings and data. Large tensors are fingerprinted by a strided sample of their values
(plus name, shape and dtype): enough to tell apart two sets of weights or images, fast for a
400 M-parameter model.
"""
from __future__ import annotations

import hashlib
import json

import torch

_SAMPLE = 4096  # values per tensor that enter a fingerprint


def _sample(t: torch.Tensor) -> bytes:
    flat = t.detach().reshape(-1)
    if flat.numel() > _SAMPLE:
        flat = flat[:: -(-flat.numel() // _SAMPLE)]
    return flat.cpu().contiguous().view(torch.uint8).numpy().tobytes()


def fingerprint(*items) -> str:
    """A 16-hex-digit hash of JSON-able items and tensors (a tensor by its shape, dtype and a sample of its values)."""
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, torch.Tensor):
            h.update(repr((tuple(item.shape), str(item.dtype))).encode())
            h.update(_sample(item))
        else:
            h.update(json.dumps(item, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def model_fingerprint(model) -> str | None:
    """The fingerprint of a model's weights and buffers (``None`` for an object that is not an ``nn.Module``)."""
    module = getattr(model, "module", model)  # a LatentModel wraps its module
    if not isinstance(module, torch.nn.Module):
        return None
    state = module.state_dict()
    return fingerprint(*[x for name in sorted(state) for x in (name, state[name])])


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """The fingerprint of a labelled image set: every label, and every pixel of 64 images spread over the set."""
    h = hashlib.sha256(repr((tuple(images.shape), str(images.dtype))).encode())
    h.update(labels.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    picked = images[:: max(1, len(images) // 64)].detach().cpu().contiguous()
    h.update(picked.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
