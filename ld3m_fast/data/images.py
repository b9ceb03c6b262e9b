"""Decoding one image file into a square uint8 RGB tensor: shorter side resized, centre crop.

Same geometry as the usual ``Resize(r) + CenterCrop(r)`` pipeline: the shorter side becomes ``r``
and the longer ``int(r · long / short)`` (rounded down); bilinear resampling, antialiased (PIL
widens the filter when it shrinks); then the centre ``r × r`` window, its offset
``int(round((side − r) / 2))``. Grayscale, palette, CMYK and alpha images become RGB.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..errors import DamagedFileError, InvalidArgumentError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


class UnreadableImageError(DamagedFileError, OSError):
    """An image file that cannot be decoded; ``path`` names it."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


def resize_crop_geometry(width: int, height: int, resolution: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) for a ``width × height`` image."""
    if width <= 0 or height <= 0:
        raise InvalidArgumentError(f"image size must be positive, got {width}×{height}")
    if width <= height:
        new_w, new_h = resolution, int(resolution * height / width)
    else:
        new_w, new_h = int(resolution * width / height), resolution
    left = int(round((new_w - resolution) / 2.0))
    top = int(round((new_h - resolution) / 2.0))
    return new_w, new_h, left, top


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):  # 16/32-bit grayscale: scale to 8 bits
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" else max(float(array.max()), 1e-12)
        array = np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    return image.convert("RGB")  # L, LA, RGBA (alpha dropped), CMYK, YCbCr, 1, ...


def load_image_array(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """``load_image`` as a numpy uint8 array 3×r×r (no torch ops: cheap to run in many threads)."""
    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            image.load()
            image = _to_rgb(image)
            new_w, new_h, left, top = resize_crop_geometry(image.width, image.height, resolution)
            if (new_w, new_h) != image.size:
                image = image.resize((new_w, new_h), Image.BILINEAR)
            image = image.crop((left, top, left + resolution, top + resolution))
            array = np.asarray(image, dtype=np.uint8)
    except MemoryError:
        raise
    except Exception as exc:  # PIL signals bad files with many exception types
        raise UnreadableImageError(f"cannot read image {path!r}: {type(exc).__name__}: {exc}", path) from exc
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def load_image(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """The image at ``path`` as uint8 3×resolution×resolution (RGB, resized, centre-cropped).

    Raises ``UnreadableImageError`` naming the file if PIL cannot decode it.
    """
    return torch.from_numpy(load_image_array(path, resolution))
