"""train_prior: trains, saves a model load_ldm reads, resumes exactly; sampling and reconstruction metrics."""
import pytest
import torch

from ld3m_fast.data import ImageDataset
from ld3m_fast.models import load_ldm
from ld3m_fast.models.prior import reconstruction_error, sample_prior, train_prior


@pytest.fixture(scope="module")
def toy():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(8)
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    pattern = torch.stack([(xx < 8), (yy < 8), ((xx + yy) % 4 < 2)]).float()
    images = 200 * pattern[labels][:, None] + 40 * torch.rand(24, 1, 16, 16, generator=gen)
    return ImageDataset(images.clamp(0, 255).to(torch.uint8), labels, ["a", "b", "c"], name="toy")


KW = dict(config="tiny", vq_epochs=2, unet_epochs=2, batch_size=8, progress=False)


def test_trains_saves_and_loads(toy, tmp_path):
    model = train_prior(toy, tmp_path / "prior.safetensors", seed=1, **KW)
    history = model.training_history
    assert [h["stage"] for h in history] == ["vq", "vq", "rescale", "unet", "unet"]
    assert history[1]["loss"] < history[0]["loss"]  # the autoencoder learns
    assert all(torch.isfinite(torch.tensor(h.get("loss", 0.0))) for h in history)
    loaded = load_ldm(tmp_path / "prior.safetensors")
    assert loaded.config.image_channels == 1 and loaded.config.image_size == 16 and loaded.config.n_classes == 3
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    # latent space rescaled to unit std (within the spread of a small sample)
    z = loaded.first_stage_model.encode(toy.images.float() / 127.5 - 1)
    assert 0.5 < float(z.std()) < 2.0


def test_resume_after_a_kill_gives_the_same_model(toy, tmp_path, monkeypatch):
    reference = train_prior(toy, tmp_path / "a.safetensors", seed=2, **KW)
    from torch.optim.swa_utils import AveragedModel

    calls = {"n": 0}
    original = AveragedModel.update_parameters

    def dies_in_the_second_unet_epoch(self, model):
        calls["n"] += 1
        if calls["n"] == 5:  # the copy at the start, then 3 batches per epoch: the first of epoch 2
            raise SystemExit("killed")
        return original(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", dies_in_the_second_unet_epoch)
    with pytest.raises(SystemExit):
        train_prior(toy, tmp_path / "b.safetensors", seed=2, checkpoint_dir=tmp_path / "ck", **KW)
    monkeypatch.setattr(AveragedModel, "update_parameters", original)
    resumed = train_prior(toy, tmp_path / "b.safetensors", seed=2, checkpoint_dir=tmp_path / "ck", **KW)
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.training_history == reference.training_history


def test_samples_and_reconstruction_metrics(toy, tmp_path):
    model = train_prior(toy, tmp_path / "p.safetensors", seed=3, **KW)
    x = sample_prior(model, torch.tensor([0, 1, 2, 2]), steps=5, seed=0)
    assert x.shape == (4, 1, 16, 16) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, sample_prior(model, torch.tensor([0, 1, 2, 2]), steps=5, seed=0))
    err = reconstruction_error(model, toy.images)
    assert 0 < err["mse"] < 1 and err["psnr_db"] > 0


def test_bad_settings(toy, tmp_path):
    with pytest.raises(ValueError, match="vq_epochs=0"):
        train_prior(toy, tmp_path / "x.safetensors", **dict(KW, vq_epochs=0))
    with pytest.raises(ValueError, match="class_dropout"):
        train_prior(toy, tmp_path / "x.safetensors", class_dropout=1.5, **KW)
    with pytest.raises(TypeError, match="ImageDataset"):
        train_prior((toy.images, toy.labels), tmp_path / "x.safetensors", **KW)
