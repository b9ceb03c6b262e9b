"""Every algorithm, in latent and pixel space, lowers its loss and moves the set; seeds and initialisation."""
import pytest
import torch

from ld3m_fast.distillation import distill
from ld3m_fast.distillation.run import prepare
from tests.helpers.toy import CLASSES, KNOBS, LATENT, small


def probe_loss(run, its=(1000, 1001, 1002)) -> float:
    """The algorithm's loss of the current synthetic set at fixed, unused iterations (same nets, batches, noise)."""
    with torch.no_grad():
        images = run.synthetic.images("probe").detach()
    return sum(float(run.algorithm.loss(images.clone().requires_grad_(True), it).detach()) for it in its) / len(its)


@pytest.mark.parametrize("algorithm", ["dm", "dc", "mtt"])
@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_each_algorithm_lowers_its_loss_and_moves_the_set(data, model, experts, algorithm, space):
    m = model if space == "latent" else None
    extra = dict(experts=experts, expert_epochs=1, max_start_epoch=2, syn_steps=4) if algorithm == "mtt" else {}
    lr = {"dm": 2.0, "dc": 1.0, "mtt": 30.0}[algorithm]
    run = prepare(data, m, ipc=1, algorithm=algorithm, seed=5, lr=lr, init="noise", **KNOBS, **(LATENT if m is not None else {}), **extra)
    before_params = [p.detach().clone() for p in run.synthetic.parameters()]
    before = probe_loss(run)
    for it in range(12):
        run.algorithm.iteration(it)
    after = probe_loss(run)
    assert after < 0.98 * before, (before, after)
    for old, new in zip(before_params, run.synthetic.parameters()):
        assert not torch.equal(old, new.detach())  # Z and c (or the pixels) all moved


def test_fixed_seed_is_deterministic(data, model):
    a = distill(data, model, ipc=1, iterations=2, seed=4, **small(model))
    b = distill(data, model, ipc=1, iterations=2, seed=4, **small(model))
    c = distill(data, model, ipc=1, iterations=2, seed=5, **small(model))
    assert torch.equal(a.Z, b.Z) and torch.equal(a.images, b.images) and not torch.equal(a.Z, c.Z)


def test_latent_init_encodes_real_images_and_embeds_classes(data, model):
    run = prepare(data, model, ipc=1, **KNOBS, **LATENT)
    Z, c = run.synthetic.Z, run.synthetic.c
    labels = torch.arange(CLASSES)
    assert torch.equal(c.detach(), model.get_learned_conditioning(labels))
    images, data_labels = data
    first = torch.nonzero(data_labels == 0).flatten()
    norm = (images[first] - torch.tensor(run.real.mean).view(1, 3, 1, 1)) / torch.tensor(run.real.std).view(1, 3, 1, 1)
    encoded = model.first_stage_model.encode(norm)
    assert any(torch.allclose(Z[0], e, atol=1e-6) for e in encoded)  # Z_0 is an encoded real image of class 0

