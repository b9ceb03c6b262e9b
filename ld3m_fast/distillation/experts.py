"""Expert trajectories for MTT: networks trained on real data, their parameters saved after every epoch.

``train_experts`` trains ``num_experts`` networks (SGD, DSA, no momentum or weight decay by
default, as the MTT buffer code) and writes one safetensors file per expert: a tensor
``trajectory`` of shape (epochs + 1, P) — the flat parameters at initialisation and after each
epoch — and metadata saying which network, data and training produced it. Files are written
atomically and existing ones are kept, so an interrupted run continues where it stopped.
``ExpertBuffer`` reads such a folder, checks it fits the network and data of a run, and reads two
epochs of one expert without loading the rest.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import check_writable_folder, write_atomic
from ..devices import resolve_device
from ..errors import (
    DamagedFileError,
    IncompatibleRunError,
    InvalidArgumentError,
    MissingFileError,
)
from ..fingerprint import data_fingerprint, fingerprint
from ..seeding import derive_seed
from .real_data import as_real_data

_FORMAT = "ld3m_fast.experts/1"
# metadata a run must agree with to use a buffer (the network and the data it was trained on)
MATCH_KEYS = ("net", "width", "depth", "norm", "channels", "resolution", "num_classes")
# metadata every expert of one folder shares: how they were trained (a folder never mixes two trainings)
TRAINING_KEYS = MATCH_KEYS + ("epochs", "lr", "momentum", "weight_decay", "batch_size", "dsa", "seed", "data")
_INT_KEYS = ("width", "channels", "resolution", "num_classes", "epochs", "parameters")


class FlatParameters:
    """A network's parameters as one flat vector: flatten, unflatten, and a functional forward."""

    def __init__(self, net: torch.nn.Module):
        self.net = net
        self.names = [n for n, _ in net.named_parameters()]
        self.shapes = [p.shape for _, p in net.named_parameters()]
        self.numels = [p.numel() for _, p in net.named_parameters()]

    @property
    def size(self) -> int:
        return sum(self.numels)

    def flatten(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])

    def forward(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``net(x)`` with the parameters taken from ``flat`` (differentiable w.r.t. both)."""
        views = {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes)}
        return torch.func.functional_call(self.net, views, (x,))


def _save(tensors: dict, metadata: dict, path: Path) -> None:
    from safetensors.torch import save_file

    write_atomic(path, lambda p: save_file(tensors, p, metadata={k: str(v) for k, v in metadata.items()}))


def train_experts(train, out_dir, num_experts: int = 10, epochs: int = 15, *, net: str = "ConvNet",
                  width: int = 128, depth: int | None = None, norm: str = "instancenorm", lr: float = 0.01,
                  momentum: float = 0.0, weight_decay: float = 0.0, batch_size: int = 256, dsa: bool = True,
                  seed: int = 0, device=None, progress: bool = True) -> "ExpertBuffer":
    """Train ``num_experts`` networks on ``train`` for ``epochs`` epochs each, saving their trajectories in ``out_dir``.

    Each expert: SGD with a constant learning rate, DSA with its own parameters per image (as the MTT
    buffer code trains them), parameters recorded at initialisation and after every epoch.
    """
    from ..nets import get_network, network_depth
    from ..nets.training import train_network

    for name, v in (("num_experts", num_experts), ("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidArgumentError(f"{name}={v!r} must be a positive int")
    out = check_writable_folder(out_dir, "out_dir")
    real = as_real_data(train)
    device = resolve_device(device)
    depth = network_depth(net, real.resolution, depth)
    meta = dict(format=_FORMAT, net=net, width=width, depth=depth, norm=norm, channels=real.channels,
                resolution=real.resolution, num_classes=real.num_classes, dataset=real.name, epochs=epochs, lr=lr,
                momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, dsa=dsa, seed=seed,
                data=data_fingerprint(real.images, real.labels))
    bar = tqdm(total=num_experts, desc="experts", disable=not progress)
    for i in range(num_experts):
        path = out / f"expert_{i:04d}.safetensors"
        if path.exists():  # an interrupted run continues; a folder of another training is refused, never mixed
            ExpertBuffer._check_meta(path, ExpertBuffer._read_meta(path), {k: meta[k] for k in TRAINING_KEYS},
                                     training=True)
            bar.update()
            continue
        expert_seed = derive_seed(seed, "expert", i)
        model = get_network(net, real.channels, real.num_classes, real.resolution, width=width, depth=depth,
                            norm=norm, seed=expert_seed)
        flat = FlatParameters(model)
        snapshots = [flat.flatten().cpu()]
        train_network(model, real.images, real.labels, epochs=epochs, lr=lr, batch_size=batch_size,
                      momentum=momentum, weight_decay=weight_decay, schedule="constant", ema_decay=None, dsa=dsa,
                      normalize=(real.mean, real.std), device=device, seed=expert_seed,
                      on_epoch_end=lambda epoch, m: snapshots.append(flat.flatten().cpu()))
        _save({"trajectory": torch.stack(snapshots).contiguous()},
              dict(meta, parameters=flat.size, names=json.dumps(flat.names)), path)
        bar.update()
    bar.close()
    return ExpertBuffer(out)


class ExpertBuffer:
    """A folder of expert trajectories written by :func:`train_experts`."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise MissingFileError(f"expert buffer {str(self.path)!r} does not exist: create it with "
                                   "ld3m_fast.train_experts(...) or `ld3m-fast experts`")
        self.files = sorted(self.path.glob("expert_*.safetensors"))
        if not self.files:
            raise MissingFileError(f"expert buffer {str(self.path)!r} holds no expert_*.safetensors files")
        self.meta = self._read_meta(self.files[0])
        for f in self.files[1:]:
            self._check_meta(f, self._read_meta(f), {k: self.meta.get(k) for k in TRAINING_KEYS}, training=True)

    @staticmethod
    def _read_meta(path: Path) -> dict:
        """An expert file's metadata, checked: its format, its fields, and a trajectory of the shape they announce."""
        from safetensors import safe_open

        fix = "delete it and train it again (ld3m_fast.train_experts continues the folder)"
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                shape = tuple(f.get_slice("trajectory").get_shape()) if "trajectory" in f.keys() else None
        except Exception as exc:
            raise DamagedFileError(f"cannot read expert file {str(path)!r} ({type(exc).__name__}: {exc}); {fix}") \
                from None
        if meta.get("format") != _FORMAT:
            raise DamagedFileError(f"{str(path)!r} is not an ld3m_fast expert file; {fix}")
        try:
            for key in _INT_KEYS:
                meta[key] = int(meta[key])
            meta["depth"] = None if meta["depth"] == "None" else int(meta["depth"])
        except (KeyError, ValueError) as exc:
            raise DamagedFileError(f"expert file {str(path)!r} has damaged metadata ({exc!r}); {fix}") from None
        if shape != (meta["epochs"] + 1, meta["parameters"]):
            raise DamagedFileError(f"expert file {str(path)!r} holds a trajectory of shape {shape}, not "
                                   f"({meta['epochs'] + 1}, {meta['parameters']}) as its metadata says; {fix}")
        return meta

    @staticmethod
    def _check_meta(path: Path, meta: dict, expected: dict, training: bool = False) -> None:
        wrong = {k: (meta.get(k), v) for k, v in expected.items() if str(meta.get(k)) != str(v)}
        if wrong:
            text = ", ".join(f"{k}: buffer {a} vs {'now' if training else 'run'} {b}" for k, (a, b) in wrong.items())
            if training:
                raise IncompatibleRunError(f"{str(path)!r} holds an expert trained with other settings ({text}); a "
                                           "buffer never mixes two trainings: use another folder, or delete this one")
            raise IncompatibleRunError(f"expert buffer {str(path)!r} was made for another network or data ({text}); "
                                       "train experts for this setting or point to the matching buffer")

    @property
    def fingerprint(self) -> str:
        """Identifies the buffer's trajectories (their metadata and their first and last parameters)."""
        items = []
        for expert, f in enumerate(self.files):
            meta = self._read_meta(f)
            items += [f.name, {k: str(v) for k, v in sorted(meta.items())}, *self.read(expert, [0, meta["epochs"]])]
        return fingerprint(*items)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def epochs(self) -> int:
        return self.meta["epochs"]

    def check_fits(self, **expected) -> None:
        """Raise a clear error unless the buffer was made for ``expected`` (keys of ``MATCH_KEYS``)."""
        self._check_meta(self.path, self.meta, expected)

    def read(self, expert: int, epochs: list[int]) -> list[torch.Tensor]:
        """The flat parameters of ``expert`` after each epoch in ``epochs`` (only those rows are read)."""
        from safetensors import safe_open

        path = self.files[expert]
        try:
            with safe_open(str(path), framework="pt") as f:
                traj = f.get_slice("trajectory")
                rows = [traj[e:e + 1][0] for e in epochs]
        except Exception as exc:
            raise DamagedFileError(f"cannot read expert file {str(path)!r} ({type(exc).__name__}: {exc}); delete it and "
                                   "train it again") from None
        if not all(r.is_floating_point() and bool(torch.isfinite(r).all()) for r in rows):
            raise DamagedFileError(f"expert file {str(path)!r} holds NaN/Inf or non-float parameters; delete it and "
                                   "train it again")
        return rows
