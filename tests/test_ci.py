"""Under CI (env CI=true) a missing prerequisite fails instead of skipping, and `.ci/run` refuses
to start without the reference data: a green CI run means the parity and browser tests ran."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.conftest import ROOT


def _pytest(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("CI", "OSP_REFERENCE_DIR")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], capture_output=True, text=True, cwd=ROOT, env={**full_env, **env}, timeout=300
    )


def test_a_missing_reference_fails_under_ci_and_skips_elsewhere(tmp_path):
    test = "tests/test_memory.py::test_vae_activations_follow_the_benchmark"  # needs the reference data
    missing = {"OSP_REFERENCE_DIR": str(tmp_path / "no-reference")}
    local = _pytest(test, env=missing)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-2000:]
    ci = _pytest(test, env={**missing, "CI": "true"})
    assert ci.returncode != 0 and "1 error" in ci.stdout, ci.stdout[-2000:]  # its fixture fails
    assert "reference data not found" in ci.stdout and "required under CI=true" in ci.stdout


def test_a_missing_chromium_fails_the_browser_tests_under_ci(tmp_path):
    no_browser = {"PATH": str(tmp_path)}  # neither chromium nor chromedriver on PATH
    local = _pytest("tests/serve/test_serve_browser.py", env=no_browser)
    assert local.returncode in (0, 5) and "1 skipped" in local.stdout, local.stdout[-2000:]  # 5: the module skipped whole
    ci = _pytest("tests/serve/test_serve_browser.py", env={**no_browser, "CI": "true"})
    assert ci.returncode not in (0, 5) and "headless Chromium not found" in ci.stdout and "required under CI=true" in ci.stdout, ci.stdout[-2000:]


def test_ci_run_stops_at_once_without_the_reference_data(tmp_path):
    """A clone with no ../shared beside it: one line naming the missing folder, before anything
    is installed or tested."""
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", clone / ".ci" / "run")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "OSP_REFERENCE_DIR")}
    proc = subprocess.run(["bash", str(clone / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: reference data not found at ../shared/reference"), proc.stderr
    assert not (clone / ".venv").exists()
