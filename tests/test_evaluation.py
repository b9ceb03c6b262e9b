"""The cross-architecture evaluation protocol: tables, determinism, normalisation, bad input."""
import json
import math

import numpy as np
import pytest

from ld3m_fast.evaluation import PROTOCOLS, EvalRow, EvalTable, default_lr, evaluate
from ld3m_fast.nets import NETWORKS
from tests.helpers.toy import separable


def test_evaluate_learns_every_architecture():
    distilled, test = separable(16), separable(200, seed=1)
    small = {"ConvNet": {"width": 16}, "AlexNet": {"width": 32}, "VGG11": {"width": 16}, "ResNet18": {"width": 16},
             "ViT": {"width": 16, "depth": 2}}  # AlexNet (no normalisation) trains unreliably at width 16
    table = evaluate(distilled, test, repeats=1, epochs=30, lr=0.01, batch_size=8, device="cpu", progress=False,
                     net_kwargs=small)
    assert [r.arch for r in table.rows] == list(NETWORKS)
    for row in table.rows:
        assert row.mean > 0.6, (row.arch, row.accuracies)  # chance is 0.25
    assert table["ConvNet"].mean > 0.9


def test_evaluate_is_deterministic_and_table_math():
    distilled, test = separable(8), separable(40, seed=1)
    kw = dict(archs=("ConvNet", "AlexNet", "convnet_bn"), repeats=3, epochs=3, lr=0.01, device="cpu",
              progress=False, net_kwargs={"width": 8})
    t1, t2 = evaluate(distilled, test, **kw), evaluate(distilled, test, **kw)
    assert t1.to_dict()["rows"] == t2.to_dict()["rows"]
    for row in t1.rows:
        assert len(row.accuracies) == 3
        assert math.isclose(row.mean, float(np.mean(row.accuracies)), abs_tol=1e-12)
        assert math.isclose(row.std, float(np.std(row.accuracies)), abs_tol=1e-12)
    # ConvNet variants are the training family; AlexNet is the only unseen architecture
    assert math.isclose(t1.unseen_mean, float(np.mean(t1["alexnet"].accuracies)), abs_tol=1e-12)
    d = json.loads(t1.to_json())
    assert d["unseen_mean"] == t1.unseen_mean and d["settings"]["epochs"] == 3
    assert d["settings"]["lr"] == {"ConvNet": 0.01, "AlexNet": 0.01, "convnet_bn": 0.01}


def test_eval_table_formatting_and_unseen_mean():
    table = EvalTable([EvalRow("ConvNet", [0.5, 0.7]), EvalRow("VGG11", [0.2, 0.4, 0.3]),
                       EvalRow("ViT", [0.1])], train_arch="ConvNet")
    assert math.isclose(table["vgg11"].std, float(np.std([0.2, 0.4, 0.3])))
    assert math.isclose(table.unseen_mean, (0.3 + 0.1) / 2)
    text = str(table)
    assert "60.00 ±" in text and "10.00" in text and "unseen mean" in text and "30.00" in text
    assert "20.00" in text.splitlines()[-1]
    only_seen = EvalTable([EvalRow("ConvNet", [0.5])])
    assert only_seen.unseen_mean is None and "n/a" in str(only_seen)
    with pytest.raises(KeyError):
        table["ResNet18"]


def test_default_protocol_settings():
    assert PROTOCOLS["glad"]["epochs"] == 1000 and PROTOCOLS["dc"]["epochs"] == 300
    assert [default_lr(a) for a in NETWORKS] == [1e-3, 1e-3, 1e-4, 1e-3, 1e-3]
    assert default_lr("vgg11_bn") == 1e-4
    assert all(default_lr(a, "dc") == 1e-2 for a in NETWORKS)


class _Set:
    def __init__(self, images, labels, mean=None, std=None):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std


class _MapDataset:
    def __init__(self, images, labels):
        self.images_, self.labels_ = images, labels

    def __len__(self):
        return len(self.labels_)

    def __getitem__(self, i):
        return self.images_[i], int(self.labels_[i])


def test_evaluate_accepts_objects_and_datasets_and_picks_normalisation():
    (xs, ys), (xt, yt) = separable(8), separable(12, seed=1)
    kw = dict(archs=("ConvNet",), repeats=1, epochs=1, lr=0.01, device="cpu", progress=False,
              net_kwargs={"ConvNet": {"width": 8}})
    t = evaluate(_Set(xs, ys), _Set(xt, yt, mean=[0.5] * 3, std=[0.25] * 3), **kw)
    assert t.settings["normalize"] == [[0.5] * 3, [0.25] * 3]
    t = evaluate((xs, ys), _MapDataset(xt, yt), **kw)
    stats = [xt.double().mean(dim=(0, 2, 3)).tolist(), xt.double().std(dim=(0, 2, 3)).tolist()]
    assert np.allclose(t.settings["normalize"], stats, atol=1e-6)
    t = evaluate((xs, ys), (xt, yt), normalize=False, train_normalize=([0.4] * 3, [0.2] * 3), **kw)
    assert t.settings["normalize"] is None and np.allclose(t.settings["train_normalize"], [[0.4] * 3, [0.2] * 3])


def test_evaluate_rejects_bad_input():
    (xs, ys), (xt, yt) = separable(8), separable(12, seed=1)
    kw = dict(repeats=1, epochs=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="unknown network"):
        evaluate((xs, ys), (xt, yt), archs=("ConvNet", "LeNet5"), **kw)
    with pytest.raises(ValueError, match="protocol"):
        evaluate((xs, ys), (xt, yt), protocol="mtt", **kw)
    with pytest.raises(ValueError, match="test labels"):
        evaluate((xs, ys), (xt, yt + 1), **kw)
    with pytest.raises(ValueError, match="negative"):
        evaluate((xs, ys - 1), (xt, yt), **kw)
    with pytest.raises(ValueError, match=r"classes \[2\] have no distilled images"):
        evaluate((xs[ys != 2], ys[ys != 2]), (xt, yt), **kw)
    with pytest.raises(ValueError, match="num_classes"):
        evaluate((xs, ys), (xt, yt), num_classes=3, **kw)
    with pytest.raises(ValueError, match="size match"):
        evaluate((xs, ys), (xt[:, :, :28, :28], yt), **kw)
    with pytest.raises(ValueError, match="size match"):
        evaluate((xs, ys), (xt[:, :1], yt), **kw)
    with pytest.raises(ValueError, match="empty"):
        evaluate((xs[:0], ys[:0]), (xt, yt), **kw)
    with pytest.raises(ValueError, match="empty"):
        evaluate((xs, ys), (xt[:0], yt[:0]), **kw)
    with pytest.raises(ValueError, match="archs is empty"):
        evaluate((xs, ys), (xt, yt), archs=(), **kw)
    with pytest.raises(ValueError, match="repeats"):
        evaluate((xs, ys), (xt, yt), archs=("ConvNet",), repeats=0, epochs=1, progress=False)
    with pytest.raises(TypeError, match="distilled"):
        evaluate(xs, (xt, yt), **kw)

def test_num_classes_from_the_distilled_object():
    (xs, ys), (xt, yt) = separable(8), separable(12, seed=1)
    distilled = _Set(xs, ys)
    distilled.num_classes = 5
    with pytest.raises(ValueError, match=r"classes \[4\] have no distilled images"):
        evaluate(distilled, (xt, yt), archs=("ConvNet",), repeats=1, epochs=1, device="cpu", progress=False)
