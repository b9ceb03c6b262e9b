"""MTT's expert buffer: trajectories recorded every epoch, resumed, never mixed, refused for another network."""
import pytest
import torch

from ld3m_fast.distillation import ExpertBuffer, distill, train_experts
from ld3m_fast.errors import DamagedFileError, IncompatibleRunError
from tests.helpers.toy import SMALL, toy_data


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


def test_a_folder_of_another_training_is_refused_never_mixed(data, tmp_path):
    kw = dict(num_experts=1, width=16, batch_size=16, seed=0, progress=False)
    train_experts(data, tmp_path, epochs=2, **kw)
    before = (tmp_path / "expert_0000.safetensors").read_bytes()
    for change, match in ((dict(epochs=1), "epochs: buffer 2 vs now 1"), (dict(epochs=2, lr=0.1), "lr: buffer"),
                          (dict(epochs=2, seed=1), "seed: buffer 0 vs now 1")):
        with pytest.raises(IncompatibleRunError, match=f"other settings.*{match}.*never mixes"):
            train_experts(data, tmp_path, **dict(kw, **change))
    images, labels = data
    with pytest.raises(IncompatibleRunError, match="data: buffer"):
        train_experts((images.flip(-1), labels), tmp_path, epochs=2, **kw)
    assert (tmp_path / "expert_0000.safetensors").read_bytes() == before  # untouched


def test_a_resume_with_another_expert_buffer_is_refused(data, experts, tmp_path):
    kw = dict(SMALL, algorithm="mtt", ipc=1, iterations=1, expert_epochs=1, max_start_epoch=2, syn_steps=2,
              checkpoint_dir=tmp_path / "ck")
    distill(data, None, experts=experts, **kw)
    other = train_experts(data, tmp_path / "other", num_experts=2, epochs=3, width=16, batch_size=16, seed=5,
                          progress=False)
    with pytest.raises(IncompatibleRunError, match="the expert buffer"):
        distill(data, None, experts=other, **dict(kw, iterations=2))


def test_damaged_expert_files_name_the_file(data, tmp_path):
    from safetensors.torch import load_file, save_file
    train_experts(data, tmp_path, num_experts=1, epochs=2, width=16, batch_size=16, progress=False)
    path = tmp_path / "expert_0000.safetensors"
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    trajectory = load_file(str(path))["trajectory"]
    save_file({"trajectory": trajectory[:2]}, str(path), metadata=meta)  # tampered: an epoch missing
    with pytest.raises(DamagedFileError, match="expert_0000.safetensors.*shape"):
        ExpertBuffer(tmp_path)
    save_file({"trajectory": trajectory}, str(path), metadata=dict(meta, epochs="two"))
    with pytest.raises(DamagedFileError, match="expert_0000.safetensors.*damaged metadata"):
        ExpertBuffer(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DamagedFileError, match="expert_0000.safetensors"):
        ExpertBuffer(tmp_path)
