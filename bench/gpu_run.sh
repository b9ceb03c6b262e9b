#!/usr/bin/env bash
# The GPU check of ld3m_fast in one command (bench/gpu_run.py says what each step does):
#   bash bench/gpu_run.sh               on the GPU machine: wheels, build for sm_90, tests, reduced sweep -> $OUT
#   bash bench/gpu_run.sh --dry-run     the same steps on the CPU, tiny, CUDA-only parts skipped (LD3M_FAST_DRY_RUN=1)
# Exit status: 0 all passed, 1 a test or benchmark failed, 2 stopped early (wheels, install, build or backends).
set -u
cd "$(dirname "$0")/.." || exit 2
exec "${PYTHON:-python3}" bench/gpu_run.py "$@"
