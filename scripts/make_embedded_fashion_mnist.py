"""Recreate the Fashion-MNIST subset shipped in ``ld3m_fast/data/embedded/fashion-mnist/``.

    python scripts/make_embedded_fashion_mnist.py [--source DIR] [--out DIR]

Takes, for every class, the first ``k`` images in file order (k = 400 for train, 200 for test),
keeps them in file order and writes them as gzip IDX files. No randomness, so the same source gives
the same arrays (and, with the same zlib, the same bytes). Source: the full set, by default Debian's
``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``). The LICENSE file beside the
subset is not touched.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np

from ld3m_fast.data.fashion import (DEBIAN_FASHION_MNIST, EMBEDDED_FASHION_MNIST, EMBEDDED_PER_CLASS, FASHION_MNIST_FILES,
                                    fashion_mnist)
from ld3m_fast.data.idx import write_idx


def first_per_class(labels: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Ascending indices of the first ``k`` items of every class 0 … num_classes−1."""
    labels = np.asarray(labels)
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k:
            raise ValueError(f"class {c} has {len(idx)} items, fewer than k={k}")
        chosen.append(idx[:k])
    return np.sort(np.concatenate(chosen))


def make_embedded(source: str | os.PathLike | None = None, out: str | os.PathLike = EMBEDDED_FASHION_MNIST,
                  per_class: dict[str, int] | None = None) -> dict[str, str]:
    """Write the subset's four ``*.gz`` IDX files into ``out``; returns {file name: sha256}."""
    per_class = dict(EMBEDDED_PER_CLASS if per_class is None else per_class)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for split, k in per_class.items():
        full = fashion_mnist(source, split)
        keep = first_per_class(full.labels.numpy(), k, full.num_classes)
        image_stem, label_stem = FASHION_MNIST_FILES[split]
        arrays = {image_stem: full.images[keep, 0].numpy(), label_stem: full.labels[keep].numpy().astype(np.uint8)}
        for stem, array in arrays.items():
            path = out / (stem + ".gz")
            write_idx(path, array, compress=True)
            digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/make_embedded_fashion_mnist.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=None,
                        help=f"folder with the full IDX files (default {DEBIAN_FASHION_MNIST})")
    parser.add_argument("--out", default=str(EMBEDDED_FASHION_MNIST),
                        help="output folder (default: the package's)")
    parser.add_argument("--train-per-class", type=int, default=EMBEDDED_PER_CLASS["train"])
    parser.add_argument("--test-per-class", type=int, default=EMBEDDED_PER_CLASS["test"])
    args = parser.parse_args(argv)
    digests = make_embedded(args.source, args.out, {"train": args.train_per_class, "test": args.test_per_class})
    total = 0
    for name, digest in digests.items():
        size = (Path(args.out) / name).stat().st_size
        total += size
        print(f"{name:32s} {size:9d} B  sha256 {digest}")
    print(f"total {total} B in {args.out}")


if __name__ == "__main__":
    main()
