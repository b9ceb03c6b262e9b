"""Checkpoints: a killed run resumes bit-identically, Ctrl-C saves, other settings are refused."""
import pytest
import torch

from ld3m_fast.distillation import distill
from tests.helpers.toy import CLASSES, SMALL


class Stop(BaseException):
    """Stands for the process being killed (not caught by distill's Ctrl-C handler)."""



@pytest.mark.parametrize("algorithm, space", [("dm", "latent"), ("dc", "pixel"), ("mtt", "latent")])
def test_resume_after_a_kill_is_bit_identical(data, model, experts, tmp_path, monkeypatch, algorithm, space):
    m = model if space == "latent" else None
    kw = dict(SMALL, algorithm=algorithm, ipc=1, iterations=5, checkpoint_every=2, seed=2)
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



def test_ctrl_c_saves_the_last_completed_iteration(data, tmp_path, monkeypatch):
    from ld3m_fast.distillation import run as run_module
    from ld3m_fast.distillation.checkpoint import load_checkpoint
    original = run_module.prepare

    def interrupted(*args, **kwargs):
        prepared = original(*args, **kwargs)
        step = prepared.algorithm.iteration
        prepared.algorithm.iteration = lambda it: (_ for _ in ()).throw(KeyboardInterrupt()) if it == 3 else step(it)
        return prepared

    monkeypatch.setattr(run_module, "prepare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(data, None, ipc=1, iterations=10, checkpoint_every=100, checkpoint_dir=tmp_path, **SMALL)
    completed, tensors, config, history = load_checkpoint(tmp_path)
    assert completed == 3 and len(history) == 3 and "X" in tensors and config["iterations"] == 10



def test_a_checkpoint_of_other_settings_is_not_resumed(data, tmp_path):
    distill(data, None, ipc=1, iterations=1, checkpoint_dir=tmp_path, **SMALL)
    with pytest.raises(ValueError, match="other settings.*ipc"):
        distill(data, None, ipc=2, iterations=1, checkpoint_dir=tmp_path, **SMALL)
    fresh = distill(data, None, ipc=2, iterations=1, checkpoint_dir=tmp_path, resume=False, **SMALL)
    assert fresh.images.shape[0] == 2 * CLASSES

