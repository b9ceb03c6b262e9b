"""One way to accept labelled images in any of the forms users hold them."""
from __future__ import annotations

import torch

from ..errors import InvalidArgumentError, InvalidTypeError


def image_label_pair(obj, name: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` from a pair of tensors, anything with ``.images``/``.labels`` (an ``ImageDataset``,
    a ``DistilledSet``), or a map-style dataset of ``(image, label)`` (stacked). Checks only the form; callers
    check the values they need."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], torch.Tensor):
        images, labels = obj
    elif hasattr(obj, "images") and hasattr(obj, "labels"):
        images, labels = obj.images, obj.labels
    elif hasattr(obj, "__getitem__") and hasattr(obj, "__len__"):
        if len(obj) == 0:
            raise InvalidArgumentError(f"{name} is empty")
        items = [obj[i] for i in range(len(obj))]
        try:
            images = torch.stack([torch.as_tensor(x) for x, _ in items])
            labels = torch.as_tensor([int(y) for _, y in items])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InvalidTypeError(f"{name}: a dataset must yield (image tensor (C, H, W), integer label) pairs of one "
                                   f"size ({exc})") from None
    else:
        raise InvalidTypeError(f"{name} must be (images, labels), an object with .images and .labels, or a map-style "
                               f"dataset of (image, label); got {type(obj).__name__}")
    labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    return (images.detach() if isinstance(images, torch.Tensor) else images), labels.detach()


def check_images_labels(images, labels, name: str = "images", labels_name: str = "labels",
                        unit_range: bool = True) -> None:
    """Shapes, dtypes and values of an (images, labels) pair: images (N, C, H, W) uint8, or finite floats — in [0, 1]
    with ``unit_range`` (real images; a pixel-space distilled set may leave it); labels 1-D integer class indices >= 0,
    one per image."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InvalidArgumentError(
            f"{name} must be a tensor (N, C, H, W), got "
            + (f"shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__))
    if not images.is_floating_point() and images.dtype != torch.uint8:
        raise InvalidTypeError(f"{name} has dtype {images.dtype}; pass float images in [0, 1] or uint8 images")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise InvalidArgumentError(
            f"{labels_name} must be a 1-D tensor of class indices, got "
            + (f"shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__))
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InvalidTypeError(
            f"{labels_name} has dtype {labels.dtype}; pass integer class indices ({labels_name}.long())")
    if images.shape[0] != labels.shape[0]:
        raise InvalidArgumentError(
            f"{name} has {images.shape[0]} images but {labels_name} has {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise InvalidArgumentError(f"{name} is empty")
    if labels.min() < 0:
        raise InvalidArgumentError(
            f"{labels_name} has negative class indices ({int(labels.min())}); labels must be 0..C-1")
    if images.is_floating_point():
        if not bool(torch.isfinite(images).all()):
            raise InvalidArgumentError(f"{name} has {int((~torch.isfinite(images)).sum())} NaN/Inf values")
        low, high = float(images.min()), float(images.max())
        if unit_range and (low < -1e-3 or high > 1 + 1e-3):  # a little slack for rounding
            hint = ("they look like 0..255 values: divide by 255" if high > 1.5 and low >= -1e-3 else
                    "they look like [-1, 1] values: use (x + 1) / 2" if low >= -1.001 and high <= 1.001 else
                    "rescale them")
            raise InvalidArgumentError(f"{name} are floats in [{low:.3g}, {high:.3g}] but must lie in [0, 1] (or be "
                                       f"uint8 0..255); {hint}")
