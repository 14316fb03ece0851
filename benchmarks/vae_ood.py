"""The built-in VAE's round trip on shapes clips drawn by code outside the project.

`osp data synth` draws the shapes world one way (supersampled masks, the shape fully inside
the frame, five exact colours). This benchmark draws the same kind of world independently,
with OpenCV: anti-aliased or hard-edged outlines, filled circles, squares and triangles
14-20 px across, moving left/right/up/down at 1.5-2.5 px per frame, colours jittered around
red, green, blue, yellow and white (pure 255 white included), and paths that may run into
and past the frame's edges. It reports the round-trip PSNR per clip and by factor.

Seeds are split once: `val` (clips 0-47 of seed 100) picks training settings, `test` (clips
0-47 of seed 200) is what gets reported. The bar, fixed before any measurement: mean PSNR
>= 30 dB on `test` (the bar of the project's own held-out clips); the worst clip is reported
beside it.

    python benchmarks/vae_ood.py                          # builtin:shapes on the test split
    python benchmarks/vae_ood.py --split val --model DIR --json
    python benchmarks/vae_ood.py --split heldout          # the project's own 100 held-out clips
    python benchmarks/vae_ood.py --split val --refine-latents 100 --clips 8   # the decoder given better latents
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

NUM_FRAMES, SIZE = 17, 64
SPLITS = {"val": (100, 48), "test": (200, 48)}
BAR_DB = 30.0
BASE_COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (235, 220, 40), "white": (255, 255, 255)}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
SHIFT = 4  # OpenCV's fixed-point bits: sub-pixel positions for the anti-aliased drawing


@dataclass(frozen=True)
class OODClip:
    shape: str
    color: str
    rgb: tuple[int, int, int]
    direction: str
    size_px: float
    speed_px: float
    start_x: float
    start_y: float
    antialias: bool

    def centres(self) -> np.ndarray:
        dy, dx = DIRECTIONS[self.direction]
        t = np.arange(NUM_FRAMES)
        return np.stack([self.start_x + dx * self.speed_px * t, self.start_y + dy * self.speed_px * t], axis=1)

    def edge_overhang(self) -> float:
        """How far (px) the shape's box reaches past the frame at its furthest; <= 0: always inside."""
        c = self.centres()
        half = self.size_px / 2
        return float(max((half - c).max(), (c + half - SIZE).max()))


def sample_ood(rng: np.random.Generator) -> OODClip:
    """One clip: start anywhere that keeps at least half the shape in view in every frame, so
    about half the clips touch or cross an edge."""
    shape = ["circle", "square", "triangle"][int(rng.integers(3))]
    color = list(BASE_COLORS)[int(rng.integers(len(BASE_COLORS)))]
    base = np.array(BASE_COLORS[color])
    rgb = base if color == "white" and rng.random() < 0.5 else np.clip(base + rng.integers(-25, 26, 3), 0, 255)
    direction = list(DIRECTIONS)[int(rng.integers(4))]
    size = float(rng.uniform(14, 20))
    speed = float(rng.uniform(1.5, 2.5))
    dy, dx = DIRECTIONS[direction]
    travel = speed * (NUM_FRAMES - 1)

    def start(step: int) -> float:
        low, high = 0.0, float(SIZE)  # the centre stays in the frame: half the shape in view
        if step > 0:
            high -= travel
        elif step < 0:
            low += travel
        return float(rng.uniform(low, high))

    return OODClip(shape, color, tuple(int(v) for v in rgb), direction, size, speed, start(dx), start(dy), bool(rng.random() < 0.5))


def draw(clip: OODClip) -> np.ndarray:
    """(17, 64, 64, 3) uint8 frames, drawn with OpenCV."""
    import cv2

    frames = np.zeros((NUM_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    line = cv2.LINE_AA if clip.antialias else cv2.LINE_8
    scale = 1 << SHIFT
    half = clip.size_px / 2
    for t, (cx, cy) in enumerate(clip.centres()):
        img = frames[t]
        # OpenCV's pixel centres sit at integers; the project's at +0.5: shift by half a pixel
        fx, fy = (cx - 0.5) * scale, (cy - 0.5) * scale
        if clip.shape == "circle":
            cv2.circle(img, (round(fx), round(fy)), round(half * scale), clip.rgb, -1, line, SHIFT)
        else:
            if clip.shape == "square":
                pts = [(-half, -half), (half, -half), (half, half), (-half, half)]
            else:
                pts = [(0.0, -half), (half, half), (-half, half)]
            poly = np.array([[round(fx + px * scale), round(fy + py * scale)] for px, py in pts], dtype=np.int32)
            cv2.fillPoly(img, [poly], clip.rgb, line, SHIFT)
    return frames


def clips(split: str) -> list[OODClip]:
    seed, count = SPLITS[split]
    rng = np.random.default_rng(seed)
    return [sample_ood(rng) for _ in range(count)]


def round_trip_psnr(vae, frames: np.ndarray, via_mp4: bool = False) -> float:
    """PSNR (dB) of the VAE's round trip (posterior mean) of uint8 frames: in memory, or (as
    `make builtin` measures its held-out clips: `osp vae recon` + `osp eval shapes --reference`)
    with the clip and its reconstruction each stored as mp4 and read back."""
    import tempfile

    import torch

    from osp_core.io import Video, read_video, write_video
    from osp_core.metrics import psnr
    from osp_core.pipelines.video_vae import reconstruct

    if not via_mp4:
        return reconstruct(vae, Video(torch.from_numpy(frames), 8.0)).psnr
    with tempfile.TemporaryDirectory() as tmp:
        write_video(Path(tmp) / "in.mp4", torch.from_numpy(frames), fps=8)
        source = read_video(Path(tmp) / "in.mp4")
        write_video(Path(tmp) / "out.mp4", reconstruct(vae, source).frames, fps=8)
        return psnr(source.frames, read_video(Path(tmp) / "out.mp4").frames)


def refined_psnr(vae, frames: np.ndarray, steps: int) -> tuple[float, float, float]:
    """The round trip from the encoder's latents (posterior mean), and from those latents after
    `steps` Adam steps on the decoder's squared error (lr 0.03, then 0.01 from half way): what
    the decoder can draw when it is given better latents than the encoder writes. Returns both
    PSNRs (in memory, of the uint8 frames, as `round_trip_psnr`) and how far the latents moved
    (|z - z0| / |z0|)."""
    import torch

    from osp_core.io import from_model_output, to_model_input
    from osp_core.metrics import psnr
    from osp_core.pipelines.video_vae import decode, encode

    x = to_model_input(torch.from_numpy(frames))
    start = encode(vae, x)
    latents = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([latents], lr=0.03)
    for step in range(steps):
        if step == steps // 2:
            for group in opt.param_groups:
                group["lr"] = 0.01
        loss = ((vae.decode(latents).sample - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def db(z: torch.Tensor) -> float:  # as `reconstruct` measures: uint8 frames
        return psnr(torch.from_numpy(frames), from_model_output(decode(vae, z)[0]))

    return db(start), db(latents.detach()), float((latents.detach() - start).norm() / start.norm())


def evaluate(vae, split: str, via_mp4: bool = False) -> dict:
    """Per-clip PSNR on `split` and the summary (mean, worst, by factor)."""
    rows = []
    if split == "heldout":  # the project's own held-out clips (`make builtin`'s seed 1), in memory
        from osp_core.data.shapes import iter_clips, render

        for i, c in enumerate(iter_clips(100, 1)):
            rows.append({"clip": i, "shape": c.shape, "color": c.color, "size_px": c.size_px, "speed_px": c.speed_px, "psnr": round_trip_psnr(vae, render(c).numpy(), via_mp4)})
    else:
        for i, c in enumerate(clips(split)):
            rows.append({"clip": i, **asdict(c), "edge_overhang": c.edge_overhang(), "psnr": round_trip_psnr(vae, draw(c), via_mp4)})
    values = np.array([r["psnr"] for r in rows])
    worst = rows[int(values.argmin())]
    summary = {"split": split, "via_mp4": via_mp4, "clips": len(rows), "mean_psnr": float(values.mean()), "min_psnr": float(values.min()), "worst": worst, "bar_db": BAR_DB, "meets_bar": bool(values.mean() >= BAR_DB)}
    by: dict[str, dict[str, float]] = {}
    factors = {
        "shape": lambda r: r["shape"],
        "color": lambda r: r["color"],
        "antialias": lambda r: str(r.get("antialias", "-")),
        "edge": lambda r: "touches" if r.get("edge_overhang", -1) > -0.5 else "inside",
        "size": lambda r: "14-17" if r["size_px"] < 17 else "17-20",
        "speed": lambda r: "1.5-2" if r["speed_px"] < 2 else "2-2.5",
    }
    for name, key in factors.items():
        groups: dict[str, list[float]] = {}
        for r in rows:
            groups.setdefault(key(r), []).append(r["psnr"])
        by[name] = {k: round(float(np.mean(v)), 2) for k, v in sorted(groups.items())}
    summary["by"] = by
    return {"summary": summary, "clips": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:shapes", help="model repository or VAE folder")
    parser.add_argument("--split", choices=[*SPLITS, "heldout"], default="test")
    parser.add_argument("--via-mp4", action="store_true", help="store the clip and its reconstruction as mp4 first (as make builtin's held-out check)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--refine-latents", type=int, default=0, metavar="STEPS", help="also optimise each clip's latents through the decoder for STEPS steps: the decoder's round trip with better latents than the encoder's")
    parser.add_argument("--clips", type=int, default=None, help="only the split's first N clips (with --refine-latents)")
    parser.add_argument("--save-frames", type=Path, help="write the split's clips as mp4 into this folder")
    args = parser.parse_args(argv)

    import torch

    from osp_core.pipelines.video_vae import load_vae

    if args.save_frames and args.split in SPLITS:
        from osp_core.io import write_video

        args.save_frames.mkdir(parents=True, exist_ok=True)
        for i, c in enumerate(clips(args.split)):
            write_video(args.save_frames / f"{args.split}-{i:02d}.mp4", torch.from_numpy(draw(c)), fps=8)
    vae = load_vae(args.model, torch.device("cpu"), torch.float32)
    if args.refine_latents:
        if args.split not in SPLITS:
            parser.error("--refine-latents takes --split val or test")
        vae.requires_grad_(False)
        rows = []
        for i, c in enumerate(clips(args.split)[: args.clips]):
            encoded, refined, moved = refined_psnr(vae, draw(c), args.refine_latents)
            rows.append({"clip": i, "shape": c.shape, "color": c.color, "antialias": c.antialias, "encoder_psnr": encoded, "refined_psnr": refined, "latent_change": moved})
            if not args.json:
                print(f"  clip {i:2d} {c.color:6s} {c.shape:8s} {'aa  ' if c.antialias else 'hard'}: encoder {encoded:.2f} dB, refined {refined:.2f} dB (latents moved {moved:.0%})", flush=True)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("encoder_psnr", "refined_psnr", "latent_change")}
        if args.json:
            print(json.dumps({"split": args.split, "steps": args.refine_latents, "clips": rows, "mean": mean}, indent=1))
        else:
            print(f"{args.model} on {args.split} ({len(rows)} clips, in memory): encoder's latents {mean['encoder_psnr']:.2f} dB, refined over {args.refine_latents} steps {mean['refined_psnr']:.2f} dB")
        return 0
    result = evaluate(vae, args.split, args.via_mp4)
    s = result["summary"]
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{args.model} on {s['split']}{' via mp4' if s['via_mp4'] else ''} ({s['clips']} clips): mean {s['mean_psnr']:.2f} dB, worst {s['min_psnr']:.2f} dB (clip {s['worst']['clip']}), bar {BAR_DB} dB: {'met' if s['meets_bar'] else 'NOT met'}")
        for name, groups in s["by"].items():
            print(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in groups.items()))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
