"""The `osp` entry point: exit codes for usage errors, Ctrl-C and --version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from osp_core import __version__
from tests.conftest import run_osp


def test_version():
    proc = run_osp("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"osp {__version__}"


def test_usage_errors_exit_2_with_clicks_message():
    proc = run_osp("vae", "encode", "clip.mp4")  # missing -o
    assert proc.returncode == 2 and "Missing option" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_osp("t2v", "sample", "x", "--frames", "abc")
    assert proc.returncode == 2 and "--frames" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("signum", "code", "last_line"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_stop_cleanly_and_leave_no_partial_file(tmp_path, signum, code, last_line):
    """Ctrl-C, and SIGTERM as a scheduler's pre-emption (and torchrun, stopping the other ranks)
    sends it, clean up alike (SIGTERM used to kill at once, leaving empty folders behind)."""
    out = tmp_path / "data"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "osp_cli", "data", "synth", "--out", str(out), "--num", "2000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.time() + 120
    # stop once the run is under way: a finished clip, not a temporary (.NAME.tmp.mp4), which
    # the stop removes with the then-empty folders (pathlib's glob matches dot files)
    while not any(p for p in (out / "videos").glob("*.mp4") if not p.name.startswith(".")):
        assert time.time() < deadline, "no clip written in time"
        time.sleep(0.2)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code and stderr.strip().splitlines()[-1] == last_line, stderr
    assert not (out / "annotations.json").exists()  # written last, atomically
    assert not [p for p in (out / "videos").iterdir() if p.name.startswith(".")], "temporary file left"


def test_a_swallowed_ctrl_c_still_stops_at_the_next_progress_update(monkeypatch):
    """C code may swallow the KeyboardInterrupt of a Ctrl-C; the remembered interrupt then
    stops the run at its next progress update."""
    from osp_cli import console

    monkeypatch.setattr(console, "_interrupted", False)
    with console.progress() as bar:
        task = bar.add_task("work", total=3)
        bar.advance(task)
        monkeypatch.setattr(console, "_interrupted", True)
        with pytest.raises(KeyboardInterrupt):
            bar.advance(task)


def _commands():
    """(path, click command) of every `osp` command, with osp's option rules applied."""
    import typer

    from osp_cli.main import app
    from osp_cli.options import harden_command

    root = harden_command(typer.main.get_command(app))
    found, todo = [], [((), root)]
    while todo:
        path, command = todo.pop()
        found.append((path, command))
        todo.extend(((*path, name), sub) for name, sub in getattr(command, "commands", {}).items())
    return root, found


def test_usage_errors_are_one_error_line_with_the_help_hint():
    from tests.conftest import assert_one_line_error

    for args, needle in (
        (("vae", "encode", "clip.mp4"), "Missing option '--output'"),
        (("vae", "encode", "clip.mp4", "-o", "z.safetensors", "--fram", "5"), "--fram"),
        (("t2v", "sample", "x", "--frames", "abc"), "--frames"),
        (("bogus",), "No such command"),
        # click knows no command for an option without its value: the hint still names it
        (("t2v", "sample", "x", "--cache"), "'--cache' requires an argument (see 'osp t2v sample --help')"),
    ):
        proc = run_osp(*args)
        assert proc.returncode == 2, proc.stderr
        assert_one_line_error(proc, needle, "--help")
        assert "Possible options: --help" not in proc.stderr
        assert proc.stderr.startswith("error: ")


def test_every_float_option_refuses_nan_and_inf():
    """One rule for every float option of every command (not a check per command)."""
    root, commands = _commands()
    checked = []
    for path, command in commands:
        for param in command.params:
            if getattr(param, "_osp_finite", False):
                option = next(o for o in param.opts if o.startswith("--"))
                for bad in ("nan", "inf", "-inf"):
                    with pytest.raises(Exception, match="not a finite number") as info:
                        root.main([*path, option, bad], prog_name="osp", standalone_mode=False)
                    assert info.value.exit_code == 2
                checked.append(f"{' '.join(path)} {option}")
    # the float options of the commands, including those added later, are all covered
    for expected in ("vae decode --fps", "vae train --lr", "t2v sample --guidance", "t2v sample --fps", "t2v train --text-dropout", "caption --min-motion"):
        assert expected in checked, checked
    proc = run_osp("vae", "decode", "z.safetensors", "-o", "out.mp4", "--fps", "nan")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_help_screens_show_no_bool_placeholder_on_flags(capsys):
    root, commands = _commands()
    for path, _ in commands:
        root.main([*path, "--help"], prog_name="osp", standalone_mode=False)
        text = capsys.readouterr().out
        assert "--help" in text and "<bool>" not in text, (path, text)


def test_osp_debug_shows_the_traceback_behind_the_one_line_error(tmp_path):
    """README: `OSP_DEBUG=1` shows the traceback; the exit code is the same as without it."""
    args = ("vae", "encode", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "z.safetensors"), "--model", "builtin:shapes")
    plain = run_osp(*args)
    debug = run_osp(*args, env={"OSP_DEBUG": "1"})
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()  # then the same line


def test_print_config_prints_the_resolved_tree_and_writes_nothing(osp_in_process, tmp_path):
    import json

    from osp_core.train.config import VAETrainConfig, config_to_dict, load_config

    proc = osp_in_process("vae", "train", "--preset", "debug", "--set", "optim.lr=0.25", "-o", str(tmp_path / "run"), "--print-config")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["optim"]["lr"] == 0.25
    expected = json.loads(json.dumps(config_to_dict(load_config(VAETrainConfig, "debug", {"optim.lr": 0.25}, group="vae"))))  # tuples as JSON lists
    assert {k: printed[k] for k in ("optim", "model", "loss")} == {k: expected[k] for k in ("optim", "model", "loss")}
    assert not (tmp_path / "run").exists()


def test_counts_are_said_in_the_singular_for_one():
    from osp_cli.console import counted

    assert (counted(1, "frame"), counted(17, "frame"), counted(0, "edit")) == ("1 frame", "17 frames", "0 edits")


_RANK_PROGRAM = """
import atexit, sys
import torch.distributed
import typer
from osp_cli.errors import run_app

atexit.register(lambda: print("teardown ran", flush=True))
app = typer.Typer(add_completion=False)

@app.command()
def job() -> None:
    print("written", end="")  # unflushed: the exit must flush it
    raise typer.Exit(int(sys.argv[1]))

run_app(app, args=[])
"""


@pytest.mark.parametrize(("world", "code", "teardown"), [("2", 0, False), ("2", 3, True), ("1", 0, True)])
def test_a_torchrun_rank_ends_without_the_interpreters_teardown(world, code, teardown):
    """A rank of a torchrun launch (WORLD_SIZE > 1, torch.distributed loaded) that finished
    exits with everything it printed but skips the teardown where gloo's threads can abort it;
    a failing rank and a plain process end as usual."""
    env = {**os.environ, "WORLD_SIZE": world}
    proc = subprocess.run([sys.executable, "-c", _RANK_PROGRAM, str(code)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.startswith("written") and ("teardown ran" in proc.stdout) is teardown, proc.stdout
