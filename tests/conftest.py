"""Shared fixtures: the reference data beside the checkout and a real `osp` subprocess runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("OSP_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))


def in_ci() -> bool:
    """True under CI (env CI=true, as GitHub Actions, GitLab and most runners set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_or_fail(reason: str, allow_module_level: bool = False) -> NoReturn:
    """Skip a test whose prerequisite is missing here; under CI fail instead, so that a green CI
    run means every test ran (a missing reference or browser is a broken CI set-up)."""
    if in_ci():
        pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # before the test's fixtures: a module fixture that launches ranks is checked against the
    # test that first needs it
    from tests import distributed

    distributed.CURRENT_TEST = item


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`../shared/reference` (or $OSP_REFERENCE_DIR); tests skip when it is absent (fail under CI)."""
    if not REFERENCE.is_dir():
        skip_or_fail(f"reference data not found at {REFERENCE} (set OSP_REFERENCE_DIR)")
    return REFERENCE


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on shared CI cores: thread hand-offs cost far more than they save. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_osp(*args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m osp_cli ARGS` as a user would; returns the completed process (text)."""
    inherited = {k: v for k, v in os.environ.items() if k != "OSP_DEBUG"}  # a test asks for it by `env`
    full_env = {**inherited, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "osp_cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
        input=input,
    )


@pytest.fixture()
def osp_in_process(capsys, monkeypatch):
    """`osp_in_process(*args)` runs `osp ARGS` inside this process, through the same entry point
    and error handling as the console script (without the Ctrl-C handler): for the many quick
    refusals, which would otherwise each pay a process start and the torch import. Returns
    what `run_osp` returns."""
    from osp_cli.errors import run_app
    from osp_cli.main import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OSP_DEBUG", raising=False)

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_app(app, args=list(args), prog_name="osp", catch_interrupts=False)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["osp", *args], int(exit_info.value.code or 0), out.out, out.err)

    return run


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> None:
    """A user-facing failure: non-zero exit (exactly `code` when given: 2 input, 3 model loading,
    4 device), one line on stderr, no traceback, naming the problem."""
    assert proc.returncode != 0, f"expected failure, got exit 0; stdout={proc.stdout!r}"
    assert code is None or proc.returncode == code, f"expected exit {code}, got {proc.returncode}: {proc.stderr!r}"
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, f"expected one line on stderr, got: {proc.stderr!r}"
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"
