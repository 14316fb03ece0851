"""`osp vae`: encode, decode and round-trip videos with the CausalVideoVAE."""

from __future__ import annotations

import typer

app = typer.Typer(help="CausalVideoVAE: encode videos to latents, decode latents, round trips.", no_args_is_help=True)
