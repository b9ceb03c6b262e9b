"""Shared test set-up: Triton runs in its interpreter on CPU-only machines, TF32 is off on GPUs; poisoned memory."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first imported (and decorated)
# fp32 parity is compared against fp32 tolerances: no TF32 matmuls or convolutions on GPUs
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

import pytest  # noqa: E402

from tests.helpers.numerics import poisoned  # noqa: E402


@pytest.fixture
def poisoned_memory():
    """Fill every uninitialised tensor with NaN, so an output element a kernel forgets to write shows up."""
    with poisoned():
        yield
