"""Shared test set-up: Triton runs in its interpreter on CPU-only machines, helpers for relative errors."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton is imported

import pytest  # noqa: E402


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ computed in float64."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return float((out - ref).norm() / ref.norm())


@pytest.fixture
def poisoned_memory():
    """Fill every uninitialised tensor with NaN, so an output element a kernel forgets to write shows up."""
    import torch.utils.deterministic as det
    prev_alg, prev_fill = torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(prev_alg)
    det.fill_uninitialized_memory = prev_fill
