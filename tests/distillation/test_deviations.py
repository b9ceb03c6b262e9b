"""Deliberate deviations from the official LD3M code behave as docs/design.md §11 says."""
import torch

from ld3m_fast.distillation.config import PRESETS
from ld3m_fast.distillation.run import prepare
from tests.helpers.numerics import rel_err
from tests.helpers.toy import SMALL


def official_half_gradient(mtt, images, student):
    """The official LD3M script's image gradient, written out: per student step it takes
    ``grad((lr (target − start) + lr² Σg) · g_i / ‖start − target‖², x)`` — the tuple ``2 * grad(...)`` repeats is
    never doubled, and its first element is used: half of ∂L/∂x. The step replays its stored augmentation graph."""
    s = student
    param_dist = torch.nn.functional.mse_loss(s.start, s.target, reduction="sum")
    out = torch.zeros_like(images)
    for w, idx, seed in s.steps:
        x = images[idx].detach().requires_grad_(True)
        w = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(mtt.step_loss(x, s.labels[idx], w, seed), w, create_graph=True)
        single = s.lr * (s.target - s.start)
        square = s.lr ** 2 * s.grad_sum
        gradients = 2 * torch.autograd.grad((single + square) @ g / param_dist, x)  # a 2-tuple, as in the script
        out[idx] += gradients[0]
    return out


def test_mtt_image_gradient_is_twice_the_official_scripts_and_the_preset_halves_the_lr(data, experts):
    run = prepare(data, None, ipc=2, algorithm="mtt", experts=experts, expert_epochs=1, max_start_epoch=2, syn_steps=3,
                  seed=1, batch_real=8, net_width=16, batch_syn=3)
    images = run.synthetic.images().detach()
    mtt = run.algorithm
    _, ours, _ = mtt.loss_and_gradients(images, 0)
    official = official_half_gradient(mtt, images, mtt.student(images, 0))
    assert official.abs().max() > 0
    assert rel_err(ours, 2 * official) < 1e-5
    # one SGD step: lr 500 on the true gradient is the official lr 1000 on its half gradient
    assert PRESETS[("ld3m", "mtt")]["lr"] == 500.0
    assert rel_err(images - 500.0 * ours, images - 1000.0 * official) < 1e-6


def test_mtt_student_steps_and_dc_inner_training_augment_each_image_and_replay_it(data, experts, monkeypatch):
    from ld3m_fast.distillation import common
    calls = []
    original = common.maybe_dsa

    def recording(cfg, x, seed, per_image=False):
        calls.append(per_image)
        return original(cfg, x, seed, per_image)

    run = prepare(data, None, ipc=2, algorithm="mtt", experts=experts, expert_epochs=1, max_start_epoch=2, syn_steps=2,
                  **{k: v for k, v in SMALL.items() if k != "progress"})
    same = run.synthetic.images().detach()[:1].expand(6, -1, -1, -1)
    a = original(run.cfg, same, seed=7, per_image=True)
    assert not torch.equal(a[0], a[1]) or not torch.equal(a[1], a[2])  # images draw their own parameters
    assert torch.equal(a, original(run.cfg, same, seed=7, per_image=True))  # and the seed replays them
    for module in ("mtt", "dc"):
        monkeypatch.setattr(f"ld3m_fast.distillation.{module}.maybe_dsa", recording)
    run.algorithm.iteration(0)
    assert calls and all(calls)  # MTT: every student-step augmentation is per image
    calls.clear()
    dc = prepare(data, None, ipc=2, algorithm="dc", outer_loop=2, inner_loop=1, **{k: v for k, v in SMALL.items()
                                                                                     if k != "progress"})
    dc.algorithm.iteration(0)
    # DC: the matching loss shares one draw per class (real and synthetic alike); the inner training draws per image
    assert False in calls and True in calls
