"""scripts/make_embedded_fashion_mnist.py: the embedded subset is the first k images of every class, reproducibly."""
from pathlib import Path

import numpy as np
import pytest
import torch

from ld3m_fast.data import embedded_fashion_mnist, fashion_mnist
from ld3m_fast.data import fashion as fm_module
from ld3m_fast.data.fashion import EMBEDDED_PER_CLASS
from scripts.make_embedded_fashion_mnist import first_per_class, make_embedded
from tests.data.test_dataset import write_fake_fashion


def test_make_embedded_is_deterministic_first_k_per_class(tmp_path):
    src_images, src_labels = write_fake_fashion(tmp_path / "src", 5, "train", gz=True)
    write_fake_fashion(tmp_path / "src", 4, "test", gz=True, seed=2)
    first = make_embedded(tmp_path / "src", tmp_path / "out1", {"train": 3, "test": 2})
    second = make_embedded(tmp_path / "src", tmp_path / "out2", {"train": 3, "test": 2})
    assert first == second and len(first) == 4  # same bytes
    sub = fashion_mnist(tmp_path / "out1", "train")
    keep = [i for i in range(len(src_labels)) if (src_labels[:i] == src_labels[i]).sum() < 3]
    assert np.array_equal(sub.images[:, 0].numpy(), src_images[keep])
    assert torch.equal(sub.class_counts(), torch.full((10,), 3))
    assert torch.equal(fashion_mnist(tmp_path / "out1", "test").class_counts(), torch.full((10,), 2))
    with pytest.raises(ValueError, match="fewer than k=6"):
        first_per_class(src_labels, 6, 10)



@pytest.mark.skipif(not Path(fm_module.DEBIAN_FASHION_MNIST).is_dir(),
                    reason="needs Debian's dataset-fashion-mnist (the source of the embedded subset)")
def test_embedded_subset_matches_the_full_set():
    for split, k in EMBEDDED_PER_CLASS.items():
        full, sub = fashion_mnist(split=split), embedded_fashion_mnist(split)
        keep = torch.from_numpy(first_per_class(full.labels.numpy(), k, 10))
        assert torch.equal(sub.images, full.images[keep]) and torch.equal(sub.labels, full.labels[keep])

