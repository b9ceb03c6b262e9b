"""One way to accept labelled images in any of the forms users hold them."""
from __future__ import annotations

import torch


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
            raise ValueError(f"{name} is empty")
        items = [obj[i] for i in range(len(obj))]
        try:
            images = torch.stack([torch.as_tensor(x) for x, _ in items])
            labels = torch.as_tensor([int(y) for _, y in items])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name}: a dataset must yield (image tensor (C, H, W), integer label) pairs of one "
                            f"size ({exc})") from None
    else:
        raise TypeError(f"{name} must be (images, labels), an object with .images and .labels, or a map-style "
                        f"dataset of (image, label); got {type(obj).__name__}")
    labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    return (images.detach() if isinstance(images, torch.Tensor) else images), labels.detach()
