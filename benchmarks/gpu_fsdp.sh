#!/usr/bin/env bash
# A full-size training step on FSDP2, prepared for a machine with a GPU (not run in CI): torchrun
# with 1 rank joins an NCCL group, shards the full-size LatteT2V (28 layer pairs, 1.06B
# parameters) with the trainer's own `parallelize` (bf16 parameters, fp32 gradient reduction,
# activation checkpointing of every block), and trains it on 65x512x512-shaped latents (17
# latent frames, 64x64, 300 caption tokens), one sample per step, with AdamW: first every
# weight, then LoRA adapters of rank 64 on all projections of the frozen model (`osp t2v train
# --lora 64`). Prints seconds per step, peak memory, model FLOPs per step (counted on the meta
# device, without the recomputation) and MFU against the GPU's dense bf16 peak, a row each.
#   bash benchmarks/gpu_fsdp.sh                (needs a CUDA GPU and .venv; a few minutes)
#   NPROC=8 bash benchmarks/gpu_fsdp.sh        (8 GPUs: each rank holds 1/8 of the states)
#   bash benchmarks/gpu_fsdp.sh --compile      (regional torch.compile of every block)
#   LORA_RANK=16 bash benchmarks/gpu_fsdp.sh   (another adapter rank; 0 skips the LoRA step)
set -euo pipefail
here=$(dirname "$0")
bash "$here/gpu_torchrun.sh" fsdp.py "$@"
if [ "${LORA_RANK:-64}" != 0 ]; then
  bash "$here/gpu_torchrun.sh" fsdp.py --lora "${LORA_RANK:-64}" "$@"
fi
