"""Saving and loading LDMs: own format, diffusers folders, CompVis checkpoints, and bad input."""
import json
import os
import sys
import types
import warnings

import pytest
import torch

from tests.helpers.numerics import rel_err
from ld3m_fast.models import build_ldm, load_ldm, save_ldm
from ld3m_fast.models.compvis import state_dict_to_compvis


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_ldm("tiny").requires_grad_(False).eval()


def test_own_format_round_trip_is_exact(tiny, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_ldm(tiny, path)
    back = load_ldm(path)
    assert back.config == tiny.config and same_weights(back, tiny)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["config"])["name"] == "tiny"
    assert load_ldm(path, dtype=torch.float64).cond_stage_model.embedding.weight.dtype == torch.float64


def test_diffusers_folder_round_trip_and_diffusers_reads_it(tiny, tmp_path):
    folder = tmp_path / "tiny-diffusers"
    save_ldm(tiny, folder, format="diffusers")
    assert sorted(os.listdir(folder)) == ["class_embedder", "model_index.json", "scheduler", "unet", "vqvae"]
    back = load_ldm(str(folder))
    assert back.config == tiny.config and same_weights(back, tiny)
    from diffusers import DDIMScheduler, UNet2DConditionModel, VQModel
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False).eval()
    vq = VQModel.from_pretrained(folder / "vqvae", low_cpu_mem_usage=False).eval()
    sched = DDIMScheduler.from_pretrained(folder / "scheduler")
    assert rel_err(sched.alphas_cumprod, tiny.alphas_cumprod) < 1e-6
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 8, 8, generator=gen), torch.tensor([3, 800])
    c = tiny.get_learned_conditioning(torch.tensor([1, 10]))
    with torch.no_grad():
        assert rel_err(unet(x, t, encoder_hidden_states=c).sample, tiny.apply_model(x, t, c)) < 1e-6
        assert rel_err(vq.decode(x, force_not_quantize=True).sample,
                       tiny.first_stage_model.decode(x, force_not_quantize=True)) < 1e-6


def test_compvis_layout_round_trip(tiny, tmp_path):
    path = tmp_path / "model.ckpt"
    save_ldm(tiny, path, format="compvis")
    assert same_weights(load_ldm("tiny", checkpoint=path), tiny)
    sd = torch.load(path, weights_only=True)["state_dict"]
    assert "model.diffusion_model.input_blocks.0.0.weight" in sd and "cond_stage_model.embedding.weight" in sd


def test_compvis_layout_safetensors_and_a_bare_path(tiny, tmp_path):
    """A CompVis-layout safetensors file loads too; a bare checkpoint path is read as cin256-v2 (and says so)."""
    from ld3m_fast.models.files import write_safetensors
    path = tmp_path / "compvis.safetensors"
    write_safetensors(state_dict_to_compvis(tiny), path, {})
    assert same_weights(load_ldm("tiny", checkpoint=path), tiny)
    with pytest.raises(ValueError, match="does not match the 'cin256-v2' architecture"):
        load_ldm(path)


def test_lightning_checkpoint_with_foreign_pickled_objects_loads_weights_only(tiny, tmp_path):
    """Objects of classes we never import (a Lightning callback) become inert placeholders; one warning line."""
    fake = types.ModuleType("fake_lightning_callbacks")

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path = "x"
    ModelCheckpoint.__module__ = "fake_lightning_callbacks"
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    fake.ModelCheckpoint = ModelCheckpoint
    sys.modules["fake_lightning_callbacks"] = fake
    path = tmp_path / "lightning.ckpt"
    try:
        torch.save({"state_dict": state_dict_to_compvis(tiny), "callbacks": {"cb": ModelCheckpoint()},
                    "epoch": 1}, path)
    finally:
        del sys.modules["fake_lightning_callbacks"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_ldm("tiny", checkpoint=path)
    assert same_weights(model, tiny)
    msgs = [str(w.message) for w in caught if "placeholders" in str(w.message)]
    assert len(msgs) == 1 and "fake_lightning_callbacks.ModelCheckpoint" in msgs[0]


def test_wrong_architecture_names_it_and_lists_keys(tiny, tmp_path):
    path = tmp_path / "tiny.ckpt"
    save_ldm(tiny, path, format="compvis")
    with pytest.raises(ValueError) as err:
        load_ldm("small", checkpoint=path)
    msg = str(err.value)
    assert "does not match the 'small' architecture" in msg and "UNet model_channels=16" in msg
    assert "missing keys:" in msg and "unexpected keys:" in msg and "wrong shape" in msg


def test_stable_diffusion_like_checkpoint_is_recognised(tmp_path):
    sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
          "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768),
          "first_stage_model.encoder.down.3.block.0.conv1.weight": torch.zeros(1),
          "first_stage_model.quant_conv.weight": torch.zeros(8, 8, 1, 1),
          "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77)}
    path = tmp_path / "sd.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ValueError) as err:
        load_ldm("cin256-v2", checkpoint=path)
    msg = str(err.value)
    assert "model_channels=320, in_channels=4" in msg and "context_dim=768" in msg
    assert "KL autoencoder" in msg and "Stable Diffusion" in msg


def test_truncated_corrupt_and_empty_files_fail_naming_the_file(tiny, tmp_path):
    good = tmp_path / "good.ckpt"
    save_ldm(tiny, good, format="compvis")
    data = good.read_bytes()
    cases = {"truncated.ckpt": data[: len(data) // 2], "garbage.ckpt": os.urandom(4096), "empty.ckpt": b""}
    own = tmp_path / "own.safetensors"
    save_ldm(tiny, own)
    raw = own.read_bytes()
    cases["truncated.safetensors"] = raw[: len(raw) - 1000]
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ValueError, match=name):
            load_ldm("tiny", checkpoint=p)
    with pytest.raises(ValueError, match="truncated.safetensors"):
        load_ldm(tmp_path / "truncated.safetensors")


def test_not_a_state_dict(tmp_path):
    p = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], p)
    with pytest.raises(ValueError, match="not a state dict"):
        load_ldm("tiny", checkpoint=p)
    p2 = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(2), "fc.bias": torch.zeros(2)}, p2)
    with pytest.raises(ValueError, match="not a CompVis LatentDiffusion"):
        load_ldm("tiny", checkpoint=p2)


def test_bad_names_paths_dtypes_devices(tmp_path):
    with pytest.raises(ValueError, match="unknown model name 'cin512'"):
        load_ldm("cin512")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_ldm("CompVis/ldm-celebahq-256")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ldm("tiny", checkpoint=tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="dtype"):
        load_ldm("tiny", dtype=torch.int64)
    with pytest.raises(ValueError, match="device"):
        load_ldm("tiny", device="not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            load_ldm("tiny", device="cuda")
    with pytest.raises(ValueError, match="checkpoint= goes with"):
        load_ldm(str(tmp_path), checkpoint="x.ckpt")
    with pytest.raises(TypeError):
        load_ldm(3)
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="unet"):
        load_ldm(tmp_path / "half")
