"""export_set / load_set: each format round-trips a DistilledSet; official-style .pt pairs load; pickles never run."""
import json
import pathlib

import pytest
import torch

from ld3m_fast.distillation.result import DistilledSet
from ld3m_fast.errors import DamagedFileError, InvalidArgumentError, MissingFileError
from ld3m_fast.export import export_set, load_set, safe_name
from ld3m_fast.normalization import normalize

GLAD = ((0.4377, 0.4438, 0.4728), (0.229, 0.224, 0.225))


def make_set(classes=3, ipc=2, channels=3, side=8, seed=0, syn_lr=0.0123) -> DistilledSet:
    g = torch.Generator().manual_seed(seed)
    names = ["T-shirt/top", "Ankle boot", "a:b*c"] + [f"class {k}" for k in range(3, classes)]
    mean, std = ((0.4377, 0.4438, 0.4728), (0.229, 0.224, 0.225)) if channels == 3 else ((0.2860,), (0.3530,))
    s = DistilledSet(images=torch.rand(classes * ipc, channels, side, side, generator=g),
                     labels=torch.arange(classes).repeat_interleave(ipc), mean=mean, std=std,
                     class_names=names[:classes], config={"algorithm": "mtt"}, history=[])
    s.syn_lr = syn_lr  # the field the lead adds to DistilledSet; export reads it with getattr
    return s


@pytest.mark.parametrize("fmt,files", [("mtt", ("images_best.pt", "labels_best.pt", "lr_best.pt")),
                                       ("ddranking", ("images.pt", "labels.pt", "lr.pt"))])
def test_pt_formats_hold_what_the_official_code_loads_and_round_trip(tmp_path, fmt, files):
    s = make_set()
    record = export_set(s, tmp_path / fmt, fmt)
    out = record.parent
    # what the official evaluation code does with the files: plain torch.load, used as they are
    images, labels, lr = (torch.load(out / f) for f in files)
    assert images.dtype == torch.float32 and images.shape == s.images.shape
    torch.testing.assert_close(images, normalize(s.images, s.mean, s.std), rtol=0, atol=1e-6)
    assert labels.dtype == torch.int64 and torch.equal(labels, s.labels)
    assert lr.dim() == 0 and float(lr) == pytest.approx(s.syn_lr)
    info = json.loads(record.read_text())
    assert info["kind"] == fmt and info["normalization"] == {"mean": list(s.mean), "std": list(s.std)}
    assert info["class_names"] == s.class_names and info["files"] == list(files)
    for where in (out, out / files[0]):  # the folder or the images file
        back = load_set(where)
        torch.testing.assert_close(back.images, s.images, rtol=0, atol=1e-6)
        assert torch.equal(back.labels, s.labels) and back.labels.dtype == torch.int64
        assert back.mean == s.mean and back.std == s.std and back.class_names == s.class_names
        assert back.syn_lr == pytest.approx(s.syn_lr) and back.source == fmt


def test_ddranking_normalize_override_is_recorded_and_undone(tmp_path):
    s = make_set()
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    export_set(s, tmp_path, "ddranking", normalize=imagenet)
    torch.testing.assert_close(torch.load(tmp_path / "images.pt"), normalize(s.images, *imagenet), rtol=0, atol=1e-6)
    back = load_set(tmp_path)
    torch.testing.assert_close(back.images, s.images, rtol=0, atol=1e-6)
    assert (back.mean, back.std) == imagenet


def test_no_lr_file_without_syn_lr(tmp_path):
    s = make_set(syn_lr=None)
    export_set(s, tmp_path, "mtt")
    assert not (tmp_path / "lr_best.pt").exists() and load_set(tmp_path).syn_lr is None


@pytest.mark.parametrize("channels", [3, 1])
def test_folder_round_trip_within_one_level(tmp_path, channels):
    s = make_set(classes=11, channels=channels)
    record = export_set(s, tmp_path, "folder")
    info = json.loads(record.read_text())
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == info["class_folders"]  # sorted names (ImageFolder's labels) follow the labels
    assert folders[0] == "00_T-shirt_top" and folders[2] == "02_a_b_c" and folders[10] == "10_class_10"
    assert sorted(p.name for p in (tmp_path / folders[1]).iterdir()) == ["02.png", "03.png"]
    back = load_set(tmp_path)
    assert back.images.shape == s.images.shape and back.source == "folder"
    assert float((back.images - s.images).abs().max()) <= 0.5 / 255 + 1e-6
    assert torch.equal(back.labels, s.labels) and back.class_names == s.class_names


def test_folder_keeps_the_order_of_an_ungrouped_set(tmp_path):
    s = make_set()
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    s.images, s.labels = s.images[order], s.labels[order]
    export_set(s, tmp_path, "folder")
    back = load_set(tmp_path)
    assert torch.equal(back.labels, s.labels)
    assert float((back.images - s.images).abs().max()) <= 0.5 / 255 + 1e-6


def test_image_tree_without_record_loads_through_class_folder(tmp_path):
    s = make_set()
    export_set(s, tmp_path, "folder")
    (tmp_path / "export.json").unlink()
    back = load_set(tmp_path)  # resolution from the first (square) image
    assert back.source == "class_folder" and back.mean is None and back.std is None
    assert back.class_names == sorted(p.name for p in tmp_path.iterdir())
    assert torch.equal(back.labels, s.labels)
    assert float((back.images - s.images).abs().max()) <= 0.5 / 255 + 1e-6


def test_distilled_set_folder(tmp_path):
    s = make_set()
    s.save(tmp_path / "run")
    back = load_set(tmp_path / "run")
    assert back.source == "distilled" and torch.equal(back.images, s.images) and torch.equal(back.labels, s.labels)
    assert (back.mean, back.std, back.class_names) == (s.mean, s.std, s.class_names)
    export_set(tmp_path / "run", tmp_path / "mtt", "mtt")  # a path is exported like the set
    torch.testing.assert_close(load_set(tmp_path / "mtt").images, s.images, rtol=0, atol=1e-6)


def official_pair(folder: pathlib.Path, images, labels, stem="best", lr=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(images, folder / f"images_{stem}.pt")
    torch.save(labels, folder / f"labels_{stem}.pt")
    if lr is not None:
        torch.save(lr, folder / f"lr_{stem}.pt")


def test_official_pair_needs_its_normalization_named(tmp_path):
    s = make_set()
    official_pair(tmp_path, normalize(s.images, *GLAD), s.labels, lr=torch.tensor(0.02))
    with pytest.raises(InvalidArgumentError, match="normalization='glad'"):
        load_set(tmp_path)
    for norm in ("glad", GLAD):
        back = load_set(tmp_path / "images_best.pt", normalization=norm)
        torch.testing.assert_close(back.images, s.images, rtol=0, atol=1e-6)
        assert back.mean == GLAD[0] and back.syn_lr == pytest.approx(0.02)
        assert back.class_names == ["0", "1", "2"] and back.source == "pt"
    with pytest.raises(InvalidArgumentError, match="unknown"):
        load_set(tmp_path, normalization="cifar")


def test_glad_iteration_files_and_unit_images(tmp_path):
    s = make_set()
    official_pair(tmp_path, s.images, s.labels, stem="00100", lr=0.5)  # a plain float, as some scripts save it
    back = load_set(tmp_path / "images_00100.pt", normalization="unit")
    assert torch.equal(back.images, s.images) and back.mean is None and back.syn_lr == 0.5


def test_unbounded_pixels_are_kept_and_a_doubtful_guess_warns(tmp_path):
    s = make_set()
    raw = normalize(s.images, *GLAD)
    raw[0, 0, 0, 0] = 50.0  # pixel-space MTT leaves pixels unbounded: kept, as the networks saw them
    official_pair(tmp_path, raw, s.labels)
    back = load_set(tmp_path, normalization="glad")
    assert float(back.images.max()) > 1.0
    with pytest.warns(UserWarning, match="wrong normalization"):  # most values outside: the guess looks wrong
        load_set(tmp_path, normalization="unit")


def test_recorded_normalization_wins_and_a_contradiction_is_refused(tmp_path):
    export_set(make_set(), tmp_path, "mtt")
    with pytest.raises(InvalidArgumentError, match="contradicts"):
        load_set(tmp_path, normalization="imagenet")
    assert load_set(tmp_path, normalization="glad").mean == GLAD[0]  # the same as recorded: fine


def test_bad_pairs(tmp_path):
    s = make_set()
    torch.save(normalize(s.images, *GLAD), tmp_path / "images_best.pt")
    with pytest.raises(MissingFileError, match="labels_best.pt"):
        load_set(tmp_path, normalization="glad")
    torch.save(torch.rand(6, 3), tmp_path / "labels_best.pt")  # soft labels
    with pytest.raises(DamagedFileError, match="soft labels"):
        load_set(tmp_path, normalization="glad")
    torch.save(s.labels[:4], tmp_path / "labels_best.pt")
    with pytest.raises(DamagedFileError, match="6 images"):
        load_set(tmp_path, normalization="glad")
    (tmp_path / "images_best.pt").write_bytes(b"not a pickle")
    with pytest.raises(DamagedFileError, match="images_best.pt"):
        load_set(tmp_path, normalization="glad")


class Payload:
    """Pickles to a call that creates a marker file: what a malicious .pt would do on load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), tmp_path / "images_best.pt")
    torch.save(torch.zeros(2, dtype=torch.long), tmp_path / "labels_best.pt")
    with pytest.raises(DamagedFileError, match="weights_only"):
        load_set(tmp_path, normalization="unit")
    assert not marker.exists()
    torch.load(tmp_path / "images_best.pt", weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_export_refuses_bad_requests_and_overwrites_only_its_files(tmp_path):
    s = make_set()
    with pytest.raises(InvalidArgumentError, match="format="):
        export_set(s, tmp_path / "x", "npz")
    s.mean = s.std = None
    with pytest.raises(InvalidArgumentError, match="normalize="):
        export_set(s, tmp_path / "x", "mtt")
    s = make_set(classes=3, ipc=2)
    export_set(s, tmp_path / "f", "folder")
    (tmp_path / "f" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match="overwrite=True"):
        export_set(s, tmp_path / "f", "folder")
    smaller = make_set(classes=2, ipc=1, seed=1)
    export_set(smaller, tmp_path / "f", "folder", overwrite=True)
    pngs = sorted(str(p.relative_to(tmp_path / "f")) for p in (tmp_path / "f").rglob("*.png"))
    assert pngs == ["0_T-shirt_top/0.png", "1_Ankle_boot/1.png"]  # nothing stale for ImageFolder to pick up
    assert (tmp_path / "f" / "notes.txt").read_text() == "mine"
    assert torch.equal(load_set(tmp_path / "f").labels, smaller.labels)


def test_safe_name():
    assert safe_name("T-shirt/top") == "T-shirt_top" and safe_name("../..") == "class" and safe_name("ok.v2") == "ok.v2"


def test_evaluate_trains_on_a_loaded_pair_with_its_normalization(tmp_path):
    from ld3m_fast.evaluation import evaluate

    s = make_set(side=16)
    export_set(s, tmp_path, "mtt")
    loaded = load_set(tmp_path / "images_best.pt")
    test = (torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.arange(3).repeat(4))
    table = evaluate(loaded, test, archs=("ConvNet",), repeats=1, epochs=1, progress=False,
                     net_kwargs={"width": 8, "depth": 2})
    mean, std = table.settings["train_normalize"]
    assert mean == pytest.approx(s.mean) and std == pytest.approx(s.std)
    assert table.settings["num_classes"] == 3 and table.settings["distilled_images"] == 6


def test_a_tampered_record_is_reported(tmp_path):
    export_set(make_set(), tmp_path, "folder")
    info = json.loads((tmp_path / "export.json").read_text())
    del info["labels"]
    (tmp_path / "export.json").write_text(json.dumps(info))
    with pytest.raises(DamagedFileError, match="export.json"):
        load_set(tmp_path)
    (tmp_path / "export.json").write_text("{")
    with pytest.raises(DamagedFileError, match="cannot be read"):
        load_set(tmp_path)
