"""Benchmark set-up: run with ``pytest bench --benchmark-only`` (see README, 'Benchmarks')."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
