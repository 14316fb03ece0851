"""Shared parts of `osp vae train` and `osp t2v train`: console reporting, common options,
and running a command on its own (`python -m osp_cli.vae_train`, handy under torchrun)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any

import typer

from .console import err, print_json

PresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="Preset name (see presets/) or a YAML file; CLI options override it.")]
DataOpt = Annotated[str | None, typer.Option("--data", help="Data list (ROOT,ANNOTATION.json lines), an annotation .json/.jsonl (or, for the VAE, a video folder).")]
OutputOpt = Annotated[str | None, typer.Option("--output", "-o", help="Output folder: checkpoints/, logs/, samples/, summary.json.")]
FramesOpt = Annotated[int | None, typer.Option("--frames", help="Frames per sample (4k+1).")]
StrideOpt = Annotated[int | None, typer.Option("--stride", help="Take every N-th source frame.")]
SizeOpt = Annotated[str | None, typer.Option("--size", help="Sample size HxW (or N for square).")]
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps to train (total, across resumes).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Samples per data-parallel rank per step (global batch: x ranks / sequence-parallel x accumulation).")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Learning rate.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of init, data order and noise.")]
PrecisionOpt = Annotated[str | None, typer.Option("--mixed-precision", help="no, fp16 or bf16.")]
CkptEveryOpt = Annotated[int | None, typer.Option("--checkpoint-every", help="Checkpoint every N steps.")]
KeepOpt = Annotated[int | None, typer.Option("--keep-last", help="Keep the newest K checkpoints (0: all).")]
ResumeOpt = Annotated[str | None, typer.Option("--resume", help="'latest' (the newest checkpoint that loads) or a checkpoint folder.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Start over in an output folder that holds a run (removes its checkpoints, logs, samples, summary.json). Default: refuse.")]
LogEveryOpt = Annotated[int | None, typer.Option("--log-every", help="Log metrics every N steps.")]
ReportOpt = Annotated[str | None, typer.Option("--report-to", help="tensorboard, wandb, all or none.")]
EmaOpt = Annotated[bool | None, typer.Option("--ema/--no-ema", help="Keep an EMA of the weights (model_ema/).")]
GradCkptOpt = Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations to save memory.")]
WorkersOpt = Annotated[int | None, typer.Option("--num-workers", help="DataLoader workers per process.")]
DeterministicOpt = Annotated[bool | None, typer.Option("--deterministic/--no-deterministic", help="Deterministic kernels (bit-identical resumes on CPU).")]
DeviceTrainOpt = Annotated[str | None, typer.Option("--device", help="Force cpu (else the launcher's device: CUDA / NPU / CPU).")]
StrategyOpt = Annotated[str | None, typer.Option("--strategy", help="ddp (whole model per rank) or fsdp (FSDP2: weights, gradients and optimizer states sharded; Distributed Checkpoint). Default: that of the checkpoint --resume continues, else ddp.")]
SequenceParallelOpt = Annotated[int | None, typer.Option("--sequence-parallel", help="Ranks sharing one sample's tokens (DSP; t2v); divides the process count.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Any config value as section.key=value (repeatable), e.g. --set optim.lr_warmup_steps=500.")]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the resolved config as JSON and exit.")]
JsonSummaryOpt = Annotated[bool, typer.Option("--json", help="Print the final summary as JSON on stdout.")]


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (env RANK), or a plain process."""
    return int(os.environ.get("RANK", "0")) == 0


def common_overrides(**options: Any) -> dict[str, Any]:
    """Dotted config keys from the options every trainer shares (None = not given)."""
    from osp_core.io import parse_size

    size = parse_size(options.get("size"))
    mapping = {
        "data.data": options.get("data"),
        "data.frames": options.get("frames"),
        "data.stride": options.get("stride"),
        "data.height": size[0] if size else None,
        "data.width": size[1] if size else None,
        "run.output_dir": options.get("output"),
        "run.max_steps": options.get("max_steps"),
        "run.batch_size": options.get("batch_size"),
        "optim.lr": options.get("lr"),
        "run.seed": options.get("seed"),
        "run.mixed_precision": options.get("mixed_precision"),
        "run.checkpoint_every": options.get("checkpoint_every"),
        "run.keep_last": options.get("keep_last"),
        "run.resume": options.get("resume"),
        "run.overwrite": options.get("overwrite") or None,
        "run.log_every": options.get("log_every"),
        "run.report_to": options.get("report_to"),
        "run.ema": options.get("ema"),
        "run.gradient_checkpointing": options.get("gradient_checkpointing"),
        "run.num_workers": options.get("num_workers"),
        "run.deterministic": options.get("deterministic"),
        "run.device": options.get("device"),
        "parallel.strategy": options.get("strategy"),
        "parallel.sequence_parallel": options.get("sequence_parallel"),
    }
    return mapping


def merge_overrides(cls: type, cli: dict[str, Any], set_items: list[str] | None) -> dict[str, Any]:
    """--set values first, then named options (a named option wins over --set for the same key);
    every --set value is checked against `cls`'s config tree, even one a named option replaces."""
    from osp_core.train.config import check_overrides, parse_set_options

    merged = parse_set_options(set_items)
    check_overrides(cls, merged)
    merged.update({k: v for k, v in cli.items() if v is not None})
    return merged


def quiet_libraries() -> None:
    """Our own progress and log lines replace diffusers'/transformers' loading bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def console_reporter() -> Callable[[str, dict[str, Any]], None]:
    """Metrics and events on stderr (rank 0 only; skipped samples from every rank)."""
    quiet_libraries()
    main = is_main_process()

    def report(event: str, payload: dict[str, Any]) -> None:
        if event == "skip":
            err.print(f"[yellow]skipped[/] {payload['path']}: {payload['reason']}", highlight=False, soft_wrap=True)
            return
        if not main:
            return
        if event == "start":
            resumed = f", resumed from {payload['resumed_from']}" if payload.get("resumed_from") else ""
            parallel = payload.get("parallel") or {}
            layout = parallel.get("strategy", "ddp") + (f", sequence parallel {parallel['sequence_parallel']}" if parallel.get("sequence_parallel", 1) > 1 else "")
            err.print(
                f"[bold]{payload['recipe']} training[/]: {payload['samples']} samples, {payload['processes']} process(es) "
                f"({layout}, {payload['device']}), step {payload['step']}/{payload['max_steps']}{resumed}",
                highlight=False,
                soft_wrap=True,
            )
        elif event == "log":
            shown = {k: v for k, v in payload.items() if k not in ("step",)}
            parts = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
            err.print(f"step {payload['step']}: {parts}", highlight=False, soft_wrap=True)
        elif event == "checkpoint":
            err.print(f"[green]checkpoint[/] {payload['path']}", highlight=False, soft_wrap=True)
        elif event == "validate":
            err.print(f"validation samples: {', '.join(payload.get('samples', []))}", highlight=False, soft_wrap=True)
        elif event == "warning":
            err.print(f"[yellow]warning[/]: {payload['message']}", highlight=False, soft_wrap=True)
        elif event == "stop":
            err.print(f"[yellow]{payload['signal']}[/]: stopped after step {payload['step']}, checkpoint {payload['checkpoint']}", highlight=False, soft_wrap=True)
        elif event == "end":
            skipped = payload["skipped_samples"]
            err.print(
                f"[bold]done[/]: {payload['steps']} steps, {payload['samples_seen']} samples, {skipped} skipped, "
                f"last loss {payload['losses']['last']}, summary in {payload['output_dir']}/summary.json",
                highlight=False,
                soft_wrap=True,
            )

    return report


def finish(summary: dict[str, Any], json_out: bool) -> None:
    if json_out and is_main_process():
        print_json(summary)


def run_standalone(command: Callable[..., Any], name: str) -> None:
    """Run one command as a program (errors as one line, exit codes as `osp`)."""
    from .errors import run_app

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(name=name)(command)
    run_app(app, catch_interrupts=False)
