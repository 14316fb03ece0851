#!/usr/bin/env bash
# The GPU sampling table, in one run: full-size 65x512x512 LatteT2V + CausalVideoVAE (random
# weights), bf16, seconds per denoising step and peak memory for cache none / pab / teacache,
# compile off / on, plus the attention backends that exist on this machine.
#   bash benchmarks/gpu_sampling.sh [OUT_DIR]        (needs a CUDA GPU and .venv)
# Each case is a fresh process (peak memory is its own); one JSON line per case in
# OUT_DIR/gpu_sampling.jsonl and a markdown table on stdout. About 5-8 minutes on an H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp}}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
LOG="$OUT/gpu_sampling.jsonl"
: > "$LOG"
STEPS=${STEPS:-20}
run() { "$PY" benchmarks/t2v.py --device cuda --dtype bf16 --steps "$STEPS" --json "$@" | tail -n 1 | tee -a "$LOG"; }
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(), torch.__version__)"
for compile in "" "--compile"; do
  for cache in none pab teacache; do
    run --cache "$cache" $compile
  done
done
run --attention math
if "$PY" -c "import flash_attn" 2>/dev/null; then run --attention flash; fi
"$PY" - "$LOG" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
base = next(r for r in rows if r["cache"]["method"] == "none" and not r["compile"] and r["attention"] == "sdpa")["seconds_per_step"]
print(f"\n{rows[0]['device']}, {rows[0]['video']} bf16, {rows[0]['cfg_batch']}-way CFG batch, DDIM steps, random weights")
print("| attention | cache | compile | s / step | speed-up | transformer evaluations | peak denoise GB | peak decode GB |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for r in rows:
    c = r["cache"]
    evaluations = c.get("transformer_evaluations", "all")
    print(f"| {r['attention']} | {c['method']} | {'on' if r['compile'] else 'off'} | {r['seconds_per_step']:.3f} | {base / r['seconds_per_step']:.2f}x | {evaluations} | {r['peak_denoise_gb']} | {r['peak_decode_gb']} |")
EOF
