"""`osp vae train` / `osp t2v train` as registered in the root CLI."""

from __future__ import annotations

import pytest

from tests.conftest import run_osp


@pytest.mark.parametrize("group", ["vae", "t2v"])
def test_train_commands_are_reachable_from_osp(group):
    proc = run_osp(group, "train", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--preset" in proc.stdout and "--resume" in proc.stdout
