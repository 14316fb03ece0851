"""Training runs that cannot mix, lose or misread each other (issue 13): an output folder that
holds a run, --set values a named option replaces, bad learning rates, resuming with another
model config, unreadable checkpoints and RNG states, the repository's text encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from osp_core.errors import InputError
from osp_core.train.checkpoint import CheckpointUnreadableError, list_checkpoints
from osp_core.train.config import T2VTrainConfig, VAETrainConfig, check_overrides, load_config
from osp_core.train.trainer import Trainer
from osp_core.train.vae_recipe import VAERecipe
from tests.conftest import assert_one_line_error

from .helpers import checkpoint_weights

FAST = {"run.checkpoint_every": 1, "run.keep_last": 0, "loss.disc_start": 1000}


def _vae(data: Path, out: Path, events: list | None = None, **extra) -> dict:
    cfg = load_config(VAETrainConfig, "debug", {"data.data": str(data), "run.output_dir": str(out), **FAST, **extra}, group="vae")
    return Trainer(cfg, VAERecipe(cfg), reporter=lambda event, payload: events.append((event, payload)) if events is not None else None).train()


def test_a_folder_that_holds_a_run_is_refused_without_resume_or_overwrite(clips, tmp_path, osp_in_process):
    out = tmp_path / "rr2"
    _vae(clips, out, **{"run.max_steps": 3, "run.seed": 0})
    before = checkpoint_weights(list_checkpoints(out / "checkpoints")[-1])
    proc = osp_in_process("vae", "train", "--preset", "debug", "--data", str(clips), "-o", str(out), "--max-steps", "2", "--seed", "1")
    assert_one_line_error(proc, "already holds a training run", "step 3", "--resume latest", "--overwrite")
    assert proc.returncode == 2
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000001", "step-00000002", "step-00000003"]
    after = checkpoint_weights(list_checkpoints(out / "checkpoints")[-1])
    assert all(torch.equal(before[k], after[k]) for k in before)
    # --overwrite starts over: the old run's checkpoints (step 3 included) and summary are gone
    summary = _vae(clips, out, **{"run.max_steps": 2, "run.seed": 1, "run.overwrite": True})
    assert summary["steps"] == 2 and [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000001", "step-00000002"]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    with pytest.raises(InputError, match="--resume and --overwrite"):
        _vae(clips, out, **{"run.max_steps": 2, "run.resume": "latest", "run.overwrite": True})
    # the text-to-video trainer refuses the same way, before loading any model
    (tmp_path / "t2v" / "checkpoints" / "step-00000002").mkdir(parents=True)
    (tmp_path / "t2v" / "checkpoints" / "step-00000002" / "trainer_state.json").write_text("{}")
    proc = osp_in_process("t2v", "train", "--preset", "debug", "--data", str(clips), "-o", str(tmp_path / "t2v"), "--model", str(tmp_path / "no-model"))
    assert_one_line_error(proc, "already holds a training run", "--resume latest", "--overwrite")


def test_set_values_and_learning_rates_are_checked(clips, tmp_path, osp_in_process):
    base = ("vae", "train", "--preset", "debug", "--data", str(clips), "-o", str(tmp_path / "out"))
    for extra, needles in (
        (("--set", "run.max_steps=abc", "--max-steps", "3"), ("run.max_steps", "integer")),  # replaced by --max-steps, still checked
        (("--set", "run.max_stepz=3"), ("run.max_stepz",)),
        (("--lr", "-1"), ("optim.lr", "--lr")),
        (("--lr", "0"), ("optim.lr",)),
        (("--set", "optim.lr=nan"), ("optim.lr", "finite")),
        (("--set", "optim.betas=[0.5, 1.5]"), ("optim.betas",)),
    ):
        proc = osp_in_process(*base, *extra)
        assert_one_line_error(proc, *needles)
        assert proc.returncode == 2, extra
    assert not (tmp_path / "out").exists()
    check_overrides(VAETrainConfig, {"run.max_steps": 3, "optim.betas": [0.5, 0.9], "loss.disc_lr": None})
    with pytest.raises(InputError, match="is a section"):
        check_overrides(VAETrainConfig, {"run": 3})


def test_objective_and_validation_errors_name_the_option_given(clips, tmp_path, osp_in_process):
    base = ("t2v", "train", "--preset", "debug", "--data", str(clips), "-o", str(tmp_path / "out"), "--model", str(tmp_path))
    proc = osp_in_process(*base, "--set", "diffusion.num_train_timesteps=0")
    assert_one_line_error(proc, "num_train_timesteps must be >= 1", "--set diffusion.num_train_timesteps=")
    assert "timestep_band" not in proc.stderr
    proc = osp_in_process(*base, "--validation-steps", "0")
    assert_one_line_error(proc, "--validation-steps", "--validation-steps 4")
    assert "--steps 4" not in proc.stderr.replace("--validation-steps 4", "")
    assert not (tmp_path / "out").exists()


def test_resuming_with_another_model_config_is_one_line(clips, tmp_path, osp_in_process):
    from osp_core.train.config import presets_root

    out = tmp_path / "run"
    _vae(clips, out, **{"run.max_steps": 1})
    wider = json.loads((presets_root() / "vae" / "tiny-vae.json").read_text())
    wider["hidden_size"] = 2 * wider["hidden_size"]
    (tmp_path / "wide.json").write_text(json.dumps(wider))
    proc = osp_in_process("vae", "train", "--preset", "debug", "--data", str(clips), "-o", str(out), "--max-steps", "2", "--resume", "latest", "--model-config", str(tmp_path / "wide.json"))
    assert_one_line_error(proc, "another model config", "hidden_size", "step-00000001", "config.json", "wide.json")
    assert proc.returncode == 3


def test_unreadable_checkpoints_are_named_and_latest_falls_back(clips, tmp_path, osp_in_process):
    out = tmp_path / "run"
    _vae(clips, out, **{"run.max_steps": 2})
    step1, step2 = list_checkpoints(out / "checkpoints")
    weights = step2 / "model" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    # named explicitly, the truncated checkpoint is one line naming the file
    proc = osp_in_process("vae", "train", "--preset", "debug", "--data", str(clips), "-o", str(out), "--max-steps", "4", "--resume", str(step2))
    assert_one_line_error(proc, str(weights), "unreadable")
    assert proc.returncode == 3
    # with --resume latest the newest checkpoint that loads is taken, and the console says so
    events: list = []
    summary = _vae(clips, out, events, **{"run.max_steps": 3, "run.resume": "latest"})
    assert summary["steps"] == 3 and summary["steps_this_run"] == 2  # continued from step 1
    warnings = [p["message"] for e, p in events if e == "warning"]
    assert len(warnings) == 1 and str(weights) in warnings[0] and "step-00000001" in warnings[0]
    start = next(p for e, p in events if e == "start")
    assert start["resumed_from"].endswith("step-00000001")
    # a corrupt RNG state is refused too (Accelerate would skip it silently)
    rng = step1 / "accelerate" / "random_states_0.pkl"
    rng.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointUnreadableError, match="random_states_0.pkl"):
        _vae(clips, out, **{"run.max_steps": 4, "run.resume": str(step1)})


def test_t2v_train_takes_the_repositorys_text_encoder(clips, tiny_repo, tmp_path):
    """Without --text-encoder, the --model repository's text_encoder/ is used (as sampling
    does), not DeepFloyd/t5-v1_1-xxl (which is not available offline)."""
    from osp_core.train.t2v_recipe import T2VRecipe

    overrides = {"data.data": str(clips), "run.output_dir": str(tmp_path), "model.model": str(tiny_repo), "model.pretrained": "tiny", "run.max_steps": 1, "data.use_image_num": 0}
    cfg = load_config(T2VTrainConfig, "debug", overrides, group="t2v")
    assert cfg.model.text_encoder == ""
    recipe = T2VRecipe(cfg)
    summary = Trainer(cfg, recipe, reporter=lambda event, payload: None).train()
    assert summary["steps"] == 1 and recipe.t5_id == f"{tiny_repo}/text_encoder"
    assert recipe.text_encoder.config.d_model == 16
