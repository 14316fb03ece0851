"""The train commands share one options object: every common option is declared once
(`osp_core.train.options.TrainOptions`) and reaches the trainer through one hand-off."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from osp_core.errors import InputError
from osp_core.train.options import TrainOptions

from tests.conftest import ROOT

COMMANDS = {"t2v": "osp_cli.t2v_train", "vae": "osp_cli.vae_train", "edit": "osp_cli.edit_train"}


def _train(module: str):
    import importlib

    return importlib.import_module(module).train


def _params(module: str) -> dict[str, object]:
    command = typer.main.get_command(_app(_train(module))).commands["train"]
    return {param.name: param for param in command.params}


def _app(command) -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command(name="train")(command)
    app.command(name="other")(lambda: None)  # a group, so `train` keeps its name
    return app


@pytest.mark.parametrize("group", sorted(COMMANDS))
def test_every_common_option_of_a_train_command_is_the_one_declaration(group):
    params = _params(COMMANDS[group])
    fields = {spec.name: spec for spec in dataclasses.fields(TrainOptions)}
    common = [name for name in params if name in fields]
    assert {"preset", "data", "output", "max_steps", "resume", "overwrite", "set_values", "print_config", "json_out"} <= set(common)
    for name in common:
        param, spec = params[name], fields[name]
        flags = spec.metadata["flags"]  # e.g. ("--output", "-o") or ("--ema/--no-ema",)
        assert sorted(param.opts) == sorted(f.split("/")[0] for f in flags), name
        assert param.secondary_opts == [f.split("/")[1] for f in flags if "/" in f], name
        wanted = _train(COMMANDS[group]).option_help.get(name, spec.metadata["help"])
        assert (param.help, param.default) == (wanted, spec.default), name
    # the preset first, --set / --print-config / --json last, as each command has always listed them
    names = list(params)
    assert names[0] == "preset" and names[-3:] == ["set_values", "print_config", "json_out"]


def test_the_common_options_read_the_same_in_every_help():
    """Except where an option means something else for one command (the VAE also reads a video
    folder and refuses fsdp): those help lines say so."""
    replaced = {group: set(_train(module).option_help) for group, module in COMMANDS.items()}
    assert replaced == {"t2v": set(), "edit": set(), "vae": {"data", "strategy"}}
    shared = None
    for group, module in COMMANDS.items():
        params = _params(module)
        mine = {name: (tuple(p.opts), p.help, p.default) for name, p in params.items() if name in {f.name for f in dataclasses.fields(TrainOptions)} and name not in replaced[group]}
        shared = mine if shared is None else {k: v for k, v in shared.items() if k in mine}
        assert all(mine[k] == v for k, v in shared.items())
    assert len(shared) >= 19  # t2v and vae add --ema and --strategy, t2v --sequence-parallel
    helps = {group: {name: p.help for name, p in _params(module).items()} for group, module in COMMANDS.items()}
    assert "video folder" in helps["vae"]["data"] and not any("video folder" in helps[g]["data"] or "VAE" in helps[g]["data"] for g in ("t2v", "edit"))
    assert "fsdp is refused" in helps["vae"]["strategy"] and "fsdp (FSDP2" in helps["t2v"]["strategy"]
    assert all("cuda" in helps[g]["device"] and not helps[g]["device"].startswith("Force") for g in COMMANDS)


def test_a_new_train_command_declares_only_its_own_options():
    """What a fourth train command (e.g. LoRA) writes: its own option, nothing else."""
    from osp_cli.train import train_command

    seen = {}

    @train_command(without=("strategy",), help={"data": "Adapter data."})
    def train(options: TrainOptions, rank: Annotated[int | None, typer.Option("--rank", help="Adapter rank.")] = None) -> None:
        """Train an adapter."""
        seen.update(options=options, rank=rank)

    result = CliRunner().invoke(_app(train), ["train", "--max-steps", "3", "--no-ema", "--rank", "4", "--set", "a.b=1", "-o", "out"])
    assert result.exit_code == 0, result.output
    assert seen["rank"] == 4
    assert seen["options"] == TrainOptions(max_steps=3, ema=False, set_values=["a.b=1"], output="out")
    help_text = CliRunner().invoke(_app(train), ["train", "--help"]).output
    assert "--keep-last" in help_text and "--rank" in help_text and "--strategy" not in help_text and "Train an adapter." in help_text
    assert "Adapter data." in help_text and train.option_help == {"data": "Adapter data."}
    with pytest.raises(TypeError, match="strategy"):
        train_command(without=("strategy",), help={"strategy": "ddp"})(lambda options: None)


def test_options_become_config_keys_in_one_place():
    overrides = TrainOptions(size="24x40", max_steps=5, lr=1e-4, sequence_parallel=2).overrides()
    assert overrides["data.height"] == 24 and overrides["data.width"] == 40
    assert overrides["run.max_steps"] == 5 and overrides["optim.lr"] == 1e-4 and overrides["parallel.sequence_parallel"] == 2
    assert overrides["run.overwrite"] is None and TrainOptions(overwrite=True).overrides()["run.overwrite"] is True
    assert overrides["run.resume"] is None and "preset" not in overrides
    with pytest.raises(InputError):
        TrainOptions(size="wide").overrides()


def test_train_commands_and_their_options_import_no_torch():
    code = "import sys, osp_core.train.options, osp_core.train.plan, osp_cli.train, osp_cli.t2v_train, osp_cli.vae_train, osp_cli.edit_train; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
