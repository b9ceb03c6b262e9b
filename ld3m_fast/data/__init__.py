"""Data for ld3m_fast, with no torchvision and no downloads.

* ``load_dataset(name, root=None, split='train', resolution=None, **kw)``: one entry point by name.
* ``embedded_fashion_mnist(split)``: Fashion-MNIST subset shipped in the package (offline default);
  ``fashion_mnist(root=None, split)``: the full IDX files (Debian's ``dataset-fashion-mnist``).
* ``imagenet_subset(name, root, split, resolution)``: GLaD/LD3M's ten-class ImageNet subsets from the
  standard ImageNet folder layout; ``class_folder(root, resolution)``: any root/<class>/<images> tree.
  Decoded images are cached on disk (``~/.cache/ld3m_fast`` or ``$LD3M_FAST_CACHE``).
* ``ImageDataset``: what every loader returns (uint8 images in memory, labels, class names, mean/std).
"""
from .cache import CACHE_ENV, default_cache_dir
from .classes import (
                            IMAGENET_SUBSETS,
                            imagenet_class_names,
                            imagenet_wnids,
                            subset_classes,
)
from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset
from .fashion import (
                            FASHION_MNIST_CLASSES,
                            FASHION_MNIST_MEAN,
                            FASHION_MNIST_STD,
                            embedded_fashion_mnist,
                            fashion_mnist,
)
from .folders import class_folder
from .idx import read_idx, write_idx
from .imagenet import imagenet_subset
from .images import UnreadableImageError, load_image
from .load import DATASETS, load_dataset

__all__ = ["ImageDataset", "load_dataset", "DATASETS", "IMAGENET_SUBSETS", "embedded_fashion_mnist",
           "fashion_mnist", "imagenet_subset", "class_folder", "imagenet_wnids", "imagenet_class_names",
           "subset_classes", "read_idx", "write_idx", "load_image", "UnreadableImageError", "default_cache_dir",
           "CACHE_ENV", "IMAGENET_MEAN", "IMAGENET_STD", "FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN",
           "FASHION_MNIST_STD"]
