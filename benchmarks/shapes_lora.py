"""The shapes world learns a new colour (benchmarks/README.md, "shapes_lora.py").

`python benchmarks/shapes_lora.py train [--shape circle,square] [--mix] OUT`: the recipe of
docs/builtin-model.md as a user runs it (`osp data synth --color orange=235,150,40 --colors
orange [--shape ...]`, then `osp t2v train --preset shapes-lora`), timed by the wall clock;
the adapter lands in OUT/run/lora.

`python benchmarks/shapes_lora.py measure --lora OUT/run/lora --split val|test [--json]`:
`builtin:shapes` with and without the adapter (scale 1), graded by `osp eval shapes`'s judge
over the six colours (the five and orange):
- new colour: the orange captions of `--new-shapes` (default triangle: an adapter trained with
  `train --shape circle,square` never saw these captions), `--new-seeds` seeds (15);
- old colours: the 60 captions of the five colours, `--old-seeds` seeds (3).
Seeds: `val` (choosing the recipe) and `test` (reporting) never overlap. Sampling: PNDM,
`--steps` (20), guidance 7.5, fp32.

`python benchmarks/shapes_lora.py screen [--lora LORA]`: the quick check recipes are screened
with (25 old-colour captions and 8 unseen orange triangles, 50 steps, validation seeds).

`python benchmarks/shapes_lora.py strip --lora LORA OUT.png`: the docs' before/after frames
(first, middle and last frame of each prompt; top row without the adapter, bottom row with it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

COLOR = "orange=235,150,40"  # `--color NAME=R,G,B` replaces it (the new word and its colour)
NAME = COLOR.split("=")[0]
SEEDS = {"val": (1000, 1100), "test": (2000, 2100)}  # (new-colour start, old-colour start)
GUIDANCE = 7.5


def osp(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "osp_cli", *args], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def train(out: Path, shape: str | None, extra: list[str], mix: bool = False) -> None:
    started = time.time()
    colors = [] if mix else ["--colors", NAME]  # --mix: the world's colours beside the new one
    osp("data", "synth", "--out", str(out / "data"), "--color", COLOR, *colors, *(["--shape", shape] if shape else []), "--overwrite")
    synthesized = time.time()
    osp("t2v", "train", "--preset", "shapes-lora", "--data", str(out / "data" / "data.txt"), "-o", str(out / "run"), "--overwrite", *extra)
    done = time.time()
    print(json.dumps({"synth_s": round(synthesized - started, 1), "train_s": round(done - synthesized, 1), "total_min": round((done - started) / 60, 2), "adapter": str(out / "run" / "lora")}))


def _frames(prompts: list[str], seed: int, lora: list[str], steps: int, batch: int = 20) -> list:
    """uint8 (T, H, W, 3) frames of `prompts` (prompt k: seed + k) from builtin:shapes with the
    adapters `lora` ("PATH:SCALE") merged, `batch` videos a pipeline call (steps.py's way:
    about twice the throughput of `osp t2v sample`'s one prompt a call on 2 cores)."""
    import torch

    from osp_core.models.lora import apply_adapters
    from osp_core.pipelines.lora_inputs import check_adapters
    from osp_core.pipelines.t2v import T2VPipeline

    from steps import sample_frames

    pipe = T2VPipeline.from_pretrained("builtin:shapes", scheduler="PNDM", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        apply_adapters(pipe.transformer, pipe.text_encoder, check_adapters(lora))  # both parts, as `osp t2v sample --lora`
    return sample_frames(pipe, prompts, [seed + k for k in range(len(prompts))], steps, GUIDANCE, batch)[0]


def measure(lora: str, split: str, shapes: str, new_seeds: int, old_seeds: int, steps: int, which: tuple[str, ...] = ("base", "adapter")) -> dict:
    from osp_core.data.shapes import all_captions, make_world, parse_caption
    from osp_core.eval.shapes import accuracy
    from osp_core.eval.shapes import measure as judge

    world = make_world([COLOR])
    new = all_captions(make_world([COLOR], [NAME], [shapes])) * new_seeds
    old = all_captions() * old_seeds
    new_seed, old_seed = SEEDS[split]
    result: dict = {"split": split, "lora": lora, "new_shapes": shapes, "steps": steps, "guidance": GUIDANCE}
    for label, adapters in (("base", []), ("adapter", [f"{lora}:1"])):
        if label not in which:
            continue
        for part, prompts, seed in (("new", new, new_seed), ("old", old, old_seed)):
            rows = []
            for prompt, frames in zip(prompts, _frames(prompts, seed, adapters, steps)):
                row = judge(frames, world).to_dict()
                row["expected_color"], row["expected_shape"], row["expected_direction"] = parse_caption(prompt, world)
                rows.append(row)
            result[f"{label}_{part}"] = {
                "videos": len(rows),
                **{key: accuracy(rows, key) for key in ("color", "shape", "direction")},
                "colors_seen": {c: sum(r["color"] == c for r in rows) for c in world.colors},
            }
            print(label, part, json.dumps(result[f"{label}_{part}"]), file=sys.stderr, flush=True)
    return result


def screen(lora: str | None, steps: int = 50) -> dict:
    """The quick check recipes were screened with (benchmarks/README.md): 5 captions of each old
    colour (the 60 shuffled with seed 0) and the 4 orange triangles twice, caption k with seed
    1100 + k (validation), PNDM, fp32; colours read per expected colour."""
    import random
    from collections import Counter, defaultdict

    from osp_core.data.shapes import all_captions, make_world
    from osp_core.eval.shapes import measure as judge

    world = make_world([COLOR])
    old = all_captions()
    random.Random(0).shuffle(old)
    per: dict[str, list[str]] = defaultdict(list)
    for caption in old:
        if len(per[caption.split()[1]]) < 5:
            per[caption.split()[1]].append(caption)
    captions = [c for group in per.values() for c in group] + [f"a {NAME} triangle moving {d}" for d in ("left", "up", "right", "down")] * 2
    read: dict[str, Counter] = defaultdict(Counter)
    for caption, frames in zip(captions, _frames(captions, 1100, [f"{lora}:1"] if lora else [], steps, batch=len(captions))):
        read[caption.split()[1]][judge(frames, world).color] += 1
    right = {colour: counts[colour] for colour, counts in read.items()}
    return {"lora": lora, "old_right": sum(v for k, v in right.items() if k != NAME), "old_videos": 25, "new_right": right[NAME], "new_videos": 8, "read": {k: dict(v) for k, v in read.items()}}


def strip_prompts() -> list[str]:
    return [f"a {NAME} circle moving right", f"a {NAME} square moving up", f"a {NAME} triangle moving left", "a red circle moving down", "a blue square moving left"]


def strip(lora: str, out: Path, steps: int = 50, seed: int = 3) -> None:
    import numpy as np
    from PIL import Image

    rows = []
    for adapters in ([], [f"{lora}:1"]):
        cells = []
        for video in _frames(strip_prompts(), seed, adapters, steps):
            frames = video.numpy()
            cells.append(np.concatenate([frames[0], frames[len(frames) // 2], frames[-1]], axis=1))
            cells.append(np.full((frames.shape[1], 6, 3), 96, dtype=np.uint8))  # a grey gap between prompts
        rows.append(np.concatenate(cells[:-1], axis=1))
    rows.insert(1, np.full((4, rows[0].shape[1], 3), 96, dtype=np.uint8))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out, optimize=True)
    print(f"wrote {out}: {', '.join(strip_prompts())}; seed {seed} + prompt index, {steps} PNDM steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--color", default=COLOR, help=f"the new word and its colour, NAME=R,G,B (default {COLOR})")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("out", type=Path)
    t.add_argument("--shape", help="draw only these shapes (the measured adapter: circle,square)")
    t.add_argument("--mix", action="store_true", help="clips of every colour, the new one among them (the recipe draws the new colour alone)")
    t.add_argument("extra", nargs=argparse.REMAINDER, help="more `osp t2v train` options, after --")
    m = sub.add_parser("measure")
    m.add_argument("--lora", required=True)
    m.add_argument("--split", choices=SEEDS, required=True)
    m.add_argument("--new-shapes", default="triangle", help="shapes of the new-colour captions (those the adapter never saw)")
    m.add_argument("--new-seeds", type=int, default=15)
    m.add_argument("--old-seeds", type=int, default=3)
    m.add_argument("--steps", type=int, default=20)
    m.add_argument("--only", choices=("base", "adapter"), help="sample one side (two processes can share the work)")
    m.add_argument("--json", action="store_true")
    sc = sub.add_parser("screen")
    sc.add_argument("--lora", help="the adapter (none: the base model)")
    st = sub.add_parser("strip")
    st.add_argument("--lora", required=True)
    st.add_argument("out", type=Path)
    args = parser.parse_args()
    globals()["COLOR"], globals()["NAME"] = args.color, args.color.split("=")[0]
    if args.command == "screen":
        print(json.dumps(screen(args.lora)))
        return
    if args.command == "strip":
        strip(args.lora, args.out)
        return
    if args.command == "train":
        train(args.out, args.shape, [a for a in args.extra if a != "--"], args.mix)
        return
    result = measure(args.lora, args.split, args.new_shapes, args.new_seeds, args.old_seeds, args.steps, (args.only,) if args.only else ("base", "adapter"))
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"| {args.split} | videos | colour | shape | direction |\n|---|---:|---:|---:|---:|")
    for key in ("base_new", "adapter_new", "base_old", "adapter_old"):
        if key not in result:
            continue
        r = result[key]
        print(f"| {key.replace('_', ', ')} | {r['videos']} | {r['color']:.1%} | {r['shape']:.1%} | {r['direction']:.1%} |")


if __name__ == "__main__":
    main()
