"""Training networks on small sets: learning-rate schedules, the EMA, determinism, bad input."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from ld3m_fast.nets import get_network
from ld3m_fast.nets.training import dc_lr_factor, exponential_moving_average, glad_lr_factor, test_accuracy, train_network
from tests.helpers.toy import separable


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



def test_ema_averages_then_decays():
    net = nn.Linear(1, 1, bias=False)
    ema = exponential_moving_average(net, 0.995)
    values = torch.randn(50).tolist()
    for k, v in enumerate(values):
        net.weight.data.fill_(v)
        ema.update_parameters(net)
        # decay min(0.995, k/(k+1)): a plain running mean while k/(k+1) < 0.995
        assert math.isclose(float(ema.module.weight.detach()), float(np.mean(values[:k + 1])), rel_tol=1e-5, abs_tol=1e-6)
    fast = exponential_moving_average(net, 0.5)
    expected = None
    for k, v in enumerate(values[:10]):
        net.weight.data.fill_(v)
        fast.update_parameters(net)
        d = min(0.5, k / (k + 1))
        expected = v if expected is None else d * expected + (1 - d) * v
        assert math.isclose(float(fast.module.weight.detach()), expected, rel_tol=1e-5, abs_tol=1e-6)


def test_ema_equals_a_hand_written_lerp_bit_for_bit():
    """torch's AveragedModel with our averaging function gives exactly the hand-written EMA (parameters and buffers,
    integer buffers copied), with and without the warm-up."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    for warmup in (True, False):
        ema = exponential_moving_average(net, 0.9, warmup=warmup)
        ref = [t.detach().clone() for t in list(net.parameters()) + list(net.buffers())]
        for k in range(20):
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(torch.randn_like(p))
                net[1].running_mean.add_(torch.randn(4))
                net[1].num_batches_tracked += 1
            ema.update_parameters(net)
            decay = min(0.9, k / (k + 1)) if warmup else (0.0 if k == 0 else 0.9)
            for r, t in zip(ref, list(net.parameters()) + list(net.buffers())):
                if r.is_floating_point():
                    r.lerp_(t.detach(), 1.0 - decay)
                else:
                    r.copy_(t)
        got = list(ema.module.parameters()) + list(ema.module.buffers())
        assert all(torch.equal(a, b) for a, b in zip(got, ref))


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

