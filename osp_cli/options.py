"""Option types shared by every command (`--model`, `--device`, `--dtype`, `--json`), and the
rules every option follows (`harden_command`)."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import typer

from osp_core.hub import DEFAULT_REPO
from osp_core.pipelines.t2v_inputs import SPEED_HELP

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Hub repo id, local model folder, or builtin:NAME."),
]
DEFAULT_MODEL = DEFAULT_REPO
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="cuda, cuda:N, npu, npu:N, mps or cpu (default: best available)."),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option("--dtype", help="fp32, fp16 or bf16 (default: bf16 on NPU/recent CUDA, fp16 on older CUDA, fp32 on CPU; osp t2v sample and osp edit: bf16 on CPUs with bf16 matrix units)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
TileOpt = Annotated[
    bool | None,
    typer.Option("--tile/--no-tile", help="VAE tiling (default: on when the video exceeds the tile size)."),
]

# how a denoising run skips work: `osp t2v sample` and `osp edit`
CacheOpt = Annotated[
    str | None,
    typer.Option("--cache", help="Reuse work between steps: none, pab (Pyramid Attention Broadcast), teacache or magcache (skip whole steps; need the model's fitted values), fbcache (First Block Cache), easycache (adaptive, no calibration) or fastercache (reuses the unconditional half of guidance). Default: the --speed profile's, else none.", show_default=False),
]
CacheThresholdOpt = Annotated[
    float | None,
    typer.Option("--cache-threshold", help="Threshold of teacache, fbcache, magcache or easycache, in [0, 1]: higher skips more steps, 0 never skips. Default: the --speed profile's (with its cache), else teacache the model's (else 0.1), fbcache 0.05, magcache 0.06, easycache 0.05.", show_default=False),
]
GuidanceIntervalOpt = Annotated[
    str | None,
    typer.Option("--guidance-interval", help="LO,HI: classifier-free guidance only at steps whose noise level (timestep / 1000 training timesteps: 0 clean, 1 pure noise) is in [LO, HI]; elsewhere the conditional half runs alone. Default: the --speed profile's, else every step.", show_default=False),
]
SpeedOpt = Annotated[str | None, typer.Option("--speed", help=SPEED_HELP + " Default: default.", show_default=False)]

# the shapes world's vocabulary: `osp data synth` draws it, `osp eval shapes` judges it
ColorOpt = Annotated[
    list[str] | None,
    typer.Option("--color", help="Add a colour to the shapes world: NAME=R,G,B (repeatable), e.g. orange=235,150,40.", show_default=False),
]
ColorsOpt = Annotated[
    list[str] | None,
    typer.Option("--colors", help="Only these colours (comma list or repeated; built-in: red, green, blue, yellow, white; default: all, with the --color ones).", show_default=False),
]
ShapeOpt = Annotated[
    list[str] | None,
    typer.Option("--shape", help="Only these shapes (comma list or repeated) of circle, square, triangle, star, diamond (default: circle, square, triangle).", show_default=False),
]

Job = TypeVar("Job")


def job_from_options(job_type: type[Job], options: Mapping[str, Any], **given: Any) -> Job:
    """The `job_type` dataclass a command's options describe: each option named like one of its
    fields fills that field; `given` fills the fields whose option is named otherwise or needs
    converting."""
    names = {field.name for field in dataclasses.fields(job_type)} - given.keys()  # type: ignore[arg-type]
    return job_type(**{name: value for name, value in options.items() if name in names}, **given)


# --- what every command gets, applied once to the built command tree ----------------------


def _finite_float(ctx: Any, param: Any, value: Any) -> Any:
    """Refuse nan and inf in a float option (Python's float() accepts them; nothing in osp
    can use them, and JSON cannot even store them)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for item in values:
        if isinstance(item, float) and not math.isfinite(item):
            raise typer.BadParameter(f"{item} is not a finite number", ctx=ctx, param=param)
    return value


def _is_float_option(param: Any) -> bool:
    descriptor = getattr(param, "type_descriptor", None)  # typer >= 0.25 (its own types)
    annotation = getattr(descriptor, "annotation", None)
    if annotation is not None:
        return annotation is float or typing.get_args(annotation) == (float,)
    return "Float" in type(getattr(param, "type", None)).__name__  # click's FLOAT / FloatRange


def _with_finite_check(callback: Callable[..., Any] | None) -> Callable[..., Any]:
    def check(ctx: Any, param: Any, value: Any) -> Any:
        value = _finite_float(ctx, param, value)
        return callback(ctx, param, value) if callback is not None else value

    return check


def harden_command(command: Any) -> Any:
    """Apply osp's rules for options to every command under `command` (a click command tree
    built from the Typer apps), so no command can forget them:

    - every float option refuses nan and inf (a one-line usage error, exit 2);
    - flags (`--json`, `--tile/--no-tile`, `--help`, ...) show no `<bool>` value in help
      screens: they take none.
    """
    commands = [command]
    while commands:
        current = commands.pop()
        commands.extend(getattr(current, "commands", {}).values())
        params = list(current.params)
        help_option = current.get_help_option(current.context_class(current, info_name=current.name))
        if help_option is not None:
            params.append(help_option)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
            elif _is_float_option(param) and not getattr(param, "_osp_finite", False):
                param.callback = _with_finite_check(param.callback)
                param._osp_finite = True
    return command
