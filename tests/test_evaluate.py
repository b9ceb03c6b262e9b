"""Network training (schedules, EMA, determinism) and the cross-architecture evaluation protocol."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from ld3m_fast.evaluate import PROTOCOLS, EvalRow, EvalTable, default_lr, evaluate
from ld3m_fast.nets import NETWORKS, get_network
from ld3m_fast.train_net import WeightEMA, dc_lr_factor, glad_lr_factor, test_accuracy, train_network


def separable(n, num_classes=4, size=32, seed=0):
    """Noisy images whose class shows both as a colour and as a layout (top, bottom, horizontal or vertical
    stripes): easy to learn for every architecture, including those whose instance norm removes colour offsets."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = 0.3 * torch.rand(n, 3, size, size, generator=g)
    r = torch.arange(size)
    rows, cols = r.view(-1, 1).expand(size, size), r.view(1, -1).expand(size, size)
    layouts = torch.stack([rows < size // 2, rows >= size // 2, (rows // 4) % 2 == 0, (cols // 4) % 2 == 0]).float()
    colours = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    x += 0.35 * layouts[y].unsqueeze(1) + 0.35 * colours[y].view(n, 3, 1, 1)
    return x.clamp(0, 1), y


@pytest.mark.parametrize("epochs", [1, 2, 7, 10, 101])
def test_glad_schedule_matches_the_torch_schedulers_of_the_glad_code(epochs):
    """Reference: LinearLR(1e-7 -> 1, E//2) stepped per epoch up to E//2, then CosineAnnealingLR(T=E//2)."""
    half = epochs // 2
    if half == 0:
        assert glad_lr_factor(0, epochs) == 1.0
        return
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    sched1 = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-7, end_factor=1.0, total_iters=half)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=half)
    sched = sched1
    opt.step()  # (silences the scheduler-order warning; the parameter has no gradient)
    for ep in range(epochs):
        assert math.isclose(opt.param_groups[0]["lr"], glad_lr_factor(ep, epochs), rel_tol=1e-6, abs_tol=1e-12)
        sched.step()
        if ep == half:
            sched = sched2


def test_dc_schedule():
    assert [dc_lr_factor(e, 10) for e in range(10)] == [1.0] * 6 + [0.1] * 4


def test_weight_ema_averages_then_decays():
    net = nn.Linear(1, 1, bias=False)
    ema = WeightEMA(net, beta=0.995)
    values = torch.randn(50).tolist()
    for k, v in enumerate(values):
        net.weight.data.fill_(v)
        ema.update(net)
        # decay min(0.995, k/(k+1)): a plain running mean while k/(k+1) < 0.995
        assert math.isclose(float(ema.model.weight), float(np.mean(values[:k + 1])), rel_tol=1e-5, abs_tol=1e-6)
    fast = WeightEMA(net, beta=0.5)
    expected = None
    for k, v in enumerate(values[:10]):
        net.weight.data.fill_(v)
        fast.update(net)
        d = min(0.5, k / (k + 1))
        expected = v if expected is None else d * expected + (1 - d) * v
        assert math.isclose(float(fast.model.weight), expected, rel_tol=1e-5, abs_tol=1e-6)
    assert not fast.model.weight.requires_grad


def test_train_network_learns_and_is_deterministic():
    x, y = separable(24)
    state = torch.get_rng_state()
    seen = []
    nets = [train_network(get_network("ConvNet", 3, 4, 32, width=16, seed=1), x, y, epochs=12, lr=0.01,
                          batch_size=8, seed=5, device="cpu", on_epoch_end=lambda e, n: seen.append(e))
            for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert seen == list(range(12)) * 2
    a, b = nets[0].state_dict(), nets[1].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    xt, yt = separable(200, seed=1)
    assert test_accuracy(nets[0], xt, yt, device="cpu") > 0.9


def test_normalisation_comes_before_dsa():
    """Training on [0, 1] images with normalize=(m, s) is training on pre-normalised images without it."""
    x, y = separable(16)
    mean, std = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    a = train_network(get_network("ConvNet", 3, 4, 32, width=8, seed=0), x, y, epochs=3, lr=0.01,
                      normalize=(mean, std), device="cpu", schedule="dc")
    b = train_network(get_network("ConvNet", 3, 4, 32, width=8, seed=0), xn, y, epochs=3, lr=0.01,
                      device="cpu", schedule="dc")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-5) for k in sa)


def test_schedules_return_ema_copy_or_the_net():
    x, y = separable(8)
    net = get_network("ConvNet", 3, 4, 32, width=8, seed=0)
    ema_model = train_network(net, x, y, epochs=2, lr=0.01, device="cpu")
    assert ema_model is not net and not ema_model.training
    assert train_network(net, x, y, epochs=2, lr=0.01, schedule="dc", device="cpu") is net
    assert train_network(net, x, y, epochs=2, lr=0.01, ema_decay=None, device="cpu") is net


def test_train_network_rejects_bad_input():
    x, y = separable(8)
    net = get_network("ConvNet", 3, 4, 32, width=8, seed=0)
    with pytest.raises(ValueError, match="schedule"):
        train_network(net, x, y, epochs=1, lr=0.01, schedule="step")
    with pytest.raises(ValueError, match="epochs"):
        train_network(net, x, y, epochs=0, lr=0.01)
    with pytest.raises(ValueError, match="labels"):
        train_network(net, x, y[:-1], epochs=1, lr=0.01)
    with pytest.raises(TypeError, match="integer"):
        train_network(net, x, y.float(), epochs=1, lr=0.01)
    with pytest.raises(ValueError, match="NaN"):
        train_network(net, x.clone().fill_(float("nan")), y, epochs=1, lr=0.01)
    with pytest.raises(ValueError, match="normalize"):
        train_network(net, x, y, epochs=1, lr=0.01, normalize=([0.5, 0.5], [0.5, 0.5]))


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


@pytest.mark.parametrize("schedule", ["dc", "constant"])
def test_training_loop_matches_a_plain_sgd_loop(schedule):
    """Without DSA, train_network is: per epoch a seeded permutation, batches in order, SGD with the epoch's lr."""
    x, y = separable(10)
    mean, std = [0.4, 0.5, 0.3], [0.2, 0.3, 0.25]
    epochs, lr, batch = 4, 0.05, 4
    ours = train_network(get_network("ConvNet", 3, 4, 32, width=8, seed=2), x, y, epochs=epochs, lr=lr,
                         batch_size=batch, schedule=schedule, dsa=False, normalize=(mean, std), device="cpu", seed=7)
    ref = get_network("ConvNet", 3, 4, 32, width=8, seed=2)
    opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(7)
    for epoch in range(epochs):
        opt.param_groups[0]["lr"] = lr * (0.1 if schedule == "dc" and epoch > epochs // 2 else 1.0)
        order = torch.randperm(len(y), generator=g)
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            loss = torch.nn.functional.cross_entropy(ref(xn[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    a, b = ours.state_dict(), ref.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_num_classes_from_the_distilled_object():
    (xs, ys), (xt, yt) = separable(8), separable(12, seed=1)
    distilled = _Set(xs, ys)
    distilled.num_classes = 5
    with pytest.raises(ValueError, match=r"classes \[4\] have no distilled images"):
        evaluate(distilled, (xt, yt), archs=("ConvNet",), repeats=1, epochs=1, device="cpu", progress=False)
