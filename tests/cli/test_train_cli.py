"""`osp vae train` / `osp t2v train` as registered in the root CLI."""

from __future__ import annotations

import pytest

from tests.conftest import run_osp


@pytest.mark.parametrize("group", ["vae", "t2v", "edit"])
def test_train_commands_are_reachable_from_osp(group):
    proc = run_osp(group, "train", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--preset" in proc.stdout and "--resume" in proc.stdout


def test_each_train_help_says_what_its_command_takes():
    """The help a user reads matches the command: t2v's --model takes builtin:NAME, edit train
    has no --strategy / --ema / --pretrained (it trains under DDP), only the VAE reads a folder."""
    helps = {group: run_osp(group, "train", "--help") for group in ("vae", "t2v", "edit")}
    assert all(proc.returncode == 0 for proc in helps.values()), {g: p.stderr for g, p in helps.items()}
    text = {group: " ".join(proc.stdout.split()) for group, proc in helps.items()}  # rich wraps lines
    assert "builtin:NAME" in text["t2v"].split("--pretrained")[0]
    assert not any(flag in text["edit"] for flag in ("--strategy", "--ema", "--pretrained", "--sequence-parallel"))
    assert "video folder" in text["vae"] and "video folder" not in text["t2v"] and "video folder" not in text["edit"]
    assert "Force cpu" not in text["t2v"]
