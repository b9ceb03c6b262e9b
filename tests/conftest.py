"""Shared test set-up: Triton runs in its interpreter on CPU-only machines; the poisoned-memory fixture."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first imported (and decorated)

import pytest  # noqa: E402

from tests.helpers.numerics import poisoned  # noqa: E402


@pytest.fixture
def poisoned_memory():
    """Fill every uninitialised tensor with NaN, so an output element a kernel forgets to write shows up."""
    with poisoned():
        yield
