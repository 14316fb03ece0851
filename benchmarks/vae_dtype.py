"""The VAE decode in bf16 against fp32 on this machine: seconds, and what bf16 changes in the frames.

  python benchmarks/vae_dtype.py speed [--frames 17] [--size 256] [--repeats 2]
      the full-size v1.1.0 CausalVideoVAE (random weights: speed does not depend on them),
      tiled as sampling tiles it, decoding one latent in fp32 and in bf16, alternated
      `--repeats` times in one process; the median seconds of each and the PSNR of the bf16
      frames against the fp32 ones.
  python benchmarks/vae_dtype.py quality [--clips 24]
      the built-in model's VAE (real weights) on clips of the shapes world: each clip encoded in
      fp32, its latent decoded in fp32 and in bf16; PSNR of bf16 against fp32 frames, and of
      each against the clip (the reconstruction quality either dtype gives).

Frames are made as sampling makes them (`T2VPipeline.decode_latents`: truncated to uint8).
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REFERENCE_CONFIG = ROOT.parent / "shared" / "reference" / "vae_v1.1.0_config.json"
TILE = {"tile_sample_size": 256, "tile_sample_frames": 17, "tile_overlap_factor": 0.25}  # as benchmarks/vae.py


def to_frames(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3), truncated as sampling does."""
    return ((video.float() / 2.0 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 4, 1)


def speed(args: argparse.Namespace) -> None:
    from osp_core import CausalVideoVAE
    from osp_core.metrics import psnr

    torch.manual_seed(0)
    config = json.loads(REFERENCE_CONFIG.read_text()) if REFERENCE_CONFIG.is_file() else {}
    models = {"fp32": CausalVideoVAE.from_config(config).eval()}
    models["bf16"] = CausalVideoVAE.from_config(config).eval().to(torch.bfloat16)
    models["bf16"].load_state_dict(models["fp32"].state_dict())
    for vae in models.values():
        vae.enable_tiling(**TILE)
    z = torch.randn(1, 4, *models["fp32"].latent_shape(args.frames, args.size, args.size))
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    frames = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, vae in models.items():
                start = time.perf_counter()
                frames[name] = to_frames(vae.decode(z.to(vae.dtype)).sample)
                seconds[name].append(time.perf_counter() - start)
    fp32, bf16 = statistics.median(seconds["fp32"]), statistics.median(seconds["bf16"])
    print(f"full-size VAE, tiled decode of {args.frames}x{args.size}x{args.size}, {torch.get_num_threads()} threads, {args.repeats} alternated repeats")
    print("| dtype | seconds (median) | each run | PSNR against fp32 |")
    print("|---|---:|---|---:|")
    print(f"| fp32 | {fp32:.2f} | {', '.join(f'{s:.2f}' for s in seconds['fp32'])} | - |")
    print(f"| bf16 | {bf16:.2f} ({fp32 / bf16:.2f}x) | {', '.join(f'{s:.2f}' for s in seconds['bf16'])} | {psnr(frames['fp32'], frames['bf16']):.2f} dB |")


def quality(args: argparse.Namespace) -> None:
    import numpy as np

    from osp_core import CausalVideoVAE
    from osp_core.data.shapes import iter_clips, render
    from osp_core.metrics import psnr

    folder = ROOT / "osp_core" / "builtin" / "shapes" / "vae"
    fp32 = CausalVideoVAE.from_pretrained(str(folder)).eval()
    bf16 = CausalVideoVAE.from_pretrained(str(folder), torch_dtype=torch.bfloat16).eval()
    rows = []
    with torch.inference_mode():
        for clip in iter_clips(args.clips, seed=300):  # seeds no model was trained or tuned on
            source = render(clip)  # (T, H, W, 3) uint8
            x = source.permute(3, 0, 1, 2)[None].float().div(127.5).sub(1.0)
            z = fp32.encode(x).latent_dist.mean
            a, b = to_frames(fp32.decode(z).sample)[0], to_frames(bf16.decode(z.to(torch.bfloat16)).sample)[0]
            rows.append((psnr(a, b), psnr(source, a), psnr(source, b)))
    finite = lambda values: [v for v in values if np.isfinite(v)]  # noqa: E731
    mean = lambda i: statistics.mean(finite([r[i] for r in rows]) or [float("inf")])  # noqa: E731
    identical = sum(not np.isfinite(r[0]) for r in rows)
    print(f"built-in VAE, {len(rows)} shapes clips (seed 300), latents encoded in fp32")
    print("| bf16 against fp32 frames (mean PSNR) | identical clips | fp32 against the clip | bf16 against the clip |")
    print("|---:|---:|---:|---:|")
    print(f"| {mean(0):.2f} dB | {identical} of {len(rows)} | {mean(1):.2f} dB | {mean(2):.2f} dB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fast = sub.add_parser("speed")
    fast.add_argument("--frames", type=int, default=17)
    fast.add_argument("--size", type=int, default=256)
    fast.add_argument("--repeats", type=int, default=2)
    sub.add_parser("quality").add_argument("--clips", type=int, default=24)
    args = parser.parse_args()
    {"speed": speed, "quality": quality}[args.command](args)


if __name__ == "__main__":
    main()
