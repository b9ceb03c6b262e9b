"""Fixtures of the distillation tests: toy data, a CompVis-style LDM, a small expert buffer."""
import pytest

from ld3m_fast.distillation import train_experts
from tests.helpers.compvis_style import CompVisStyleLDM
from tests.helpers.toy import toy_data


@pytest.fixture(scope="module")
def data():
    return toy_data()


@pytest.fixture(scope="module")
def model():
    return CompVisStyleLDM(seed=3)


@pytest.fixture(scope="module")
def experts(data, tmp_path_factory):
    return train_experts(data, tmp_path_factory.mktemp("experts"), num_experts=2, epochs=3, width=16, batch_size=16,
                         seed=0, progress=False)
