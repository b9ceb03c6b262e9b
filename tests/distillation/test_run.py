"""distill's settings, checks and loop: bad input, periodic evaluation, divergence."""
import pytest
import torch

from ld3m_fast.distillation import distill
from ld3m_fast.distillation.real_data import as_real_data
from tests.helpers.toy import SMALL, small, toy_data


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ipc=13), ValueError, "ipc=13 is larger than class 0"),
    (dict(algorithm="kip"), ValueError, "algorithm='kip' is unknown"),
    (dict(net="LeNet"), ValueError, "unknown network 'LeNet'"),
    (dict(preset="dd"), ValueError, "preset='dd'"),
    (dict(lr=-1.0), ValueError, "lr=-1.0"),
    (dict(steps=0), ValueError, "steps=0"),
    (dict(bogus=1), ValueError, r"unknown settings \[.bogus.\]"),
    (dict(algorithm="mtt"), ValueError, "needs expert trajectories"),
])
def test_bad_settings(data, model, kwargs, error, match):
    kw = dict(SMALL, ipc=1, iterations=1)
    kw.update(kwargs)
    with pytest.raises(error, match=match):
        distill(data, model, **kw)


def test_bad_labels(data):
    images, labels = data
    with pytest.raises(ValueError, match="classes \\[1\\] have no images"):
        distill((images, torch.where(labels == 1, 2, labels)), None, **SMALL)
    with pytest.raises(ValueError, match="labels must lie in 0..2, got 0..3"):
        as_real_data((images, labels), num_classes=3)
    with pytest.raises(ValueError, match="negative class indices"):
        as_real_data((images, torch.where(labels == 0, -1, labels)), num_classes=4)


def test_image_size_must_fit_the_autoencoder(model):
    images, labels = toy_data(size=18)
    with pytest.raises(ValueError, match="not divisible by the autoencoder's factor"):
        distill((images, labels), model, **small(model))


def test_ldm_must_know_every_class(model):
    images, labels = toy_data(classes=12, per_class=2)
    with pytest.raises(ValueError, match=r"knows classes 0..9.*not \[10, 11\]"):
        distill((images, labels), model, **small(model))


def test_eval_every_records_a_table(data):
    test = toy_data(seed=1, per_class=5)
    result = distill(data, None, ipc=1, iterations=2, eval_every=2, eval_epochs=2, eval_archs=("ConvNet",),
                     test=test, **SMALL)
    evals = [h for h in result.history if "eval" in h]
    assert len(evals) == 1 and evals[0]["iteration"] == 1
    assert 0.0 <= evals[0]["eval"]["rows"][0]["mean"] <= 1.0


def test_nan_loss_stops_and_keeps_the_last_good_state(data, tmp_path, monkeypatch):
    from ld3m_fast.distillation import dm
    from ld3m_fast.errors import DistillationDiverged
    original = dm.dm_loss
    monkeypatch.setattr(dm, "dm_loss", lambda run, images, it, net=None: original(run, images, it, net)
                        * (float("nan") if it == 2 else 1))
    with pytest.raises(DistillationDiverged, match="iteration 2") as info:
        distill(data, None, ipc=1, iterations=5, checkpoint_dir=tmp_path, **SMALL)
    monkeypatch.setattr(dm, "dm_loss", original)
    good = distill(data, None, ipc=1, iterations=2, **SMALL)
    assert info.value.iteration == 2 and torch.equal(info.value.last_good.images, good.images)
    assert info.value.last_good.history == good.history

