"""The `osp` entry point: exit codes for usage errors, Ctrl-C and --version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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


def test_ctrl_c_exits_130_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "data"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "osp_cli", "data", "synth", "--out", str(out), "--num", "2000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.time() + 120
    while not any((out / "videos").glob("*.mp4")):  # interrupt once the run is under way
        assert time.time() < deadline, "no clip written in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "interrupted"
    assert not (out / "annotations.json").exists()  # written last, atomically
    assert not [p for p in (out / "videos").iterdir() if p.name.startswith(".")], "temporary file left"


def test_a_swallowed_ctrl_c_still_stops_at_the_next_progress_update(monkeypatch):
    """C code may swallow the KeyboardInterrupt of a Ctrl-C; the remembered interrupt then
    stops the run at its next progress update."""
    import pytest

    from osp_cli import console

    monkeypatch.setattr(console, "_interrupted", False)
    with console.progress() as bar:
        task = bar.add_task("work", total=3)
        bar.advance(task)
        monkeypatch.setattr(console, "_interrupted", True)
        with pytest.raises(KeyboardInterrupt):
            bar.advance(task)
