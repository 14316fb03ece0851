#!/usr/bin/env bash
# Runs a benchmark's device mode under torchrun with NPROC ranks (default 1), after checking that
# there is a CUDA GPU; the GPU scripts of the FSDP and sequence-parallel benchmarks share it.
#   bash benchmarks/gpu_torchrun.sh SCRIPT.py [ARGS...]   (runs benchmarks/SCRIPT.py device ARGS...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NPROC=${NPROC:-1}
script=$1
shift
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(), torch.__version__)"
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" "benchmarks/$script" device "$@"
