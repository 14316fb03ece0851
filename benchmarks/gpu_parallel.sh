#!/usr/bin/env bash
# The sequence-parallel (DSP) code path on one GPU, prepared for a machine that has one (not
# run in CI): torchrun with 1 rank joins an NCCL group, runs the full-size LatteT2V (28 layer
# pairs, bf16, random weights) on 65x512x512-shaped latents plainly and through DSP (every
# all-to-all still runs, to itself), checks the outputs agree and prints seconds per step of
# both and the peak memory. With N GPUs pass NPROC=N to split the same video over them.
#   bash benchmarks/gpu_parallel.sh            (needs a CUDA GPU and .venv; about 2 minutes)
set -euo pipefail
exec bash "$(dirname "$0")/gpu_torchrun.sh" parallel.py "$@"
