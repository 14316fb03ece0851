"""Training runs that cannot mix, lose or misread each other (issue 13): an output folder that
holds a run, --set values a named option replaces, bad learning rates, resuming with another
model config, unreadable checkpoints and RNG states, the repository's text encoder."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from osp_core.errors import InputError
from osp_core.train.checkpoint import CheckpointUnreadableError, list_checkpoints
from osp_core.train.config import T2VTrainConfig, VAETrainConfig, check_overrides, load_config
from osp_core.train.trainer import Trainer
from osp_core.train.vae_recipe import VAERecipe
from tests.conftest import assert_one_line_error
from tests.distributed import torchrun

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
    proc = osp_in_process(*base, "--validation-steps", "5000")
    assert_one_line_error(proc, "--validation-steps must be <= 1000", "pass --validation-steps 1000 or fewer")
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


def test_ctrl_c_in_training_checkpoints_and_a_second_one_stops_at_once(clips, tmp_path):
    """Ctrl-C (SIGINT, raised here from step 1's log line) finishes the step, checkpoints and
    returns; a second one raises KeyboardInterrupt at once: no checkpoint, no summary."""
    import signal

    def interrupt(times: int, events: list):
        def report(event: str, payload: dict) -> None:
            events.append(event)
            if event == "log" and payload["step"] == 1:
                for _ in range(times):
                    signal.raise_signal(signal.SIGINT)  # delivered to the trainer's handler before it returns

        return report

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when pytest was started in the background
    settings = {"run.max_steps": 50, "run.checkpoint_every": 1000, "run.log_every": 1, "loss.disc_start": 1000}
    cfg = load_config(VAETrainConfig, "debug", {"data.data": str(clips), "run.output_dir": str(tmp_path / "once"), **settings}, group="vae")
    events: list = []
    summary = Trainer(cfg, VAERecipe(cfg), reporter=interrupt(1, events)).train()
    assert summary["stopped_by_signal"] == "SIGINT" and summary["steps"] == 1
    assert [p.name for p in list_checkpoints(tmp_path / "once" / "checkpoints")] == ["step-00000001"]
    assert events[-3:] == ["checkpoint", "stop", "end"]
    cfg = load_config(VAETrainConfig, "debug", {"data.data": str(clips), "run.output_dir": str(tmp_path / "twice"), **settings}, group="vae")
    events = []
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, VAERecipe(cfg), reporter=interrupt(2, events)).train()
    assert events[-1] == "log" and not list_checkpoints(tmp_path / "twice" / "checkpoints")
    assert not (tmp_path / "twice" / "summary.json").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the trainer's handler is gone, the one before it back


def _torchrun_until_signalled(args: list[str], checkpoint: Path, send) -> tuple[subprocess.CompletedProcess, dict]:
    """Start `args` under torchrun (2 CPU ranks, in a session of their own, as a terminal's
    foreground group is), call `send(launcher)` once `checkpoint` is complete, wait for the end;
    returns the process and the run's summary.json."""
    import os
    import sys
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([*torchrun(2), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (checkpoint / "trainer_state.json").is_file():
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()[-3000:] if launcher.poll() is not None else "no checkpoint in time"
        time.sleep(0.1)
    send(launcher)
    out, err = launcher.communicate(timeout=240)
    summary_file = checkpoint.parent.parent / "summary.json"
    assert summary_file.is_file(), err[-3000:]
    return subprocess.CompletedProcess(args, launcher.returncode, out, err), json.loads(summary_file.read_text())


@pytest.mark.distributed
def test_under_torchrun_ctrl_c_and_sigterm_reach_every_worker(clips, tmp_path):
    """Ctrl-C (SIGINT to the whole foreground group: torchrun and its workers) and SIGTERM sent
    to torchrun alone (forwarded to the workers) each end a 2-rank run after a step, with a
    complete checkpoint every rank wrote its RNG state into, and --resume latest continues."""
    import os
    import signal

    out = tmp_path / "run"
    args = ["-m", "osp_cli.vae_train", "--preset", "debug", "--data", str(clips), "-o", str(out), "--max-steps", "1000", "--checkpoint-every", "1", "--keep-last", "0"]
    args += ["--set", "loss.disc_start=1000"]
    proc, summary = _torchrun_until_signalled(args, out / "checkpoints" / "step-00000001", lambda p: os.killpg(p.pid, signal.SIGINT))
    assert summary["stopped_by_signal"] in ("SIGINT", "SIGTERM") and 1 <= summary["steps"] < 1000, proc.stderr[-3000:]
    assert f"stopped after step {summary['steps']}" in proc.stderr
    stopped = Path(summary["checkpoint"])
    assert stopped.name == f"step-{summary['steps']:08d}" and (stopped / "trainer_state.json").is_file()
    assert sorted(p.name for p in (stopped / "accelerate").glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    first = summary["steps"]
    (out / "summary.json").unlink()
    proc, summary = _torchrun_until_signalled([*args, "--resume", "latest"], out / "checkpoints" / f"step-{first + 1:08d}", lambda p: p.send_signal(signal.SIGTERM))
    assert summary["stopped_by_signal"] == "SIGTERM" and first < summary["steps"] < 1000, proc.stderr[-3000:]
    assert Path(summary["checkpoint"]).name == f"step-{summary['steps']:08d}" and summary["ranks_in_sync"] is True
    assert not list((out / "checkpoints").glob(".*.tmp"))


def test_accelerate_launch_with_an_fsdp_config_is_refused(clips, tmp_path):
    """`accelerate launch --use_fsdp` (2 CPU processes): one error line from the workers, before
    Accelerate's FSDP plugin or any model is set up; nothing written."""
    import sys

    from .helpers import run_module

    accelerate = [str(Path(sys.executable).with_name("accelerate")), "launch", "--num_processes", "2", "--use_fsdp"]
    proc = run_module("osp_cli.vae_train", "--preset", "debug", "--data", str(clips), "-o", str(tmp_path / "out"), "--max-steps", "1", launcher=accelerate)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "accelerate launch with a FSDP config is not supported" in errors[0], proc.stderr[-3000:]
    assert "--strategy fsdp" in errors[0]
    assert not (tmp_path / "out").exists()
