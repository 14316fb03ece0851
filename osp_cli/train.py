"""Shared parts of the train commands (`osp t2v train`, `osp vae train`, `osp edit train`): the
common options (`train_command`), the hand-off to the trainer (`run_training`), console
reporting, and running a command on its own (`python -m osp_cli.vae_train`, handy under torchrun)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from osp_core.parallel.layout import is_main_process
from osp_core.train.options import HEAD, TAIL, TrainOptions

from .console import err, print_json

# the frozen encoders of the commands that train a transformer (t2v, edit)
VaeOpt = Annotated[str | None, typer.Option("--vae", help="VAE folder or repo id (default: the repository's vae/).")]
TextEncoderOpt = Annotated[str | None, typer.Option("--text-encoder", help="T5 encoder: repo id or folder (default: the --model repository's text_encoder/, else DeepFloyd/t5-v1_1-xxl).")]


def train_command(
    *, without: tuple[str, ...] = (), help: dict[str, str] | None = None, refuse: tuple[tuple[str, ...], str] | None = None  # noqa: A002 - typer's name
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a train command `command(options: TrainOptions, **own)`: the command typer sees
    takes every `TrainOptions` field (the preset first, then the common options, the command's
    own, then --set, --print-config, --json), less those named in `without`, and hands them
    over as one `TrainOptions`. Flags, help and defaults come from the fields' declarations;
    `help` replaces a field's help line where an option means more (or less) for this command
    (e.g. the VAE also reads a video folder); the decorated command keeps it as `option_help`.
    `refuse` = (fields, hint): options the command does not support yet, hidden from its help
    and refused in one line when given (rather than click's "no such option")."""
    replaced = dict(help or {})
    refused, refuse_hint = refuse or ((), "")

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        specs = [spec for spec in dataclasses.fields(TrainOptions) if spec.name not in without]
        hints = typing.get_type_hints(TrainOptions)
        common = {spec.name for spec in specs}
        unknown = set(replaced) - common
        if unknown:
            raise TypeError(f"help for options the command does not take: {sorted(unknown)}")

        def parameter(spec: dataclasses.Field) -> inspect.Parameter:
            info = typer.Option(*spec.metadata["flags"], help=replaced.get(spec.name, spec.metadata["help"]), hidden=spec.name in refused)
            return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=spec.default, annotation=Annotated[hints[spec.name], info])

        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in inspect.signature(command, eval_str=True).parameters.items() if name != "options"]
        head = [parameter(spec) for spec in specs if spec.metadata["place"] == HEAD]
        middle = [parameter(spec) for spec in specs if not spec.metadata["place"]]
        tail = [parameter(spec) for spec in specs if spec.metadata["place"] == TAIL]

        @functools.wraps(command)
        def run(**given: Any) -> None:
            unsupported = next((spec for spec in specs if spec.name in refused and given.get(spec.name) is not None), None)
            if unsupported is not None:
                from osp_core.errors import InputError

                raise InputError(f"{unsupported.metadata['flags'][0]} is not an option of this command", refuse_hint)
            options = TrainOptions(**{k: v for k, v in given.items() if k in common})
            command(options, **{k: v for k, v in given.items() if k not in common})

        parameters = [*head, *middle, *own, *tail]
        run.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        run.option_help = replaced  # type: ignore[attr-defined]
        del run.__wrapped__  # typer reads the signature built here, not the command's
        return run

    return decorate


def run_training(options: TrainOptions, config_class: type, group: str, own: dict[str, Any], recipe: str) -> None:
    """The one hand-off from a train command to the trainer: the config from the preset, the
    common options, the command's `own` overrides (dotted keys) and --set; printed with
    --print-config, else trained by `recipe` ("module:Class", imported only to train)."""
    from osp_core.train.config import config_to_dict, load_config

    overrides = {**options.overrides(), **own}
    config = load_config(config_class, options.preset, merge_overrides(config_class, overrides, options.set_values), group=group)
    if options.print_config:
        from osp_core.io.jsonfile import dumps

        typer.echo(dumps(config_to_dict(config), indent=2))
        return
    from osp_core.errors import InputError
    from osp_core.train.plan import plan_training

    try:
        plan_training(config)  # every refusal that needs no model, before torch is imported
    except InputError as exc:
        exc.quiet = not is_main_process()  # every rank refuses the same input: rank 0 says it once
        raise
    import importlib

    from osp_core.train.trainer import Trainer

    module, name = recipe.split(":")
    recipe_class = getattr(importlib.import_module(module), name)
    summary = Trainer(config, recipe_class(config), reporter=console_reporter()).train()
    finish(summary, options.json_out)


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
            buckets = payload.get("buckets") or {}
            shapes = f", buckets {', '.join(f'{name} ({count})' for name, count in buckets.items())}" if buckets else ""
            err.print(
                f"[bold]{payload['recipe']} training[/]: {payload['samples']} samples{shapes}, {payload['processes']} process(es) "
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
