"""``ImageDataset``: a labelled image set held in memory as uint8 tensors.

Every loader of ``ld3m_fast.data`` returns one. Images stay uint8 (N×C×H×W) so that a whole
ImageNet subset fits in memory (13 000 images at 128² take 640 MB); they become float in [0, 1]
only when read (``__getitem__``, ``tensors``). ``mean``/``std`` are the per-channel values the
images are normalised with before they enter a network or an encoder.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

from ..errors import InvalidArgumentError, InvalidTypeError
from ..normalization import normalize
from .classes import class_index

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDataset(torch.utils.data.Dataset):
    """Images (uint8 N×C×H×W), labels (int64 N, 0 … num_classes−1) and what they mean.

    ``imagenet_ids`` gives, for ImageNet subsets, the ImageNet-1k index of each class (the class
    a class-conditional ImageNet model is asked for); ``None`` elsewhere.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                 name: str = "dataset", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, imagenet_ids: Sequence[int] | None = None):
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise InvalidTypeError("ImageDataset: `images` must be a uint8 tensor N×C×H×W, got "
                                   f"{type(images).__name__} {getattr(images, 'dtype', '')} "
                                   f"{tuple(getattr(images, 'shape', ()))}")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise InvalidTypeError(f"ImageDataset: `labels` must be a 1-D integer tensor, got {labels.dtype} "
                                   f"{tuple(labels.shape)}")
        if labels.shape[0] != images.shape[0]:
            raise InvalidArgumentError(f"ImageDataset: {images.shape[0]} images but {labels.shape[0]} labels")
        class_names = [str(c) for c in class_names]
        if not class_names:
            raise InvalidArgumentError("ImageDataset: `class_names` is empty")
        labels = labels.to(torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(class_names)):
            raise InvalidArgumentError(f"ImageDataset: labels must lie in [0, {len(class_names)}) (one per class "
                                       f"name), got [{int(labels.min())}, {int(labels.max())}]")
        channels = images.shape[1]
        mean = tuple(float(m) for m in (mean if mean is not None else (0.5,) * channels))
        std = tuple(float(s) for s in (std if std is not None else (0.5,) * channels))
        if len(mean) != channels or len(std) != channels:
            raise InvalidArgumentError(f"ImageDataset: `mean`/`std` need one value per channel ({channels}), "
                                       f"got {len(mean)}/{len(std)}")
        if any(s <= 0 for s in std):
            raise InvalidArgumentError(f"ImageDataset: `std` must be positive, got {std}")
        if imagenet_ids is not None:
            imagenet_ids = [int(i) for i in imagenet_ids]
            if len(imagenet_ids) != len(class_names):
                raise InvalidArgumentError(f"ImageDataset: {len(imagenet_ids)} imagenet_ids for "
                                           f"{len(class_names)} classes")
        self.images = images
        self.labels = labels
        self.class_names = class_names
        self.name = str(name)
        self.mean, self.std = mean, std
        self.imagenet_ids = imagenet_ids

    # --- shape -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def resolution(self) -> int | tuple[int, int]:
        """Side of the (square) images; (H, W) if they are not square."""
        h, w = int(self.images.shape[2]), int(self.images.shape[3])
        return h if h == w else (h, w)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """(float32 C×H×W image in [0, 1], int label): map-style, for ``torch.utils.data.DataLoader``."""
        return self.images[i].to(torch.float32).div_(255.0), int(self.labels[i])

    def __repr__(self) -> str:
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        per_class = (f"{int(counts.min())}" if int(counts.min()) == int(counts.max())
                     else f"{int(counts.min())}–{int(counts.max())}")
        return (f"ImageDataset({self.name!r}: {len(self)} images {self.channels}×{self.images.shape[2]}"
                f"×{self.images.shape[3]}, {self.num_classes} classes, {per_class} per class)")

    # --- access ------------------------------------------------------------------------------
    def tensors(self, dtype: torch.dtype = torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as ``dtype`` in [0, 1] and all labels, on ``device`` (converted there)."""
        if not dtype.is_floating_point:
            raise InvalidTypeError(f"tensors(): `dtype` must be a floating-point dtype, got {dtype}")
        images = self.images.to(device)  # move the uint8 data (4× smaller), then convert
        return images.to(dtype).div_(255.0), self.labels.to(device)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(images − mean) / std per channel, for images in [0, 1] shaped (…, C, H, W)."""
        return normalize(images, self.mean, self.std)

    def class_indices(self, c: int) -> torch.Tensor:
        """Indices (int64, ascending) of the images of class ``c``."""
        c = class_index(c, self.num_classes, f"a class of {self.name!r}")
        return torch.nonzero(self.labels == c).flatten()

    def class_counts(self) -> torch.Tensor:
        """Number of images of each class (int64, num_classes)."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    # --- derived sets ------------------------------------------------------------------------
    def _with(self, images: torch.Tensor, labels: torch.Tensor, name: str | None = None,
              mean=None, std=None) -> "ImageDataset":
        return ImageDataset(images, labels, self.class_names, name or self.name,
                            self.mean if mean is None else mean, self.std if std is None else std,
                            self.imagenet_ids)

    def subset(self, indices) -> "ImageDataset":
        """The images at ``indices`` (in that order), same classes."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return self._with(self.images[indices], self.labels[indices])

    def per_class(self, k: int, seed: int = 0) -> "ImageDataset":
        """``k`` random images of every class (class 0's first, then class 1's, …), the same for a seed."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidArgumentError(f"per_class(): `k` must be a positive int, got {k!r}")
        gen = torch.Generator().manual_seed(int(seed))
        chosen = []
        for c in range(self.num_classes):
            idx = self.class_indices(c)
            if len(idx) < k:
                raise InvalidArgumentError(f"per_class(k={k}): class {c} ({self.class_names[c]!r}) of {self.name!r} "
                                           f"has only {len(idx)} images; ask for k <= {len(idx)}")
            chosen.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
        return self.subset(torch.cat(chosen))

    def resize(self, resolution: int) -> "ImageDataset":
        """Images resized to ``resolution``² (bilinear, antialiased), e.g. Fashion-MNIST 28² → 32²."""
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise InvalidArgumentError(f"resize(): `resolution` must be a positive int, got {resolution!r}")
        if self.images.shape[2] == self.images.shape[3] == resolution:
            return self
        out = torch.empty(len(self), self.channels, resolution, resolution, dtype=torch.uint8)
        for start in range(0, len(self), 1024):  # bounded float memory
            x = self.images[start:start + 1024].to(torch.float32)
            y = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                              antialias=True)
            out[start:start + 1024] = y.round_().clamp_(0, 255).to(torch.uint8)
        return self._with(out, self.labels)

    def to_rgb(self) -> "ImageDataset":
        """Three-channel copy of a one-channel set (channel repeated, mean/std too)."""
        if self.channels == 3:
            return self
        if self.channels != 1:
            raise InvalidArgumentError(f"to_rgb(): needs 1 or 3 channels, {self.name!r} has {self.channels}")
        return self._with(self.images.expand(-1, 3, -1, -1).contiguous(), self.labels,
                          mean=self.mean * 3, std=self.std * 3)
