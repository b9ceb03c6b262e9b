"""Checkpoints: a killed run resumes bit-identically; other settings, models, data or buffers are refused."""
import pytest
import torch

from ld3m_fast.distillation import distill
from ld3m_fast.errors import DamagedFileError, IncompatibleRunError, InvalidArgumentError
from tests.helpers.compvis_style import CompVisStyleLDM
from tests.helpers.toy import CLASSES, SMALL, small


class Stop(BaseException):
    """Stands for the process being killed (not caught by distill's Ctrl-C handler)."""


@pytest.mark.parametrize("algorithm, space", [("dm", "latent"), ("dc", "pixel"), ("mtt", "latent")])
def test_resume_after_a_kill_is_bit_identical(data, model, experts, tmp_path, monkeypatch, algorithm, space):
    m = model if space == "latent" else None
    kw = dict(small(m), algorithm=algorithm, ipc=1, iterations=5, checkpoint_every=2, seed=2)
    if algorithm == "mtt":
        kw.update(experts=experts, expert_epochs=1, max_start_epoch=2, syn_steps=3)
    reference = distill(data, m, **kw)

    from ld3m_fast.distillation import run as run_module
    original = run_module.prepare

    def prepare_then_die_at_3(*args, **kwargs):
        prepared = original(*args, **kwargs)
        step = prepared.algorithm.iteration

        def iteration(it):
            if it == 3:
                raise Stop()
            return step(it)
        prepared.algorithm.iteration = iteration
        return prepared

    monkeypatch.setattr(run_module, "prepare", prepare_then_die_at_3)
    with pytest.raises(Stop):
        distill(data, m, checkpoint_dir=tmp_path, **kw)
    monkeypatch.setattr(run_module, "prepare", original)
    resumed = distill(data, m, checkpoint_dir=tmp_path, **kw)  # continues from the checkpoint after iteration 2
    assert resumed.history == reference.history
    for name in ("images", "Z", "c"):
        a, b = getattr(resumed, name), getattr(reference, name)
        assert (a is None and b is None) or torch.equal(a, b), name


def test_a_checkpoint_of_other_settings_is_not_resumed(data, tmp_path):
    distill(data, None, ipc=1, iterations=1, checkpoint_dir=tmp_path, **SMALL)
    with pytest.raises(ValueError, match="other settings.*ipc"):
        distill(data, None, ipc=2, iterations=1, checkpoint_dir=tmp_path, **SMALL)
    fresh = distill(data, None, ipc=2, iterations=1, checkpoint_dir=tmp_path, resume=False, **SMALL)
    assert fresh.images.shape[0] == 2 * CLASSES


def test_a_checkpoint_of_another_model_or_data_is_refused_unless_forced(data, model, tmp_path):
    kw = dict(small(model), ipc=1, iterations=1, checkpoint_dir=tmp_path)
    distill(data, model, **kw)
    with pytest.raises(IncompatibleRunError, match="other the model's weights"):
        distill(data, CompVisStyleLDM(seed=11), iterations=2, **{k: v for k, v in kw.items() if k != "iterations"})
    images, labels = data
    with pytest.raises(IncompatibleRunError, match="the training data"):
        distill((images.flip(-1), labels), model, **kw)
    forced = distill((images.flip(-1), labels), model, resume="force", **kw)
    assert len(forced.losses) == 1  # continued: the checkpoint had completed the one iteration


def test_damaged_checkpoints_name_the_file(data, tmp_path):
    from safetensors.torch import load_file, save_file

    from ld3m_fast.distillation.checkpoint import FILENAME
    distill(data, None, ipc=1, iterations=1, checkpoint_dir=tmp_path, **SMALL)
    path = tmp_path / FILENAME
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DamagedFileError, match=FILENAME):
        distill(data, None, ipc=1, iterations=2, checkpoint_dir=tmp_path, **SMALL)
    path.write_bytes(good)
    tensors = load_file(str(path))
    tensors["X"] = tensors["X"][:1]  # tampered: fewer images than the run has
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(DamagedFileError, match="does not fit this run"):
        distill(data, None, ipc=1, iterations=2, checkpoint_dir=tmp_path, **SMALL)


def test_an_unwritable_checkpoint_folder_fails_before_any_work(data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(InvalidArgumentError, match="checkpoint_dir=.*is a file"):
        distill(data, None, ipc=1, iterations=1, checkpoint_dir=blocker, **SMALL)

