"""`osp` root: wires the command groups and maps library errors to one-line messages."""

from __future__ import annotations

from typing import Annotated

import typer

from . import caption, data, edit, eval, serve, t2v, vae

app = typer.Typer(
    name="osp",
    help="Open-Sora-Plan v1.1.0: text-to-video, video VAE, training, editing and captioning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from osp_core.version import __version__

        typer.echo(f"osp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Open-Sora-Plan v1.1.0: text-to-video, video VAE, training, editing and captioning."""


app.add_typer(vae.app, name="vae")
app.add_typer(data.app, name="data")
app.add_typer(eval.app, name="eval")
app.add_typer(t2v.app, name="t2v")
app.add_typer(edit.app, name="edit")
app.add_typer(caption.app)  # one command, `osp caption`
app.command("serve")(serve.serve)


def run() -> None:
    """Console-script entry point. Set OSP_DEBUG=1 to see tracebacks."""
    from .errors import run_app

    run_app(app)


if __name__ == "__main__":
    run()
