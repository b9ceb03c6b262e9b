"""DistilledSet: saved and loaded exactly; evaluated with its own normalisation."""
import pytest
import torch

from ld3m_fast.distillation import DistilledSet, distill
from tests.helpers.compvis_style import CompVisStyleLDM
from tests.helpers.toy import CLASSES, SIZE, small, toy_data


def test_result_round_trips_exactly(data, model, tmp_path):
    result = distill(data, model, ipc=2, iterations=2, **small(model))
    assert result.images.shape == (CLASSES * 2, 3, SIZE, SIZE) and result.space == "latent"
    assert result.Z.shape == (CLASSES * 2, 3, SIZE // 4, SIZE // 4) and result.c.shape[0] == CLASSES * 2
    assert len(result.losses) == 2 and result.config["algorithm"] == "dm" and result.config["steps"] == 4
    result.save(tmp_path / "set")
    assert (tmp_path / "set" / "class_000.png").is_file() and (tmp_path / "set" / "all.png").is_file()
    loaded = DistilledSet.load(tmp_path / "set")
    for name in ("images", "labels", "Z", "c"):
        assert torch.equal(getattr(loaded, name), getattr(result, name)), name
    assert loaded.config == result.config and loaded.history == result.history
    assert loaded.mean == result.mean and loaded.class_names == result.class_names


def test_evaluate_trains_on_a_distilled_set_with_its_own_normalisation(data):
    from ld3m_fast.evaluation import evaluate
    result = distill(data, CompVisStyleLDM(seed=3), ipc=1, iterations=1, **small(1))
    table = evaluate(result, toy_data(seed=1, per_class=3), archs=("ConvNet",), repeats=1, epochs=1, progress=False,
                     net_kwargs={"width": 16})
    mean, std = table.settings["train_normalize"]
    assert mean == pytest.approx(list(result.mean)) and std == pytest.approx(list(result.std))
    assert table.settings["train_normalize"] != table.settings["normalize"]

