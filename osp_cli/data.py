"""`osp data`: datasets for training and testing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .console import err, print_json, progress
from .options import ColorOpt, ColorsOpt, JsonOpt, ShapeOpt

app = typer.Typer(help="Datasets: synthetic clips for training and tests.", no_args_is_help=True)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write videos/, annotations.json and data.txt into.")],
    num: Annotated[int, typer.Option("--num", "-n", help="Number of clips.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same clips).")] = 0,
    objects: Annotated[int, typer.Option("--objects", help="Objects per clip: 1, or 2 (the editing world: two objects that never overlap, with per-frame boxes and centres in the annotation).")] = 1,
    variety: Annotated[str, typer.Option("--variety", help="world: the world as the built-in model knows it; wide: looser drawings of it (sizes 12-22 px, speeds 1-3 px/frame, jittered and pure-white colours, hard edges, paths past the frame's edges) for training a VAE; hues: the wide drawing in any colour (captions name the nearest of the world's).")] = "world",
    color: ColorOpt = None,
    colors: ColorsOpt = None,
    shape: ShapeOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files already in --out (default: refuse when any file this run would write exists).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write clips of the synthetic "shapes" world (17x64x64 @ 8 fps, captioned) in the
    Open-Sora-Plan annotation format that `osp vae train` / `osp t2v train` read."""
    from osp_core.data.shapes import make_world, synthesize

    world = make_world(color or (), colors or (), shape or ())
    with progress() as bar:
        task = bar.add_task("writing clips", total=num)
        data_list = synthesize(out, num, seed, overwrite=overwrite, on_clip=lambda _: bar.advance(task), objects=objects, variety=variety, world=world)
    summary = {
        "data_list": str(data_list), "annotations": str(out / "annotations.json"), "videos": str(out / "videos"), "clips": num, "seed": seed,
        "objects": objects, "variety": variety, "colors": {name: list(rgb) for name, rgb in world.colors.items()}, "shapes": list(world.shapes),
    }  # fmt: skip
    if json_out:
        print_json(summary)
    else:
        err.print(f"wrote {num} clips to {out / 'videos'}; train with --data {data_list} (or --data {out / 'annotations.json'})")
