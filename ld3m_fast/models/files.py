"""Reading weight files safely: PyTorch checkpoints with ``weights_only=True``, safetensors files.

No code from a file ever runs. PyTorch Lightning checkpoints may pickle objects beside the weights
(callbacks, hyper-parameter dicts): ``weights_only=True`` refuses them, so they are loaded as inert
placeholders (their names are reported in one warning line) and only the tensors are used. A
missing, truncated or corrupt file gives an error naming the file.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
import zipfile

import torch

from ..errors import DamagedFileError, InvalidArgumentError, MissingFileError

_ZIP_MAGIC = b"PK\x03\x04"


class _Opaque:
    """Stand-in for a pickled object of a class we will not import; it keeps what it was given and does nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        self._state = state

    def __setitem__(self, key, value):  # dict-like pickles (e.g. Lightning's AttributeDict)
        self.__dict__.setdefault("_items", {})[key] = value


def _short(err: Exception) -> str:
    """The informative part of a (often very long) torch/safetensors error message."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = " ".join(text.split()).split(" Check the documentation")[0]
    return text.split(". ")[0].rstrip(".")[:200]


def _corrupt(path: str, err: Exception) -> DamagedFileError:
    return DamagedFileError(f"cannot read {path!r}: the file is truncated or corrupt ({type(err).__name__}: {_short(err)}). "
                      "Download or save it again")


def is_safetensors(path: str) -> bool:
    """Whether ``path`` starts like a safetensors file (8-byte header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n < os.path.getsize(path)


def read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file (CPU tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # SafetensorError, OSError, JSON errors
        raise _corrupt(path, err) from None
    return tensors, metadata


def _torch_load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err) and "Unsupported global" not in str(err):
            raise _corrupt(path, err) from None
        return _load_with_placeholders(path, err)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, struct.error) as err:
        raise _corrupt(path, err) from None


def _load_with_placeholders(path: str, first_error: Exception):
    """Retry with every non-tensor global the file names replaced by an inert ``_Opaque`` subclass."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = []
    if not names:  # nothing to stand in for: the pickle itself is damaged (or not a checkpoint at all)
        raise _corrupt(path, first_error) from None
    stubs = [(type(name.rsplit(".", 1)[-1], (_Opaque,), {"__module__": __name__}), name) for name in names]
    try:
        with torch.serialization.safe_globals(stubs):
            out = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DamagedFileError(
            f"cannot load {path!r} with weights_only=True: it pickles objects of {names} that cannot be "
            f"read as inert data ({_short(err)}). Re-save its state_dict in a trusted environment: "
            "torch.save({'state_dict': ckpt['state_dict']}, 'weights.ckpt')") from None
    warnings.warn(f"ld3m_fast: {os.path.basename(path)} also pickles {', '.join(names)}; loaded as inert "
                  "placeholders (no code ran) and ignored", RuntimeWarning, stacklevel=4)
    return out


def read_checkpoint(path) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` state dict of a PyTorch/Lightning checkpoint or a safetensors file.

    A Lightning checkpoint's ``state_dict`` entry is taken; a plain state dict is taken as is.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise InvalidArgumentError(f"checkpoint {path!r} is a folder; pass the checkpoint file (e.g. model.ckpt)")
    if os.path.getsize(path) == 0:
        raise InvalidArgumentError(f"cannot read {path!r}: the file is empty")
    if is_safetensors(path):
        return read_safetensors(path)[0]
    obj = _torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise InvalidArgumentError(f"{path!r} holds a {type(obj).__name__}, not a state dict of named tensors "
                                   "(nor a Lightning checkpoint with a 'state_dict')")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InvalidArgumentError(f"{path!r} holds no tensors (top-level keys: {sorted(obj)[:10]})")
    return tensors


def write_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict) -> None:
    """Save contiguous CPU copies of ``tensors`` with string ``metadata`` (values JSON-encoded if not strings)."""
    from safetensors.torch import save_file

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, os.fspath(path), metadata=meta)
