"""ImageNet subsets and class folders: geometry, labels, cache, errors; class lists and load_dataset."""
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ld3m_fast.data import (DATASETS, IMAGENET_MEAN, IMAGENET_STD, IMAGENET_SUBSETS, UnreadableImageError,
                            class_folder, default_cache_dir, imagenet_class_names, imagenet_subset,
                            imagenet_wnids, load_dataset, load_image)
from ld3m_fast.data.images import resize_crop_geometry

# docs/design.md §9, verbatim
SUBSET_TABLE = """
imagenet-a | 255 376 984 364 500 986 333 576 148 135
imagenet-b | 129 916 90 275 995 874 102 259 685 139
imagenet-c | 565 94 554 535 92 392 291 136 324 11
imagenet-d | 9 258 13 262 19 339 321 24 93 322
imagenet-e | 816 96 100 145 739 713 783 76 688 326
imagenette | 0 217 482 491 497 566 569 571 574 701
imagewoof | 193 182 258 162 155 167 159 273 207 229
imagefruit | 953 954 949 950 951 957 952 945 943 948
imagemeow | 281 282 283 284 285 291 292 290 289 287
imagesquawk | 84 130 88 144 145 22 96 9 100 89
imageyellow | 309 986 954 951 987 779 599 291 72 11
"""


def class_color(position: int) -> tuple[int, int, int]:
    return (20 + 21 * position, 200 - 17 * position, (60 + 53 * position) % 256)


def save(path: Path, array: np.ndarray, mode: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    fmt = "JPEG" if path.suffix.lower() in (".jpeg", ".jpg") else None
    image.save(path, format=fmt, quality=95) if fmt else image.save(path)


def make_imagenet(root: Path, split: str, classes, per_class=3, sizes=((23, 17), (14, 31), (20, 20))):
    """Fake ImageNet: root/split/<wnid>/*.JPEG, class at position k filled with class_color(k) (+ noise)."""
    wnids = imagenet_wnids()
    rng = np.random.default_rng(0)
    for k, idx in enumerate(classes):
        for j in range(per_class):
            w, h = sizes[j % len(sizes)]
            array = np.empty((h, w, 3), np.uint8)
            array[:] = class_color(k)
            array = np.clip(array + rng.integers(-3, 4, array.shape), 0, 255).astype(np.uint8)
            save(root / split / wnids[idx] / f"{wnids[idx]}_{j}.JPEG", array)


@pytest.fixture
def count_opens(monkeypatch):
    """Counts PIL.Image.open calls (= image decodes)."""
    calls = []
    original = Image.open

    def counting_open(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return calls


# --- class lists ----------------------------------------------------------------------------------------
def test_class_lists_equal_design():
    expected = {}
    for line in SUBSET_TABLE.strip().splitlines():
        name, ids = line.split("|")
        expected[name.strip()] = tuple(int(i) for i in ids.split())
    assert IMAGENET_SUBSETS == expected and list(IMAGENET_SUBSETS) == list(expected)
    assert DATASETS == ("fashion-mnist", "fashion-mnist-full", *expected)


def test_imagenet_index_to_wnid_table():
    wnids, names = imagenet_wnids(), imagenet_class_names()
    assert len(wnids) == len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[999] == "n15075141"
    assert [names[i] for i in IMAGENET_SUBSETS["imagenette"]] == [
        "tench", "English springer", "cassette player", "chain saw", "church", "French horn", "garbage truck",
        "gas pump", "golf ball", "parachute"]
    assert names[IMAGENET_SUBSETS["imagemeow"][0]] == "tabby" and names[1000 - 1] == "toilet tissue"


# --- decoding geometry ----------------------------------------------------------------------------------
def test_resize_crop_geometry_hand_computed():
    assert resize_crop_geometry(50, 30, 16) == (26, 16, 5, 0)   # 16·50/30 = 26.67 → 26; (26−16)/2 = 5
    assert resize_crop_geometry(30, 50, 16) == (16, 26, 0, 5)
    assert resize_crop_geometry(16, 41, 16) == (16, 41, 0, 12)  # round(12.5) = 12 (half to even)
    assert resize_crop_geometry(43, 16, 16) == (43, 16, 14, 0)  # round(13.5) = 14
    assert resize_crop_geometry(500, 375, 128) == (170, 128, 21, 0)
    assert resize_crop_geometry(256, 256, 256) == (256, 256, 0, 0)


def test_centre_crop_without_resize_is_an_exact_window(tmp_path):
    rng = np.random.default_rng(1)
    tall = rng.integers(0, 256, (41, 16, 3), dtype=np.uint8)   # H=41, W=16
    wide = rng.integers(0, 256, (16, 43, 3), dtype=np.uint8)
    save(tmp_path / "tall.png", tall)
    save(tmp_path / "wide.png", wide)
    out = load_image(tmp_path / "tall.png", 16)
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), tall[12:28])
    assert np.array_equal(load_image(tmp_path / "wide.png", 16).permute(1, 2, 0).numpy(), wide[:, 14:30])


def test_resize_by_two_then_centre_crop(tmp_path):
    # 64×32 image of four vertical stripes 16 px wide → resized to 32×16, crop columns 8…23.
    # Output column j averages source columns 15+2j … 18+2j (bilinear filter widened ×2), so
    # columns 1…6 see only stripe 1 and 9…14 only stripe 2; a crop offset off by one breaks this.
    colors = np.array([[250, 0, 0], [0, 240, 10], [5, 10, 230], [128, 128, 0]], np.uint8)
    array = np.repeat(colors, 16, axis=0)[None].repeat(32, axis=0)
    save(tmp_path / "stripes.png", array)
    out = load_image(tmp_path / "stripes.png", 16).permute(1, 2, 0).numpy().astype(int)
    assert out.shape == (16, 16, 3)
    assert np.abs(out[:, 1:7] - colors[1]).max() <= 1
    assert np.abs(out[:, 9:15] - colors[2]).max() <= 1
    assert np.abs(out[:, 0] - colors[1]).max() > 10 and np.abs(out[:, 7] - colors[1]).max() > 10


def test_modes_become_rgb(tmp_path):
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    save(tmp_path / "gray.jpg", gray)
    out = load_image(tmp_path / "gray.jpg", 20)
    assert out.shape == (3, 20, 20) and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    rgb = np.zeros((12, 12, 3), np.uint8)
    rgb[:] = (200, 30, 60)
    save(tmp_path / "cmyk.jpg", rgb, mode="CMYK")
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert (load_image(tmp_path / "cmyk.jpg", 12).float().mean((1, 2)) - torch.tensor([200., 30., 60.])).abs().max() < 8
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (10, 20, 30), 128
    save(tmp_path / "alpha.png", rgba)
    assert bool((load_image(tmp_path / "alpha.png", 10) == torch.tensor([10, 20, 30]).view(3, 1, 1)).all())
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "pal.png", 12).shape == (3, 12, 12)
    Image.fromarray(np.full((8, 8), 65535 // 2, np.uint16)).save(tmp_path / "deep.png")
    assert abs(int(load_image(tmp_path / "deep.png", 8)[0, 0, 0]) - 127) <= 1


# --- ImageNet subsets -----------------------------------------------------------------------------------
def test_imagenet_subset_labels_are_positions(tmp_path):
    classes = IMAGENET_SUBSETS["imagenette"]
    make_imagenet(tmp_path / "in", "train", classes)
    ds = imagenet_subset("imagenette", tmp_path / "in", "train", 16, cache_dir=False, progress=False)
    assert ds.images.shape == (30, 3, 16, 16) and ds.num_classes == 10 and ds.name == "imagenette"
    assert ds.class_names[0] == "tench" and ds.imagenet_ids == list(classes)
    assert ds.mean == IMAGENET_MEAN and ds.std == IMAGENET_STD
    assert torch.equal(ds.class_counts(), torch.full((10,), 3))
    for k in range(10):
        mean_color = ds.images[ds.class_indices(k)].float().mean((0, 2, 3))
        assert (mean_color - torch.tensor(class_color(k), dtype=torch.float32)).abs().max() < 4
    # a custom order relabels: label = position in the list
    custom = imagenet_subset("custom", tmp_path / "in", "train", 16, classes=[classes[3], classes[0]],
                             cache_dir=False, progress=False, max_per_class=2)
    assert custom.class_names == ["chain saw", "tench"] and custom.imagenet_ids == [491, 0] and len(custom) == 4
    assert torch.equal(custom.images[custom.class_indices(0)], ds.images[ds.class_indices(3)][:2])
    # val split and the 'test' alias of load_dataset
    make_imagenet(tmp_path / "in", "val", classes, per_class=1)
    val = load_dataset("imagenette", root=tmp_path / "in", split="test", resolution=8, cache_dir=False,
                       progress=False)
    assert val.images.shape == (10, 3, 8, 8)


def test_cache_hit_skips_decoding_and_invalidates_on_change(tmp_path, count_opens):
    classes = IMAGENET_SUBSETS["imagewoof"][:3]
    make_imagenet(tmp_path / "in", "train", classes)
    kw = dict(classes=classes, cache_dir=tmp_path / "cache", progress=False)
    first = imagenet_subset("custom", tmp_path / "in", "train", 12, **kw)
    assert len(count_opens) == 9 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    count_opens.clear()
    second = imagenet_subset("custom", tmp_path / "in", "train", 12, **kw)
    assert count_opens == []  # served from the cache
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.class_names == first.class_names and second.imagenet_ids == first.imagenet_ids
    # another resolution is another entry
    imagenet_subset("custom", tmp_path / "in", "train", 10, **kw)
    assert len(count_opens) == 9
    # an edited file (new content and mtime) invalidates the entry
    changed = sorted((tmp_path / "in" / "train" / imagenet_wnids()[classes[1]]).iterdir())[0]
    save(changed, np.full((20, 20, 3), 7, np.uint8))
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    count_opens.clear()
    third = imagenet_subset("custom", tmp_path / "in", "train", 12, **kw)
    assert len(count_opens) == 9 and not torch.equal(third.images, first.images)
    assert torch.equal(third.images[:3], first.images[:3])
    # an added file too
    save(changed.with_name("zz_extra.JPEG"), np.full((20, 20, 3), 99, np.uint8))
    count_opens.clear()
    assert len(imagenet_subset("custom", tmp_path / "in", "train", 12, **kw)) == 10 and len(count_opens) == 10


def test_cache_env_default_and_disabled(tmp_path, monkeypatch, count_opens):
    monkeypatch.setenv("LD3M_FAST_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    make_imagenet(tmp_path / "in", "train", IMAGENET_SUBSETS["imagefruit"], per_class=1)
    imagenet_subset("imagefruit", tmp_path / "in", resolution=8, progress=False)
    assert len(list((tmp_path / "envcache").glob("imagefruit-train-8px-*.safetensors"))) == 1
    count_opens.clear()
    imagenet_subset("imagefruit", tmp_path / "in", resolution=8, progress=False, cache_dir=False)
    assert len(count_opens) == 10


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, count_opens):
    classes = [1, 2]
    make_imagenet(tmp_path / "in", "train", classes, per_class=2)
    kw = dict(classes=classes, cache_dir=tmp_path / "cache", progress=False)
    good = imagenet_subset("custom", tmp_path / "in", "train", 8, **kw)
    (entry,) = (tmp_path / "cache").glob("*.safetensors")
    for damage in (b"garbage, not safetensors", entry.read_bytes()[:100]):
        entry.write_bytes(damage)
        count_opens.clear()
        with pytest.warns(UserWarning, match="unusable.*rebuilding"):
            rebuilt = imagenet_subset("custom", tmp_path / "in", "train", 8, **kw)
        assert len(count_opens) == 4 and torch.equal(rebuilt.images, good.images)
        count_opens.clear()
        imagenet_subset("custom", tmp_path / "in", "train", 8, **kw)
        assert count_opens == []  # the rebuilt file is good


def test_interrupted_cache_write_leaves_nothing(tmp_path, monkeypatch):
    make_imagenet(tmp_path / "in", "train", [5], per_class=1)
    import safetensors.torch

    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        imagenet_subset("custom", tmp_path / "in", classes=[5], resolution=8, cache_dir=tmp_path / "c",
                        progress=False)
    assert list((tmp_path / "c").iterdir()) == []


def test_unreadable_images_stop_or_skip(tmp_path):
    classes = [7, 8]
    make_imagenet(tmp_path / "in", "train", classes, per_class=3)
    folder = tmp_path / "in" / "train" / imagenet_wnids()[8]
    (folder / "broken.JPEG").write_bytes(b"this is not a JPEG")
    good = sorted(folder.glob("*_0.JPEG"))[0]
    (folder / "truncated.JPEG").write_bytes(good.read_bytes()[:200])
    kw = dict(classes=classes, progress=False)
    with pytest.raises(UnreadableImageError, match="broken.JPEG.*on_error='skip'") as info:
        imagenet_subset("custom", tmp_path / "in", resolution=8, cache_dir=False, **kw)
    assert info.value.path.endswith("broken.JPEG")
    with pytest.warns(UserWarning, match="skipping unreadable image") as record:
        ds = imagenet_subset("custom", tmp_path / "in", resolution=8, cache_dir=tmp_path / "c", on_error="skip", **kw)
    assert len(ds) == 6 and torch.equal(ds.class_counts(), torch.tensor([3, 3]))
    assert {Path(w.message.args[0].split("'")[1]).name for w in record} == {"broken.JPEG", "truncated.JPEG"}
    # the cache remembers what was skipped: 'stop' still stops, 'skip' warns again
    with pytest.raises(UnreadableImageError, match="recorded in the cache"):
        imagenet_subset("custom", tmp_path / "in", resolution=8, cache_dir=tmp_path / "c", **kw)
    with pytest.warns(UserWarning, match="skipping unreadable image") as record:
        again = imagenet_subset("custom", tmp_path / "in", resolution=8, cache_dir=tmp_path / "c", on_error="skip",
                                **kw)
    assert {Path(w.message.args[0].split("'")[1]).name for w in record} == {"broken.JPEG", "truncated.JPEG"}
    assert torch.equal(again.images, ds.images)


def test_class_empty_after_skipping(tmp_path):
    make_imagenet(tmp_path / "in", "train", [3], per_class=1)
    folder = tmp_path / "in" / "train" / imagenet_wnids()[4]
    folder.mkdir(parents=True)
    (folder / "bad.jpg").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"class 1 .*ImageNet class 4.*empty"):
        imagenet_subset("custom", tmp_path / "in", classes=[3, 4], resolution=8, on_error="skip",
                        cache_dir=False, progress=False)


def test_imagenet_errors(tmp_path):
    kw = dict(cache_dir=False, progress=False)
    with pytest.raises(FileNotFoundError, match="ImageNet root .* does not exist"):
        imagenet_subset("imagenette", tmp_path / "nowhere", **kw)
    (tmp_path / "in").mkdir()
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        imagenet_subset("imagenette", tmp_path / "in", **kw)
    make_imagenet(tmp_path / "in", "train", IMAGENET_SUBSETS["imagenette"][:1], per_class=1)
    with pytest.raises(FileNotFoundError, match=r"class 1 of imagenette = ImageNet class 217 \(n02102040, "
                                                r"'English springer'\) has no folder"):
        imagenet_subset("imagenette", tmp_path / "in", **kw)
    save(tmp_path / "in" / "val" / "ILSVRC2012_val_00000001.JPEG", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="sort them into one folder per wnid"):
        imagenet_subset("imagenette", tmp_path / "in", "val", **kw)
    (tmp_path / "in" / "train" / imagenet_wnids()[1]).mkdir()
    with pytest.raises(ValueError, match="no image files"):
        imagenet_subset("custom", tmp_path / "in", classes=[1], **kw)
    with pytest.raises(ValueError, match="unknown ImageNet subset 'imagenet-z'.*imagenette"):
        imagenet_subset("imagenet-z", tmp_path / "in", **kw)
    with pytest.raises(ValueError, match="needs classes="):
        imagenet_subset("custom", tmp_path / "in", **kw)
    with pytest.raises(ValueError, match="0–999"):
        imagenet_subset("custom", tmp_path / "in", classes=[1000], **kw)
    with pytest.raises(ValueError, match="twice"):
        imagenet_subset("custom", tmp_path / "in", classes=[1, 1], **kw)
    with pytest.raises(ValueError, match="only for name='custom'"):
        imagenet_subset("imagenette", tmp_path / "in", classes=[1, 2], **kw)
    with pytest.raises(ValueError, match="split"):
        imagenet_subset("imagenette", tmp_path / "in", "test", **kw)
    with pytest.raises(ValueError, match="on_error"):
        imagenet_subset("custom", tmp_path / "in", classes=[0], on_error="ignore", **kw)
    with pytest.raises(ValueError, match="resolution"):
        imagenet_subset("custom", tmp_path / "in", classes=[0], resolution=0, **kw)


# --- generic class folders and load_dataset -------------------------------------------------------------
def make_class_tree(root: Path):
    rng = np.random.default_rng(5)
    specs = {"cats": [("a.png", (9, 13), None), ("b.JPG", (30, 12), "L")],
             "dogs": [("x.jpeg", (11, 11), None), ("y.PNG", (7, 19), "L"), ("notes.txt", None, None)],
             "emus": [("e.bmp", (16, 10), None)]}
    for cls, files in specs.items():
        for fname, size, mode in files:
            if size is None:
                (root / cls / fname).write_text("not an image")
                continue
            save(root / cls / fname, rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), mode)
    (root / ".hidden").mkdir()


def test_class_folder(tmp_path):
    make_class_tree(tmp_path / "pets")
    ds = class_folder(tmp_path / "pets", 8, cache_dir=False, progress=False)
    assert ds.class_names == ["cats", "dogs", "emus"] and ds.name == "pets"
    assert ds.labels.tolist() == [0, 0, 1, 1, 2] and ds.images.shape == (5, 3, 8, 8)
    assert torch.equal(ds.images[0], load_image(tmp_path / "pets" / "cats" / "a.png", 8))
    picked = class_folder(tmp_path / "pets", 8, classes=["emus", "cats"], max_per_class=1, cache_dir=False,
                          progress=False)
    assert picked.class_names == ["emus", "cats"] and picked.labels.tolist() == [0, 1]
    assert torch.equal(picked.images[1], ds.images[0])
    with pytest.raises(FileNotFoundError, match="class 1 'wolves' has no folder.*cats, dogs, emus"):
        class_folder(tmp_path / "pets", 8, classes=["cats", "wolves"], cache_dir=False)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        class_folder(tmp_path / "nope", 8)


def test_load_dataset_dispatch(tmp_path):
    make_class_tree(tmp_path / "pets" / "train")
    make_class_tree(tmp_path / "pets" / "val")
    ds = load_dataset(str(tmp_path / "pets"), split="test", resolution=8, cache_dir=False, progress=False)
    assert len(ds) == 5 and ds.name == "pets"
    assert len(load_dataset("folder", root=tmp_path / "pets" / "train" / "cats" / "..", resolution=8,
                            cache_dir=False, progress=False)) == 5
    assert load_dataset("fashion-mnist").images.shape == (4000, 1, 28, 28)
    with pytest.raises(ValueError, match="unknown data set 'cifar10'.*fashion-mnist.*imagenette"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("imagewoof")
    with pytest.raises(ValueError, match="takes no root"):
        load_dataset("fashion-mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no 'val' folder"):
        make_class_tree(tmp_path / "only" / "train")
        load_dataset(tmp_path / "only", split="val", cache_dir=False)
