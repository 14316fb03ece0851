"""How `osp` ends: every failure is one `error: ...` line on stderr and an exit code.

osp_core errors carry their own message, hint and exit code (2 input, 3 model loading, 4
device); command-line usage errors (a missing or unknown option, a value of the wrong type)
exit 2 with the command's help as the hint; anything else is one line naming the exception,
and `OSP_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
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


def usage_error_line(exc: Any, fallback_path: str | None = None) -> str:
    """One line for a click usage error: click's message (its lines joined, no final period)
    and where the failing command's help is (`fallback_path` when click's error does not
    know the command, e.g. an option given without its value)."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    message = message.replace(" (Possible options: --help)", "")  # not a suggestion worth making
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None and getattr(ctx, "command_path", None) else fallback_path
    hint = f" (see '{path} --help')" if path else ""
    return f"error: {message}{hint}"


def command_path(command: Any, args: list[str], prog_name: str) -> str:
    """`prog_name` and the subcommands named at the start of `args` ("osp t2v sample")."""
    path = [prog_name]
    for token in args:
        subcommands = getattr(command, "commands", None)
        if not subcommands or token not in subcommands:
            break
        command = subcommands[token]
        path.append(token)
    return " ".join(path)


def run_app(app: typer.Typer, *, args: list[str] | None = None, prog_name: str | None = None, catch_interrupts: bool = True) -> NoReturn:
    """Run `app` as the program: parse `args` (default sys.argv), run the command, exit with
    its code (SystemExit).

    `catch_interrupts` installs osp's Ctrl-C and SIGTERM handler (exit 130, "interrupted"; 143,
    "terminated"); the trainers install their own (finish the step, checkpoint, exit 0).
    """
    from osp_core.errors import OSPError

    from .console import install_interrupt_handler, interrupted_exit_code
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
        if debug:  # the traceback, then the same line and exit code as without it
            traceback.print_exc()
        if not exc.quiet:
            typer.echo(f"error: {exc}", err=True)
        _end(exc.exit_code)
    except KeyboardInterrupt:
        code = interrupted_exit_code()
    except _click_exception_types() as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `osp vae` alone: the help is the answer
            exc.show()
        else:
            argv = sys.argv[1:] if args is None else list(args)
            typer.echo(usage_error_line(exc, command_path(command, argv, prog_name or "osp")), err=True)
        _end(exc.exit_code)
    except typer.Abort:  # click's form of a KeyboardInterrupt
        code = interrupted_exit_code()
    except Exception as exc:
        if debug:
            raise
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        typer.echo(f"error: {type(exc).__name__}: {first} (set OSP_DEBUG=1 for the traceback)", err=True)
        _end(1)
    code = code if isinstance(code, int) else 0
    if code == 130:  # click's code for any KeyboardInterrupt: say which signal it was
        code = interrupted_exit_code()
    if code in (130, 143) and catch_interrupts:
        typer.echo("interrupted" if code == 130 else "terminated", err=True)
    _end(code)


def _end(code: int) -> NoReturn:
    """Exit with `code`. A rank of a torchrun launch that finished its work ends without the
    interpreter's teardown, once what it printed is flushed: gloo's worker threads may still be
    releasing the tensors of a finished collective, which takes the GIL, and a thread that
    reaches for it while the interpreter finalizes aborts the rank ("terminate called without
    an active exception") after all its work is written. The group itself was left already
    (`parallel.layout.process_group`). A rank that fails exits as usual: leaving at once, a
    quiet rank would have torchrun stop the rank that reports the error before it says it."""
    if code == 0 and "torch.distributed" in sys.modules:
        import logging

        from osp_core.parallel.layout import launched_world

        if launched_world()[1] > 1:
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):  # a closed pipe: nothing more to say on it
                    pass
            os._exit(code)
    sys.exit(code)
