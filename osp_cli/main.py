"""`osp` root: wires the command groups and maps library errors to one-line messages."""

from __future__ import annotations

import os
import sys

import typer

from . import caption, data, eval, t2v, vae

app = typer.Typer(
    name="osp",
    help="Open-Sora-Plan v1.1.0: text-to-video, video VAE, training, editing and captioning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(vae.app, name="vae")
app.add_typer(data.app, name="data")
app.add_typer(eval.app, name="eval")
app.add_typer(t2v.app, name="t2v")
app.add_typer(caption.app)  # one command, `osp caption`


def run() -> None:
    """Console-script entry point. Set OSP_DEBUG=1 to see tracebacks."""
    from osp_core.errors import OSPError

    debug = os.environ.get("OSP_DEBUG", "") not in ("", "0")
    try:
        app(standalone_mode=False)
    except OSPError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort,):
        typer.echo("aborted", err=True)
        sys.exit(1)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (set OSP_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
