"""`osp --help`, command help and the refusals that need no model start without torch,
diffusers or transformers (importing them costs seconds before any option is read)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("torch", "diffusers", "transformers")
BLOCKED_EXIT = 97

# runs `osp ARGS` (the console script's entry) with a finder that stops the process the moment
# a heavy library is imported, naming it
_BLOCKED_OSP = textwrap.dedent(
    f"""
    import os, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {HEAVY!r}:
                sys.stderr.write(f"imported {{name}}\\n")
                sys.stderr.flush()
                os._exit({BLOCKED_EXIT})
            return None

    sys.meta_path.insert(0, Block())
    sys.argv = ["osp", *sys.argv[1:]]
    from osp_cli.main import run
    run()
    """
)


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "OSP_DEBUG"}, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _osp(*args: str, blocked: bool, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", _BLOCKED_OSP, *args] if blocked else [sys.executable, "-m", "osp_cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300, cwd=cwd)


def test_importing_the_cli_imports_no_torch():
    code = f"import sys, osp_cli.main; print([m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["t2v", "sample", "--help"], ["vae", "encode", "--help"], ["edit", "--help"]])
def test_help_imports_no_torch(args):
    proc = _osp(*args, blocked=True)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


def _refusals(tmp_path: Path) -> list[list[str]]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a-cat-7.mp4").write_bytes(b"an earlier run")
    return [
        ["t2v", "sample", "a cat", "--model", "builtin:shapes", "--frames", "6"],  # bad --frames
        ["t2v", "sample", "a cat", "--model", "builtin:shapes", "--height", "30"],  # bad size
        ["t2v", "sample", "--prompts", str(tmp_path / "missing.txt")],  # no prompt file
        ["t2v", "sample", "a cat", "--model", "builtin:shapes", "--seed", "7", "-o", str(out)],  # would overwrite
        ["t2v", "calibrate-cache", "a cat", "--model", "builtin:shapes", "--degree", "0"],
        ["vae", "encode", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "x.safetensors")],
        ["vae", "decode", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x.mp4")],
        ["edit", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "x.mp4"), "--box", "0,0,8,8", "--mask", "m.png"],
    ]


def test_refusals_that_need_no_model_import_no_torch(tmp_path):
    """Each refusal gives the same line and exit code as an unguarded run, and imports none of
    the heavy libraries."""
    for args in _refusals(tmp_path):
        blocked = _osp(*args, blocked=True, cwd=tmp_path)
        assert blocked.returncode != BLOCKED_EXIT, f"osp {' '.join(args)}: {blocked.stderr.strip()}"
        plain = _osp(*args, blocked=False, cwd=tmp_path)
        assert plain.returncode == blocked.returncode != 0, (args, plain.stderr, blocked.stderr)
        assert plain.stderr == blocked.stderr, args
        assert "Traceback" not in blocked.stderr and len(blocked.stderr.strip().splitlines()) == 1, blocked.stderr
