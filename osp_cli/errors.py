"""How `osp` ends: every failure is one `error: ...` line on stderr and an exit code.

osp_core errors carry their own message, hint and exit code (2 input, 3 model loading, 4
device); command-line usage errors (a missing or unknown option, a value of the wrong type)
exit 2 with the command's help as the hint; anything else is one line naming the exception,
and `OSP_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import typer


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


def usage_error_line(exc: Any) -> str:
    """One line for a click usage error: click's message (its lines joined, no final period)
    and, when the failing command is known, where its help is."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None and getattr(ctx, "command_path", None) else ""
    return f"error: {message}{hint}"


def run_app(app: typer.Typer, *, args: list[str] | None = None, prog_name: str | None = None, catch_interrupts: bool = True) -> NoReturn:
    """Run `app` as the program: parse `args` (default sys.argv), run the command, exit with
    its code (SystemExit).

    `catch_interrupts` installs osp's Ctrl-C handler (exit 130, "interrupted"); the trainers
    install their own (finish the step, checkpoint, exit 0).
    """
    from osp_core.errors import OSPError

    from .console import install_interrupt_handler
    from .options import harden_command

    debug = os.environ.get("OSP_DEBUG", "") not in ("", "0")
    if catch_interrupts:
        install_interrupt_handler()
    command = harden_command(typer.main.get_command(app))
    try:
        # Without standalone mode click returns exit codes (typer.Exit, Ctrl-C -> 130) instead
        # of exiting, and raises usage errors for us to show.
        code = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except OSPError as exc:
        if debug:
            raise
        if not exc.quiet:
            typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        code = 130
    except _click_exception_types() as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `osp vae` alone: the help is the answer
            exc.show()
        else:
            typer.echo(usage_error_line(exc), err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        code = 130
    except Exception as exc:
        if debug:
            raise
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        typer.echo(f"error: {type(exc).__name__}: {first} (set OSP_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
    code = code if isinstance(code, int) else 0
    if code == 130 and catch_interrupts:
        typer.echo("interrupted", err=True)
    sys.exit(code)
