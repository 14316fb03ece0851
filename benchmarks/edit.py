"""`osp edit` on the two-object shapes world: N edits with seeds training never saw, graded
by `osp eval edit`'s measures, for each engine asked for.

Each edit: object 0 gets a new colour and/or shape (the edited first frame) and a new straight
path (one --track); the box covers its old and new paths, object 1 stays outside it
(`osp_core.eval.edit.make_edit_task`). The source clips, first frames and results stay in
--out for a look.

    python benchmarks/edit.py --num 40 --engine blend --out bench_edit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=40)
    parser.add_argument("--seed", type=int, default=90_000, help="task seed (training data uses small seeds)")
    parser.add_argument("--engine", action="append", choices=["blend", "control"], help="repeatable (default: blend)")
    parser.add_argument("--reference", action="store_true", help="also grade the right answer (the target clip) after the model's VAE round trip: what a perfect denoiser would score")
    parser.add_argument("--model", default="builtin:shapes")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--strength", type=float, default=None, help="default: the model's edit_strength (sampling.json), else 1")
    parser.add_argument("--out", type=Path, default=Path("bench_edit"))
    args = parser.parse_args(argv)

    from PIL import Image

    from osp_core.data.shapes import FPS
    from osp_core.eval.edit import evaluate_sidecar, make_edit_task, summarize
    from osp_core.io import write_video
    from osp_core.jobs.edit import EditJob, run_edit

    rng = np.random.default_rng(args.seed)
    tasks = [make_edit_task(rng) for _ in range(args.num)]
    inputs = args.out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for index, task in enumerate(tasks):
        write_video(inputs / f"{index:03d}.mp4", task.source, fps=FPS)
        Image.fromarray(task.first_frame.numpy()).save(inputs / f"{index:03d}-first.png")
    results = {}
    if args.reference:
        started = time.perf_counter()
        rows = reference_rows(tasks, args.model)
        results["reference"] = {"summary": summarize(rows), "seconds": round(time.perf_counter() - started, 1), "edits": rows}
    for engine in args.engine or ["blend"]:
        rows, started = [], time.perf_counter()
        for index, task in enumerate(tasks):
            output = args.out / engine / f"{index:03d}.mp4"
            job = EditJob(
                video=inputs / f"{index:03d}.mp4",
                output=output,
                box=task.box_arg,
                first_frame=inputs / f"{index:03d}-first.png",
                prompt=task.prompt,
                tracks=[task.track_arg],
                engine=engine,
                strength=args.strength,
                model=args.model,
                steps=args.steps,
                guidance=args.guidance,
                seed=index,
                overwrite=True,
            )
            run_edit(job)
            rows.append({"video": str(output), **evaluate_sidecar(output)})
            print(f"{engine} {index + 1}/{len(tasks)}: {rows[-1]}", file=sys.stderr, flush=True)
        results[engine] = {"summary": summarize(rows), "seconds": round(time.perf_counter() - started, 1), "edits": rows}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print("| engine | edits | outside PSNR (dB) | colour correct | shape correct | trajectory error (px) | first-frame PSNR (dB) | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for engine, result in results.items():
        s = result["summary"]
        print(f"| {engine} | {s['edits']} | {s['psnr_outside']:.2f} | {s['color_accuracy']:.1%} | {s['shape_accuracy']:.1%} | {s['trajectory_error']:.2f} | {s['first_frame_psnr']:.2f} | {result['seconds']} |")
    return 0


def reference_rows(tasks: list, model: str) -> list[dict]:
    """`evaluate_edit` of each task's right answer encoded and decoded by `model`'s VAE, the
    source pasted back outside the region as `osp edit` does."""
    import torch

    from osp_core.eval.edit import evaluate_edit
    from osp_core.io import from_model_output, to_model_input
    from osp_core.pipelines.edit import paste_outside
    from osp_core.pipelines.edit_inputs import box_mask, parse_track
    from osp_core.pipelines.video_vae import decode, encode, load_vae

    vae = load_vae(model, torch.device("cpu"), torch.float32)
    rows = []
    for task in tasks:
        count, height, width = task.source.shape[:3]
        mask = box_mask(task.box, count, height, width)
        decoded = from_model_output(decode(vae, encode(vae, to_model_input(task.target)))[0])
        track = parse_track(task.track_arg, count).double()
        rows.append(evaluate_edit(paste_outside(decoded, task.source, mask), task.source, mask, task.first_frame, [track]))
    return rows


if __name__ == "__main__":
    sys.exit(main())
