"""MTT's expert buffer: trajectories recorded every epoch, resumed, refused for another network."""
import pytest
import torch

from ld3m_fast.distillation import distill, train_experts
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

