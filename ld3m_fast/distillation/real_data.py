"""The real training set of a distillation run: whatever the user passes, as per-class batches.

``as_real_data`` accepts a pair of tensors ``(images, labels)``, an ``ld3m_fast.data.ImageDataset``
(or anything with ``images``/``labels``), any map-style dataset of ``(image, label)``, or a dataset
name of ``ld3m_fast.data.load_dataset``. Images are kept on the CPU (uint8 when they come as
uint8, so that an ImageNet subset fits); batches are moved to the run's device and normalised with
the set's mean/std when drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.pairs import check_images_labels, image_label_pair
from ..errors import InvalidArgumentError
from ..normalization import normalize, to_unit


@dataclass
class RealData:
    """Real images (CPU; uint8, or float in [0, 1]), labels, normalisation and the indices of each class."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    class_names: list[str]
    class_ids: tuple[int, ...] | None  # the class a class-conditional model knows each label as (ImageNet ids)
    name: str

    def __post_init__(self):
        self.indices = [torch.nonzero(self.labels == k).flatten() for k in range(self.num_classes)]

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − mean) / std`` per channel, for images in [0, 1]."""
        return normalize(x, self.mean, self.std)

    def class_batch(self, k: int, n: int, gen: torch.Generator, device) -> torch.Tensor:
        """``n`` random images of class ``k`` (all of them if it has fewer), normalised, on ``device``."""
        idx = self.indices[k]
        pick = idx[torch.randperm(idx.numel(), generator=gen)[:n]]
        return self.normalize(to_unit(self.images[pick], device))

    def all_normalized(self, device, indices: torch.Tensor | None = None) -> torch.Tensor:
        x = self.images if indices is None else self.images[indices]
        return self.normalize(to_unit(x, device))


def as_real_data(train, num_classes: int | None = None, *, name: str = "train") -> RealData:
    """Turn ``train`` (any form of ``ld3m_fast.data.image_label_pair``, or a dataset name) into :class:`RealData`;
    checks labels lie in ``0..C−1`` and every class has images."""
    mean = std = class_ids = None
    class_names = None
    set_name = name
    if isinstance(train, str):
        from ..data import load_dataset
        train = load_dataset(train)
    images, labels = image_label_pair(train, name)
    check_images_labels(images, labels, f"{name} images", f"{name} labels")
    images, labels = images.detach().cpu(), labels.detach().cpu().long()
    if hasattr(train, "images"):
        mean, std = getattr(train, "mean", None), getattr(train, "std", None)
        class_names = getattr(train, "class_names", None)
        class_ids = getattr(train, "imagenet_ids", None)
        set_name = getattr(train, "name", name)
    if num_classes is None:
        num_classes = len(class_names) if class_names else int(labels.max()) + 1
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise InvalidArgumentError(
            f"{name}: labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    counts = torch.bincount(labels, minlength=num_classes)
    empty = [k for k in range(num_classes) if counts[k] == 0]
    if empty:
        raise InvalidArgumentError(
            f"{name}: classes {empty} have no images; every class 0..{num_classes - 1} needs at least one")
    if mean is None or std is None:
        unit = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        mean = tuple(float(v) for v in unit.mean(dim=(0, 2, 3)))
        std = tuple(max(float(v), 1e-6) for v in unit.std(dim=(0, 2, 3)))
    return RealData(images, labels, tuple(mean), tuple(std), num_classes,
                    list(class_names) if class_names else [str(k) for k in range(num_classes)],
                    None if class_ids is None else tuple(int(i) for i in class_ids), str(set_name))
