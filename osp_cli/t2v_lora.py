"""`osp t2v lora`: LoRA adapters of the text-to-video transformer (trained by `osp t2v train
--lora`). Registered in osp_cli/t2v.py as the `lora` group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .console import err, print_json
from .options import DEFAULT_MODEL, JsonOpt, ModelOpt

app = typer.Typer(help="LoRA adapters: merge them into a transformer folder.", no_args_is_help=True)

LoraOpt = Annotated[
    list[str] | None,
    typer.Option("--lora", help="LoRA adapter folder (adapter_config.json + adapter_model.safetensors, e.g. a run's lora/), optionally :SCALE (default 1); repeatable, the adapters add up."),
]


@app.command()
def merge(
    lora: LoraOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder to write the merged transformer to (config.json + safetensors; load it with --transformer).")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    version: Annotated[str | None, typer.Option("--version", help="The base: a transformer version folder of --model (default: its shortest).")] = None,
    transformer: Annotated[Path | None, typer.Option("--transformer", help="The base: a LatteT2V folder instead of a --version.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Merge adapters into the base transformer's weights (W + scale x alpha/r x BA each) and write a transformer folder."""
    from osp_core.errors import InputError
    from osp_core.jobs.lora import MergeJob, plan_merge, run_merge

    if output is None:
        raise InputError("no output folder given", "pass -o DIR")
    plan = plan_merge(MergeJob(lora or [], output, model, version, transformer, overwrite))
    summary = run_merge(plan)
    if json_out:
        print_json(summary)
    else:
        err.print(f"[green]wrote[/green] {escape(summary['output'])}")
