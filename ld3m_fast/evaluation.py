"""Cross-architecture evaluation of a distilled set (the GLaD/LD3M protocol, docs/design.md §8; the DC
protocol as an option).

For every architecture, ``repeats`` freshly initialised networks are trained from scratch on the distilled
images with DSA (``train_network``) and tested once on the real test set; the table reports mean ± std of the
test accuracies and the mean over the architectures not used for distillation ("unseen").
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .data.pairs import check_images_labels, image_label_pair
from .errors import InvalidArgumentError
from .nets import get_network, network_family, parse_network_name
from .nets.training import test_accuracy, train_network

DEFAULT_ARCHS = ("ConvNet", "AlexNet", "VGG11", "ResNet18", "ViT")
PROTOCOLS = {
    # GLaD/LD3M: 1000 epochs, warm-up + cosine, EMA 0.995; lr 1e-3 (VGG11: 1e-4).
    "glad": dict(epochs=1000, schedule="glad", ema_decay=0.995, lr={"VGG11": 1e-4}, default_lr=1e-3),
    # DC/DSA/DM: 300 epochs, lr 0.01 divided by 10 at the half, no EMA.
    "dc": dict(epochs=300, schedule="dc", ema_decay=None, lr={}, default_lr=1e-2),
}


def default_lr(arch: str, protocol: str = "glad") -> float:
    """The protocol's learning rate for an architecture (GLaD: 0.001, 0.0001 for VGG11; DC: 0.01)."""
    p = PROTOCOLS[protocol]
    return p["lr"].get(network_family(arch), p["default_lr"])


@dataclass
class EvalRow:
    arch: str
    accuracies: list[float]

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def std(self) -> float:
        """Population standard deviation (numpy's default, as the field's code reports it)."""
        m = self.mean
        return (sum((a - m) ** 2 for a in self.accuracies) / len(self.accuracies)) ** 0.5


@dataclass
class EvalTable:
    """Test accuracies (fractions in [0, 1]) per architecture; ``str()`` prints them in %."""
    rows: list[EvalRow]
    train_arch: str = "ConvNet"
    settings: dict = field(default_factory=dict)

    def __getitem__(self, arch: str) -> EvalRow:
        for row in self.rows:
            if row.arch.lower() == arch.lower():
                return row
        raise KeyError(f"no row for {arch!r}; rows: {[r.arch for r in self.rows]}")

    @property
    def unseen_rows(self) -> list[EvalRow]:
        """Rows of architecture families other than the one used for distillation (ConvNet variants are seen)."""
        seen = network_family(self.train_arch)
        return [r for r in self.rows if network_family(r.arch) != seen]

    @property
    def unseen_mean(self) -> float | None:
        """Mean of the unseen architectures' mean accuracies (None when every row is the training family)."""
        rows = self.unseen_rows
        return sum(r.mean for r in rows) / len(rows) if rows else None

    def to_dict(self) -> dict:
        return {
            "rows": [{"arch": r.arch, "accuracies": list(r.accuracies), "mean": r.mean, "std": r.std}
                     for r in self.rows],
            "train_arch": self.train_arch,
            "unseen_mean": self.unseen_mean,
            "settings": dict(self.settings),
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        width = max([len(r.arch) for r in self.rows] + [len("unseen mean"), len("arch")])
        lines = [f"{'arch':<{width}}  test accuracy (%)  runs"]
        for r in self.rows:
            tag = "" if r in self.unseen_rows else "  (train arch)"
            lines.append(f"{r.arch:<{width}}  {100 * r.mean:6.2f} ± {100 * r.std:5.2f}    {len(r.accuracies):4d}{tag}")
        u = self.unseen_mean
        lines.append(f"{'unseen mean':<{width}}  " + ("  n/a" if u is None else f"{100 * u:6.2f}"))
        return "\n".join(lines)


def _as_pair(obj, name: str, unit_range: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) from a tuple, an object with .images/.labels, or a map-style dataset of (image, label)."""
    images, labels = image_label_pair(obj, name)
    check_images_labels(images, labels, f"{name} images", f"{name} labels", unit_range)
    return images, labels


def _has_normalization(obj) -> bool:
    return (getattr(obj, "mean", None) is not None and getattr(obj, "std", None) is not None
            and not callable(obj.mean) and not callable(obj.std))


def _normalization(normalize, test, test_images: torch.Tensor):
    """The (mean, std) to use: explicit, False (none), test.mean/test.std, or the test images' channel statistics."""
    if normalize is False:
        return None
    if normalize is not None:
        return normalize
    if _has_normalization(test):
        return (test.mean, test.std)
    x = test_images.double() / (255 if test_images.dtype == torch.uint8 else 1)
    return (x.mean(dim=(0, 2, 3)).float().tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-6).float().tolist())


def evaluate(distilled, test, archs: Sequence[str] = DEFAULT_ARCHS, repeats: int = 5, *, protocol: str = "glad",
             epochs: int | None = None, lr: float | dict | None = None, batch_size: int = 256,
             train_arch: str = "ConvNet", normalize=None, train_normalize=None, num_classes: int | None = None,
             device=None, seed: int = 0, progress: bool = True, net_kwargs: dict | None = None,
             dsa: bool = True, distributed: bool = False) -> EvalTable:
    """Train ``repeats`` networks of each architecture on ``distilled`` and test them on ``test``.

    distilled: (images, labels), an object with .images/.labels (images (N, C, H, W) floats in [0, 1]), or a path that
      ``ld3m_fast.export.load_set`` reads (a distilled-set folder, an exported .pt pair, a class-folder tree).
    test: the same, or a map-style dataset of (image, label); its .mean/.std are used for normalisation if present.
    protocol: 'glad' (1000 epochs, warm-up + cosine, EMA; lr 0.001, VGG11 0.0001) or 'dc' (300 epochs, lr 0.01,
      x0.1 at the half, no EMA). ``epochs`` and ``lr`` (a number or a dict arch -> lr) override the protocol.
    normalize: (mean, std) for train and test images; None: test.mean/test.std or the test images' per-channel
      statistics; False: no normalisation. train_normalize: a different (mean, std) for the distilled images
      (the GLaD/LD3M code normalises its synthetic images with (0.4377, 0.4438, 0.4728), (0.229, 0.224, 0.225));
      None with normalize=None: distilled.mean/distilled.std when it has them (a DistilledSet does).
    num_classes: default: ``distilled.num_classes`` if it exists, else the distilled set's max label + 1; every
      class needs at least one distilled image.
    train_arch: the architecture used for distillation; the others are 'unseen'.
    net_kwargs: extra get_network settings, either for all architectures ({'width': 32}) or per architecture
      ({'ViT': {'depth': 4}, 'ConvNet': {'width': 64}}).
    Deterministic for a seed: network k of architecture i is initialised and trained with seed
      seed * 1_000_003 + 1000 * i + k.
    distributed: under torchrun, deal the (architecture, repeat) jobs out to the ranks and gather one table
      (every rank returns it); the same table as one process computes.
    """
    from tqdm.auto import tqdm

    if isinstance(distilled, (str, os.PathLike)):
        from .export import load_set

        distilled = load_set(distilled)
    if protocol not in PROTOCOLS:
        raise InvalidArgumentError(f"protocol={protocol!r} is unknown; use one of {tuple(PROTOCOLS)}")
    if isinstance(archs, str):
        archs = (archs,)
    archs = tuple(archs)
    if not archs:
        raise InvalidArgumentError("archs is empty; pass at least one architecture, e.g. ('ConvNet',)")
    for a in archs + (train_arch,):
        parse_network_name(a)  # unknown names fail here, before any training
    if not isinstance(repeats, int) or repeats < 1:
        raise InvalidArgumentError(f"repeats must be a positive int, got {repeats!r}")
    p = PROTOCOLS[protocol]
    epochs = p["epochs"] if epochs is None else epochs
    if not isinstance(epochs, int) or epochs < 1:
        raise InvalidArgumentError(f"epochs must be a positive int, got {epochs!r}")

    x_train, y_train = _as_pair(distilled, "distilled", unit_range=False)  # pixel-space sets may leave [0, 1]
    x_test, y_test = _as_pair(test, "test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise InvalidArgumentError(f"distilled images are {tuple(x_train.shape[1:])} (C, H, W) but test images are "
                                   f"{tuple(x_test.shape[1:])}; resize one set so that channels and size match")
    present = torch.bincount(y_train.long().cpu())
    if num_classes is None:
        num_classes = getattr(distilled, "num_classes", None)
    C = int(present.numel()) if num_classes is None else num_classes
    if not isinstance(C, int) or C < 2:
        raise InvalidArgumentError(f"num_classes must be an int >= 2, got {C!r}")
    if int(y_train.max()) >= C:
        raise InvalidArgumentError(
            f"distilled labels go up to {int(y_train.max())} but num_classes={C}; labels must be 0..{C - 1}")
    if int(y_test.max()) >= C:
        raise InvalidArgumentError(f"test labels go up to {int(y_test.max())} but the distilled set has {C} classes "
                                   f"(labels 0..{C - 1}); pass num_classes or relabel the test set")
    empty = [c for c in range(C) if c >= present.numel() or present[c] == 0]
    if empty:
        raise InvalidArgumentError(
            f"classes {empty} have no distilled images; every class 0..{C - 1} needs at least one "
            f"(or pass num_classes if the labels are meant to be fewer)")

    def lr_for(arch: str) -> float:
        if isinstance(lr, dict):
            for key, value in lr.items():
                if key.lower() == arch.lower() or key.lower() == network_family(arch).lower():
                    return float(value)
            return default_lr(arch, protocol)
        return default_lr(arch, protocol) if lr is None else float(lr)

    def kwargs_for(arch: str) -> dict:
        if not net_kwargs:
            return {}
        per_arch = all(isinstance(v, dict) for v in net_kwargs.values())
        if not per_arch:
            return dict(net_kwargs)
        for key, value in net_kwargs.items():
            if key.lower() == arch.lower():
                return dict(value)
        for key, value in net_kwargs.items():
            if key.lower() == network_family(arch).lower():
                return dict(value)
        return {}

    test_norm = _normalization(normalize, test, x_test)
    if train_normalize is None and normalize is None and _has_normalization(distilled):
        train_normalize = (distilled.mean, distilled.std)  # e.g. a DistilledSet: what its loss saw
    train_norm = test_norm if train_normalize is None else (None if train_normalize is False else train_normalize)
    channels, size = x_train.shape[1], (x_train.shape[2], x_train.shape[3])
    size = size[0] if size[0] == size[1] else size
    for a in archs:  # bad settings fail here, before any training
        get_network(a, channels, C, size, seed=0, **kwargs_for(a))

    group = None
    if distributed:
        from .distributed import init

        group = init(device)
        device = group.device
    jobs = [(i, k) for i in range(len(archs)) for k in range(repeats)]
    mine = jobs if group is None else jobs[group.rank::group.world]  # (arch, repeat) jobs dealt out round-robin
    accuracy = {}
    bar = tqdm(total=len(mine), desc="evaluate", disable=not progress or (group is not None and not group.is_main))
    for i, k in mine:
        arch = archs[i]
        run_seed = seed * 1_000_003 + 1000 * i + k
        net = get_network(arch, channels, C, size, seed=run_seed, **kwargs_for(arch))
        trained = train_network(net, x_train, y_train, epochs=epochs, lr=lr_for(arch), batch_size=batch_size,
                                schedule=p["schedule"], ema_decay=p["ema_decay"], dsa=dsa,
                                normalize=train_norm, device=device, seed=run_seed)
        accuracy[(i, k)] = test_accuracy(trained, x_test, y_test, batch_size=batch_size, normalize=test_norm,
                                         device=device)
        bar.update(1)
        bar.set_postfix(arch=arch, acc=f"{100 * accuracy[(i, k)]:.1f}%")
    bar.close()
    if group is not None:
        from .distributed import all_gather_objects

        for part in all_gather_objects(accuracy, group):
            accuracy.update(part)
    rows = [EvalRow(arch, [accuracy[(i, k)] for k in range(repeats)]) for i, arch in enumerate(archs)]
    settings = dict(protocol=protocol, epochs=epochs, repeats=repeats, batch_size=batch_size, seed=seed,
                    lr={a: lr_for(a) for a in archs}, num_classes=C, image_shape=list(x_train.shape[1:]),
                    distilled_images=int(x_train.shape[0]), test_images=int(x_test.shape[0]), dsa=dsa,
                    normalize=_jsonable(test_norm), train_normalize=_jsonable(train_norm))
    return EvalTable(rows, train_arch=train_arch, settings=settings)


def _jsonable(norm):
    if norm is None:
        return None
    return [torch.as_tensor(v).reshape(-1).tolist() for v in norm]


__all__ = ["evaluate", "EvalTable", "EvalRow", "default_lr", "DEFAULT_ARCHS", "PROTOCOLS"]
