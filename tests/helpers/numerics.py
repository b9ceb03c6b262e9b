"""Numerical helpers of the tests: relative errors against float64 references, poisoned memory."""
from __future__ import annotations

import contextlib

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ computed in float64."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return float((out - ref).norm() / ref.norm())


@contextlib.contextmanager
def poisoned():
    """Fill every uninitialised tensor with NaN, so an output element a kernel forgets to write shows up."""
    import torch.utils.deterministic as det
    prev_alg, prev_fill = torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_alg)
        det.fill_uninitialized_memory = prev_fill
