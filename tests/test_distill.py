"""ld3m_fast.distill on small data: every algorithm in both spaces learns, results round-trip, runs resume exactly."""
import pytest
import torch

from ld3m_fast.distill import DistilledSet, distill, train_experts
from ld3m_fast.distill.real_data import as_real_data
from ld3m_fast.distill.run import prepare
from ld3m_fast.tiny import TinyLDM

CLASSES, PER_CLASS, SIZE = 4, 12, 16
KNOBS = dict(batch_real=8, net_width=16, steps=4)  # small and fast
SMALL = dict(KNOBS, progress=False)


def toy_data(seed=0, classes=CLASSES, per_class=PER_CLASS, size=SIZE):
    """Class k: a colour and a stripe orientation of its own, plus noise (easy to tell apart)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    colours = torch.rand(classes, 3, 1, 1, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    stripes = torch.stack([((xx + k * yy) // 3 % 2).float() for k in range(classes)])[:, None]
    images = 0.6 * colours[labels] + 0.3 * stripes[labels] + 0.1 * torch.rand(len(labels), 3, size, size, generator=gen)
    return images.clamp(0, 1), labels


@pytest.fixture(scope="module")
def data():
    return toy_data()


@pytest.fixture(scope="module")
def model():
    return TinyLDM(seed=3)


@pytest.fixture(scope="module")
def experts(data, tmp_path_factory):
    return train_experts(data, tmp_path_factory.mktemp("experts"), num_experts=2, epochs=3, width=16, batch_size=16,
                         seed=0, progress=False)


def probe_loss(run, its=(1000, 1001, 1002)) -> float:
    """The algorithm's loss of the current synthetic set at fixed, unused iterations (same nets, batches, noise)."""
    with torch.no_grad():
        images = run.ctx.synthetic.images("probe").detach()
    return sum(float(run.algorithm.loss(images.clone().requires_grad_(True), it).detach()) for it in its) / len(its)


@pytest.mark.parametrize("algorithm", ["dm", "dc", "mtt"])
@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_each_algorithm_lowers_its_loss_and_moves_the_set(data, model, experts, algorithm, space):
    m = model if space == "latent" else None
    extra = dict(experts=experts, expert_epochs=1, max_start_epoch=2, syn_steps=4) if algorithm == "mtt" else {}
    lr = {"dm": 2.0, "dc": 1.0, "mtt": 30.0}[algorithm]
    run = prepare(data, m, ipc=1, algorithm=algorithm, seed=5, lr=lr, init="noise", **KNOBS, **extra)
    before_params = [p.detach().clone() for p in run.ctx.synthetic.parameters()]
    before = probe_loss(run)
    for it in range(12):
        run.algorithm.iteration(it)
    after = probe_loss(run)
    assert after < 0.98 * before, (before, after)
    for old, new in zip(before_params, run.ctx.synthetic.parameters()):
        assert not torch.equal(old, new.detach())  # Z and c (or the pixels) all moved


def test_result_round_trips_exactly(data, model, tmp_path):
    result = distill(data, model, ipc=2, iterations=2, **SMALL)
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


class Stop(BaseException):
    """Stands for the process being killed (not caught by distill's Ctrl-C handler)."""


@pytest.mark.parametrize("algorithm, space", [("dm", "latent"), ("dc", "pixel"), ("mtt", "latent")])
def test_resume_after_a_kill_is_bit_identical(data, model, experts, tmp_path, monkeypatch, algorithm, space):
    m = model if space == "latent" else None
    kw = dict(SMALL, algorithm=algorithm, ipc=1, iterations=5, checkpoint_every=2, seed=2)
    if algorithm == "mtt":
        kw.update(experts=experts, expert_epochs=1, max_start_epoch=2, syn_steps=3)
    reference = distill(data, m, **kw)

    from ld3m_fast.distill import run as run_module
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
    from ld3m_fast.distill import run as run_module
    from ld3m_fast.distill.checkpoint import load_checkpoint
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


def test_nan_loss_stops_and_keeps_the_last_good_state(data, tmp_path, monkeypatch):
    from ld3m_fast.distill import DistillationDiverged, dm
    original = dm.dm_loss
    monkeypatch.setattr(dm, "dm_loss", lambda ctx, images, it: original(ctx, images, it) * (float("nan") if it == 2 else 1))
    with pytest.raises(DistillationDiverged, match="iteration 2") as info:
        distill(data, None, ipc=1, iterations=5, checkpoint_dir=tmp_path, **SMALL)
    monkeypatch.setattr(dm, "dm_loss", original)
    good = distill(data, None, ipc=1, iterations=2, **SMALL)
    assert info.value.iteration == 2 and torch.equal(info.value.last_good.images, good.images)
    assert info.value.last_good.history == good.history


def test_fixed_seed_is_deterministic(data, model):
    a = distill(data, model, ipc=1, iterations=2, seed=4, **SMALL)
    b = distill(data, model, ipc=1, iterations=2, seed=4, **SMALL)
    c = distill(data, model, ipc=1, iterations=2, seed=5, **SMALL)
    assert torch.equal(a.Z, b.Z) and torch.equal(a.images, b.images) and not torch.equal(a.Z, c.Z)


def test_eval_every_records_a_table(data):
    test = toy_data(seed=1, per_class=5)
    result = distill(data, None, ipc=1, iterations=2, eval_every=2, eval_epochs=2, eval_archs=("ConvNet",),
                     test=test, **SMALL)
    evals = [h for h in result.history if "eval" in h]
    assert len(evals) == 1 and evals[0]["iteration"] == 1
    assert 0.0 <= evals[0]["eval"]["rows"][0]["mean"] <= 1.0


def test_evaluate_trains_on_a_distilled_set_with_its_own_normalisation(data):
    from ld3m_fast.evaluate import evaluate
    result = distill(data, TinyLDM(seed=3), ipc=1, iterations=1, **SMALL)
    table = evaluate(result, toy_data(seed=1, per_class=3), archs=("ConvNet",), repeats=1, epochs=1, progress=False,
                     net_kwargs={"width": 16})
    mean, std = table.settings["train_normalize"]
    assert mean == pytest.approx(list(result.mean)) and std == pytest.approx(list(result.std))
    assert table.settings["train_normalize"] != table.settings["normalize"]


def test_latent_init_encodes_real_images_and_embeds_classes(data, model):
    run = prepare(data, model, ipc=1, **KNOBS)
    Z, c = run.ctx.synthetic.Z, run.ctx.synthetic.c
    labels = torch.arange(CLASSES)
    assert torch.equal(c.detach(), model.get_learned_conditioning(labels))
    images, data_labels = data
    first = torch.nonzero(data_labels == 0).flatten()
    norm = (images[first] - torch.tensor(run.ctx.real.mean).view(1, 3, 1, 1)) / torch.tensor(run.ctx.real.std).view(1, 3, 1, 1)
    encoded = model.first_stage_model.encode(norm)
    assert any(torch.allclose(Z[0], e, atol=1e-6) for e in encoded)  # Z_0 is an encoded real image of class 0


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ipc=13), ValueError, "ipc=13 is larger than class 0"),
    (dict(algorithm="kip"), ValueError, "algorithm='kip' is unknown"),
    (dict(net="LeNet"), ValueError, "unknown network 'LeNet'"),
    (dict(preset="dd"), ValueError, "preset='dd'"),
    (dict(lr=-1.0), ValueError, "lr=-1.0"),
    (dict(steps=0), ValueError, "steps=0"),
    (dict(bogus=1), TypeError, r"unknown settings \['bogus'\]"),
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
    with pytest.raises(ValueError, match="labels must lie in 0..3, got -1..3"):
        as_real_data((images, torch.where(labels == 0, -1, labels)), num_classes=4)


def test_image_size_must_fit_the_autoencoder(model):
    images, labels = toy_data(size=18)
    with pytest.raises(ValueError, match="not divisible by the autoencoder's factor"):
        distill((images, labels), model, **SMALL)


def test_ldm_must_know_every_class(model):
    images, labels = toy_data(classes=12, per_class=2)
    with pytest.raises(ValueError, match=r"knows classes 0..9.*not \[10, 11\]"):
        distill((images, labels), model, **SMALL)


def test_mtt_buffer_of_another_network_or_resolution(data, experts, tmp_path):
    with pytest.raises(ValueError, match="another network or data.*width: buffer 16 vs run 32"):
        distill(data, None, algorithm="mtt", experts=experts, **dict(SMALL, net_width=32))
    images, labels = toy_data(size=32)
    with pytest.raises(ValueError, match="resolution: buffer 16 vs run 32"):
        distill((images, labels), None, algorithm="mtt", experts=experts, **SMALL)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        distill(data, None, algorithm="mtt", experts=tmp_path / "none", **SMALL)


def test_experts_resume_and_record_every_epoch(data, experts, tmp_path):
    assert len(experts) == 2 and experts.epochs == 3
    first, last = experts.read(0, [0, 3])
    assert first.shape == last.shape and not torch.equal(first, last)
    again = train_experts(data, experts.path, num_experts=3, epochs=3, width=16, batch_size=16, seed=0, progress=False)
    assert len(again) == 3 and torch.equal(again.read(0, [3])[0], last)  # kept, not retrained


def test_atomic_writes_leave_the_old_file_and_use_the_usual_mode(tmp_path):
    import os

    from ld3m_fast.atomic import write_atomic
    target = tmp_path / "f.txt"
    write_atomic(target, lambda p: open(p, "w").write("one"))
    assert target.read_text() == "one" and (os.stat(target).st_mode & 0o777) == 0o666 & ~_umask()

    def fails(p):
        open(p, "w").write("half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        write_atomic(target, fails)
    assert target.read_text() == "one" and [f.name for f in tmp_path.iterdir()] == ["f.txt"]


def _umask():
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask
