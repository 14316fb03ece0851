"""`osp` root: wires the command groups and maps library errors to one-line messages."""

from __future__ import annotations

import os
import sys

from typing import Annotated

import typer

from . import caption, data, eval, t2v, vae

app = typer.Typer(
    name="osp",
    help="Open-Sora-Plan v1.1.0: text-to-video, video VAE, training, editing and captioning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from osp_core import __version__

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
app.add_typer(caption.app)  # one command, `osp caption`


def _click_exception_types() -> tuple[type[BaseException], ...]:
    """Click's usage-error base class, wherever this typer version keeps click (typer >= 0.25
    vendors it as `typer._click`, older ones use the `click` package)."""
    found = {cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"}
    try:
        import click

        found.add(click.ClickException)
    except ImportError:  # pragma: no cover - typer without the click package
        pass
    return tuple(found)


def run() -> None:
    """Console-script entry point. Set OSP_DEBUG=1 to see tracebacks."""
    from osp_core.errors import OSPError

    from .console import install_interrupt_handler

    debug = os.environ.get("OSP_DEBUG", "") not in ("", "0")
    install_interrupt_handler()
    try:
        # Without standalone mode click returns exit codes (typer.Exit, Ctrl-C -> 130) instead
        # of exiting, and raises usage errors for us to show.
        code = app(standalone_mode=False)
    except OSPError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        code = 130
    except _click_exception_types() as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        code = 130
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (set OSP_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
    code = code if isinstance(code, int) else 0
    if code == 130:
        typer.echo("interrupted", err=True)
    sys.exit(code)


if __name__ == "__main__":
    run()
