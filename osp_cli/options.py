"""Option types shared by every command (`--model`, `--device`, `--dtype`, `--json`)."""

from __future__ import annotations

from typing import Annotated

import typer

from osp_core.hub import DEFAULT_REPO

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
    typer.Option("--dtype", help="fp32, fp16 or bf16 (default: bf16 on NPU/recent CUDA, fp16 on older CUDA, fp32 on CPU)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
TileOpt = Annotated[
    bool | None,
    typer.Option("--tile/--no-tile", help="VAE tiling (default: on when the video exceeds the tile size)."),
]
