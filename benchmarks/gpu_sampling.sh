#!/usr/bin/env bash
# The GPU sampling table, in one run: full-size 65x512x512 LatteT2V + CausalVideoVAE, bf16.
#   1. seconds per denoising step and peak memory (random weights) for cache none / pab /
#      teacache, compile off / on, plus the attention backends that exist on this machine;
#   2. seconds per video of each --speed profile of the released weights (default, fast,
#      fastest: their scheduler, steps, cache and threshold, as `osp t2v sample --speed`
#      resolves them), against default. Random weights unless --released: then the released
#      weights themselves, from the local Hugging Face cache (the Hub is not reached), through
#      `osp t2v sample`, so TeaCache skips what it skips on them (on random weights its skip
#      count says nothing about the released model, only what a skipped step saves).
#
#   bash benchmarks/gpu_sampling.sh [--profiles-only] [--released] [OUT_DIR]
#   bash benchmarks/gpu_sampling.sh --help
#
# Needs a CUDA GPU and .venv (PY=... to use another interpreter). Each case is a fresh process
# (peak memory is its own); one JSON line per case in OUT_DIR/gpu_sampling.jsonl (part 1) and
# OUT_DIR/gpu_sampling_profiles.jsonl (part 2), markdown tables on stdout. Part 1 takes about
# 5-8 minutes on an H100/H200, part 2 about 3-5 (three whole videos of up to 150 steps).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

PROFILES_ONLY=0
RELEASED=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --profiles-only) PROFILES_ONLY=1 ;;
    --released) RELEASED=1 ;;
    -*) echo "gpu_sampling.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "gpu_sampling.sh: one OUT_DIR only (see --help)" >&2; exit 2; }; OUT=$1 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
OUT=${OUT:-${OUT_DIR:-/tmp}}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(), torch.__version__)"

# -- 1. seconds per step: caches, compile, attention backends (random weights) ----------------
if [ "$PROFILES_ONLY" = 0 ]; then
  LOG="$OUT/gpu_sampling.jsonl"
  : > "$LOG"
  STEPS=${STEPS:-20}
  run() { "$PY" benchmarks/t2v.py --device cuda --dtype bf16 --steps "$STEPS" --json "$@" | tail -n 1 | tee -a "$LOG"; }
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
fi

# -- 2. seconds per video of each --speed profile ---------------------------------------------
PLOG="$OUT/gpu_sampling_profiles.jsonl"
: > "$PLOG"
PROMPT=${PROMPT:-"A quiet beach at dawn, the waves gently lapping at the shore and the sky painted in pastel hues."}
for speed in default fast fastest; do
  if [ "$RELEASED" = 1 ]; then
    # the whole command as a user runs it (T5, denoise, decode, write), weights from the local cache
    HF_HUB_OFFLINE=1 "$PY" -m osp_cli t2v sample "$PROMPT" --speed "$speed" --device cuda --dtype bf16 --frames 65 \
      --seed 0 --overwrite -o "$OUT/videos-$speed" --json > "$OUT/summary-$speed.json"
    "$PY" - "$OUT/summary-$speed.json" <<'EOF' | tee -a "$PLOG"
import json, sys
summary = json.load(open(sys.argv[1]))
video = summary["videos"][0]
s = video["settings"]
print(json.dumps({"speed": s["speed"], "scheduler": s["scheduler"], "steps": s["steps"], "cache": s["cache"], "weights": "released",
                  "denoise_seconds": video["seconds"]["denoise"], "seconds_per_video": summary["seconds"]["total"] - summary["seconds"]["load"],
                  "video": f"{s['frames']}x{s['height']}x{s['width']}", "device": s["device"]}))
EOF
  else
    "$PY" benchmarks/t2v.py --device cuda --dtype bf16 --speed "$speed" --json | tail -n 1 | tee -a "$PLOG"
  fi
done
"$PY" - "$PLOG" "$RELEASED" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
base = next(r for r in rows if r["speed"] == "default")
weights = "released weights, whole command (T5 + denoise + decode + write)" if sys.argv[2] == "1" else "random weights (T5 left out; TeaCache's skips are not the released model's)"
print(f"\n--speed profiles, {rows[0]['video']} bf16, {weights}")
print("| speed | scheduler | steps | cache | transformer evaluations | denoise s | s / video | speed-up |")
print("|---|---|---:|---|---:|---:|---:|---:|")
for r in rows:
    c = r["cache"]
    cache = c["method"] + (f" {c['threshold']:g}" if "threshold" in c else "")
    print(f"| {r['speed']} | {r['scheduler']} | {r['steps']} | {cache} | {c.get('transformer_evaluations', 'all')} | {r['denoise_seconds']:.1f} | {r['seconds_per_video']:.1f} | {base['seconds_per_video'] / r['seconds_per_video']:.2f}x |")
EOF
