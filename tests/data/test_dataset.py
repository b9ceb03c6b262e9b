"""ImageDataset, the IDX reader/writer, Fashion-MNIST (embedded subset and full files)."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ld3m_fast.data import (FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, ImageDataset,
                            embedded_fashion_mnist, fashion_mnist, load_dataset, read_idx, write_idx)
from ld3m_fast.data import fashion as fm_module
from ld3m_fast.data.fashion import EMBEDDED_PER_CLASS


def random_dataset(n_per_class=(5, 3, 4), channels=3, size=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    labels = labels[torch.randperm(len(labels), generator=gen)]
    images = torch.randint(0, 256, (len(labels), channels, size, size), generator=gen, dtype=torch.uint8)
    names = [f"class{c}" for c in range(len(n_per_class))]
    return ImageDataset(images, labels, names, "random", (0.4,) * channels, (0.2,) * channels)


# --- ImageDataset --------------------------------------------------------------------------------------
def test_dataset_basic_access():
    ds = random_dataset()
    assert len(ds) == 12 and ds.num_classes == 3 and ds.channels == 3 and ds.resolution == 6
    x, y = ds[4]
    assert x.dtype == torch.float32 and x.shape == (3, 6, 6) and isinstance(y, int)
    assert torch.equal(x, ds.images[4].float() / 255) and y == int(ds.labels[4])
    images, labels = ds.tensors(torch.float64)
    assert images.dtype == torch.float64 and images.min() >= 0 and images.max() <= 1
    assert torch.allclose(images * 255, ds.images.double()) and torch.equal(labels, ds.labels)
    assert torch.equal(ds.class_counts(), torch.tensor([5, 3, 4]))
    idx = ds.class_indices(2)
    assert len(idx) == 4 and bool((ds.labels[idx] == 2).all()) and torch.equal(idx, idx.sort().values)
    norm = ds.normalize(ds.tensors()[0])
    assert torch.allclose(norm, (ds.tensors()[0] - 0.4) / 0.2)
    assert "random" in repr(ds)


def test_dataset_works_with_dataloader():
    ds = random_dataset()
    batches = list(torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False))
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (5, 3, 6, 6) and y.dtype == torch.int64
    assert torch.equal(y, ds.labels[:5])


def test_per_class_is_deterministic_and_balanced():
    ds = random_dataset()
    a, b, c = ds.per_class(3, seed=1), ds.per_class(3, seed=1), ds.per_class(3, seed=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.labels, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    # every chosen image is an image of its class in the source set
    for img, lab in zip(a.images, a.labels):
        matches = (ds.images == img).flatten(1).all(1)
        assert bool((ds.labels[matches] == lab).all()) and bool(matches.any())
    draws = [tuple(ds.per_class(3, seed=s).images.flatten(1).sum(1).tolist()) for s in range(6)]
    assert len(set(draws)) > 1  # seeds choose differently
    assert c.class_names == ds.class_names and c.mean == ds.mean
    with pytest.raises(ValueError, match=r"class 1 \('class1'\).*only 3 images"):
        ds.per_class(4, seed=0)
    with pytest.raises(ValueError, match="k"):
        ds.per_class(0)


def test_dataset_validation_errors():
    imgs, labels = torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="uint8"):
        ImageDataset(imgs.float(), labels, ["a", "b"])
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ImageDataset(imgs, torch.tensor([0, 1, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="labels must lie in"):
        ImageDataset(imgs, torch.tensor([0, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="one value per channel"):
        ImageDataset(imgs, labels, ["a", "b"], mean=(0.5, 0.5), std=(0.5, 0.5))
    ds = ImageDataset(imgs, labels, ["a", "b"])
    with pytest.raises(ValueError, match="out of range"):
        ds.class_indices(2)
    with pytest.raises(TypeError, match="int"):
        ds.class_indices(1.0)


def test_resize_and_to_rgb():
    ds = random_dataset(channels=1, size=8)
    const = ImageDataset(torch.full((2, 1, 8, 8), 77, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    assert bool((const.resize(5).images == 77).all()) and const.resize(5).resolution == 5
    up = ds.resize(16)
    assert up.images.shape == (12, 1, 16, 16) and torch.equal(up.labels, ds.labels)
    # a 2× bilinear upsampling keeps the mean of each image (up to rounding)
    assert torch.allclose(up.images.float().mean((1, 2, 3)), ds.images.float().mean((1, 2, 3)), atol=2.0)
    rgb = ds.to_rgb()
    assert rgb.channels == 3 and rgb.mean == ds.mean * 3 and bool((rgb.images == ds.images).all())


# --- IDX ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(3)
    array = (rng.standard_normal((4, 3, 5)) * 50).astype(dtype)
    path = tmp_path / ("a.idx" + (".gz" if gz else ""))
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape and np.array_equal(back, array)


def test_idx_layout_and_content_based_gzip(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    write_idx(tmp_path / "plain", array)
    expected = bytes([0, 0, 0x08, 2]) + struct.pack(">II", 2, 3) + bytes(range(6))
    assert (tmp_path / "plain").read_bytes() == expected
    (tmp_path / "zipped-without-suffix").write_bytes(gzip.compress(expected))
    assert np.array_equal(read_idx(tmp_path / "zipped-without-suffix"), array)
    big_endian = np.array([1, -2, 300], dtype=np.int32)
    write_idx(tmp_path / "i4", big_endian)
    assert (tmp_path / "i4").read_bytes()[8:12] == struct.pack(">i", 1)


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "ok", np.zeros((3, 4), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "ok").read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(TypeError, match="no IDX type"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint64))


# --- Fashion-MNIST ------------------------------------------------------------------------------------
def test_embedded_fashion_mnist_shapes_classes_balance():
    for split in ("train", "test"):
        ds = embedded_fashion_mnist(split)
        k = EMBEDDED_PER_CLASS[split]
        assert ds.images.shape == (10 * k, 1, 28, 28) and ds.images.dtype == torch.uint8
        assert ds.class_names == list(FASHION_MNIST_CLASSES) and ds.num_classes == 10
        assert torch.equal(ds.class_counts(), torch.full((10,), k))
        assert ds.mean == FASHION_MNIST_MEAN and ds.std == FASHION_MNIST_STD and ds.name == "fashion-mnist"
    assert torch.equal(load_dataset("fashion-mnist", split="test").images, embedded_fashion_mnist("test").images)


def test_embedded_fashion_mnist_images_are_real():
    train, test = embedded_fashion_mnist("train"), embedded_fashion_mnist("test")
    x = train.tensors()[0]
    assert abs(float(x.mean()) - FASHION_MNIST_MEAN[0]) < 0.01 and abs(float(x.std()) - FASHION_MNIST_STD[0]) < 0.01
    per_image_std = x.flatten(1).std(1)
    assert float(per_image_std.min()) > 0.02  # no constant images
    background = float((train.images == 0).float().mean())
    assert 0.3 < background < 0.7  # dark background around the garments
    flat = train.images.flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(train)  # no duplicates
    assert not (torch.cdist(test.images.flatten(1).float()[:200], flat.float()) == 0).any()  # disjoint splits
    # the classes are what they claim: nearest class mean classifies the test split far above chance
    means = torch.stack([x[train.class_indices(c)].flatten(1).mean(0) for c in range(10)])
    pred = torch.cdist(test.tensors()[0].flatten(1), means).argmin(1)
    assert float((pred == test.labels).float().mean()) > 0.6


def write_fake_fashion(folder: Path, n_per_class: int, split: str, gz: bool, seed: int = 0):
    """Fake Fashion-MNIST IDX files for ``split``; returns (images, labels) written."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), n_per_class)).astype(np.uint8)
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    stems = fm_module.FASHION_MNIST_FILES[split]
    suffix = ".gz" if gz else ""
    write_idx(folder / (stems[0] + suffix), images)
    write_idx(folder / (stems[1] + suffix), labels)
    return images, labels


def test_fashion_mnist_full_reader(tmp_path):
    images, labels = write_fake_fashion(tmp_path / "plain", 3, "train", gz=False)
    ds = fashion_mnist(tmp_path / "plain", "train")
    assert ds.name == "fashion-mnist-full" and ds.images.shape == (30, 1, 28, 28)
    assert np.array_equal(ds.images[:, 0].numpy(), images) and np.array_equal(ds.labels.numpy(), labels)
    images, labels = write_fake_fashion(tmp_path / "tv" / "FashionMNIST" / "raw", 2, "test", gz=True, seed=1)
    ds = load_dataset("fashion-mnist-full", root=tmp_path / "tv", split="val", resolution=32)
    assert ds.images.shape == (20, 1, 32, 32) and np.array_equal(ds.labels.numpy(), labels)


def test_fashion_mnist_missing_files_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(fm_module, "DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        fashion_mnist()
    assert "embedded" in str(info.value) and "root=" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks the train files"):
        fashion_mnist(tmp_path / "empty")
    with pytest.raises(ValueError, match="split"):
        fashion_mnist(tmp_path / "empty", split="val")
    write_fake_fashion(tmp_path / "bad", 1, "train", gz=False)
    write_idx(tmp_path / "bad" / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="labels for 10 images"):
        fashion_mnist(tmp_path / "bad")
