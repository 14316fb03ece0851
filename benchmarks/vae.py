"""Seconds and peak RSS of the full-size v1.1.0 CausalVideoVAE (random weights) on this machine.

Each case runs in a fresh subprocess so its peak resident memory (VmHWM) is its own.
    python benchmarks/vae.py                 # all cases, a markdown table on stdout
    python benchmarks/vae.py --frames 17 --sizes 256 --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_CONFIG = ROOT.parent / "shared" / "reference" / "vae_v1.1.0_config.json"
# Tiled cases: 17-frame temporal rollback windows (256x256 spatial tiles), so memory is bounded
# by one window however long the video (the default 256x256x65 tile would not split these).
TILE = {"tile_sample_size": 256, "tile_sample_frames": 17, "tile_overlap_factor": 0.25}


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(op: str, frames: int, size: int, tiled: bool) -> dict:
    import torch

    from osp_core import CausalVideoVAE

    torch.manual_seed(0)
    config = json.loads(REFERENCE_CONFIG.read_text()) if REFERENCE_CONFIG.is_file() else {}
    vae = CausalVideoVAE.from_config(config).eval()
    if tiled:
        vae.enable_tiling(**TILE)
    latent = vae.latent_shape(frames, size, size)
    with torch.inference_mode():
        if op == "encode":
            x = torch.rand(1, 3, frames, size, size) * 2 - 1
            base = _peak_rss_mb()
            start = time.perf_counter()
            vae.encode(x)
        else:
            z = torch.randn(1, 4, *latent)
            base = _peak_rss_mb()
            start = time.perf_counter()
            vae.decode(z)
        seconds = time.perf_counter() - start
    return {
        "op": op, "frames": frames, "size": size, "tiled": tiled, "seconds": round(seconds, 2),
        "peak_rss_mb": round(_peak_rss_mb()), "model_rss_mb": round(base), "threads": torch.get_num_threads(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[17, 33, 65])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--ops", nargs="+", default=["encode", "decode"], choices=["encode", "decode"])
    parser.add_argument("--tiled", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", nargs="+", metavar="OP,FRAMES,tiled|untiled", help="Run only these cases, e.g. decode,65,tiled.")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.case:
        op, frames, size, tiled = args.case.split(",")
        print(json.dumps(run_case(op, int(frames), int(size), tiled == "1")))
        return
    tiles = {"both": [False, True], "yes": [True], "no": [False]}[args.tiled]
    results = []
    cases = [(op, size, tiled, frames) for op in args.ops for size in args.sizes for tiled in tiles for frames in args.frames]
    if args.only:
        wanted = {tuple(c.split(",")) for c in args.only}
        cases = [c for c in cases if (c[0], str(c[3]), "tiled" if c[2] else "untiled") in wanted]
    for op, size, tiled, frames in cases:
        case = f"{op},{frames},{size},{int(tiled)}"
        proc = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True)
        if proc.returncode:
            results.append({"op": op, "frames": frames, "size": size, "tiled": tiled, "error": proc.stderr.strip().splitlines()[-1:]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("| op | frames | size | tiled | seconds | peak RSS (MB) | of which model (MB) |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['op']} | {r['frames']} | {r['size']} | {'yes' if r['tiled'] else 'no'} | error: {r['error']} | | |")
        else:
            print(f"| {r['op']} | {r['frames']} | {r['size']} | {'yes' if r['tiled'] else 'no'} | {r['seconds']} | {r['peak_rss_mb']} | {r['model_rss_mb']} |")


if __name__ == "__main__":
    main()
