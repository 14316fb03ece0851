"""`osp vae train`: learning, exact resume, Ctrl-C/SIGTERM, torchrun, checkpoints that load."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from osp_core.errors import InputError
from osp_core.train.config import VAETrainConfig, load_config
from osp_core.train.trainer import Trainer
from osp_core.train.vae_recipe import VAERecipe
from tests.conftest import assert_one_line_error, run_osp
from tests.distributed import torchrun

from .helpers import checkpoint_weights, run_module


def _config(data: Path, out: Path, **extra):
    overrides = {"data.data": str(data), "run.output_dir": str(out), **extra}
    return load_config(VAETrainConfig, "debug", overrides, group="vae")


def _train(cfg) -> dict:
    return Trainer(cfg, VAERecipe(cfg), reporter=lambda event, payload: None).train()


def test_loss_goes_down_on_a_fixed_batch(one_clip, tmp_path):
    cfg = _config(one_clip, tmp_path, **{"run.max_steps": 8, "run.checkpoint_every": 100, "loss.disc_start": 1000, "data.random_start": False})
    trainer = Trainer(cfg, VAERecipe(cfg), reporter=lambda e, p: None)
    summary = trainer.train()
    losses = trainer.loss_history
    assert summary["steps"] == 8 and len(losses) == 8
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses
    assert summary["checkpoint"].endswith("step-00000008")


def test_auto_mixed_precision_trains_in_what_the_device_runs_natively(one_clip, tmp_path):
    from osp_core.device import native_mixed_precision

    # its own process: accelerate keeps the first run's mixed precision for the rest of a process
    proc = run_module("osp_cli.vae_train", "--preset", "debug", "--data", str(one_clip), "-o", str(tmp_path), "--max-steps", "1", "--mixed-precision", "auto", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((Path(json.loads(proc.stdout)["checkpoint"]) / "trainer_state.json").read_text())
    # the checkpoint records what the run trained in, not "auto"
    assert state["config"]["run"]["mixed_precision"] == native_mixed_precision("cpu") != "auto"


def test_resume_gives_the_same_weights_as_a_straight_run(clips, tmp_path):
    # GAN on from step 2, EMA on: discriminator, both optimizers, schedulers, RNG and data position must all resume
    extra = {"run.deterministic": True, "run.ema": True, "run.ema_decay": 0.5, "loss.disc_start": 2}
    straight = _train(_config(clips, tmp_path / "a", **{"run.max_steps": 4, **extra}))
    first = _train(_config(clips, tmp_path / "b", **{"run.max_steps": 2, **extra}))
    assert first["steps"] == 2
    resumed = _train(_config(clips, tmp_path / "b", **{"run.max_steps": 4, "run.resume": "latest", **extra}))
    assert resumed["steps"] == 4 and resumed["steps_this_run"] == 2
    a = checkpoint_weights(Path(straight["checkpoint"]))
    b = checkpoint_weights(Path(resumed["checkpoint"]))
    assert set(a) == set(b) and any(k.startswith("accelerate/model") for k in a) and any(k.startswith("model_ema/") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the unreadable clip was skipped, counted and named
    assert resumed["skipped_samples"] == 1 and resumed["skipped"][0]["path"].endswith("broken.mp4")
    state = json.loads((Path(resumed["checkpoint"]) / "trainer_state.json").read_text())
    assert state["data"]["consumed"] == 4 and state["config"]["loss"]["disc_start"] == 2


def test_checkpoint_loads_in_the_vae_and_in_osp_vae_encode(clips, tmp_path):
    from osp_core.models.causal_vae import CausalVideoVAE

    summary = _train(_config(clips, tmp_path / "run", **{"run.max_steps": 1, "run.checkpoint_every": 1}))
    model_dir = Path(summary["checkpoint"]) / "model"
    vae = CausalVideoVAE.from_pretrained(str(model_dir))
    assert vae.config.hidden_size == 32
    video = Path(clips).parent / "videos" / "clip0.mp4"
    proc = run_osp("vae", "encode", str(video), "--model", str(model_dir), "--frames", "5", "--size", "32x32", "-o", str(tmp_path / "z.safetensors"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["latent_shape"] == [1, 4, 2, 4, 4]


def test_sigterm_finishes_the_step_checkpoints_and_exits_zero(clips, tmp_path):
    args = ["--preset", "debug", "--data", str(clips), "-o", str(tmp_path), "--max-steps", "1000", "--checkpoint-every", "1000", "--json"]
    import os

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "osp_cli.vae_train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    for line in proc.stderr:
        if line.startswith("step 1:") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped_by_signal"] == "SIGTERM"
    assert 1 <= summary["steps"] < 1000
    assert summary["checkpoint"].endswith(f"step-{summary['steps']:08d}")
    assert (Path(summary["checkpoint"]) / "trainer_state.json").is_file()
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


@pytest.mark.distributed
def test_two_process_torchrun_keeps_ranks_identical_and_writes_one_checkpoint(clips, tmp_path):
    proc = run_module("osp_cli.vae_train", "--preset", "debug", "--data", str(clips), "-o", str(tmp_path), "--max-steps", "2", "--json", launcher=torchrun(2))
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if "reducer.cpp" not in line)[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["processes"] == 2 and summary["samples_seen"] == 4
    assert summary["ranks_in_sync"] is True and len(summary["rank_weight_digests"]) == 2
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002"]
    state_files = sorted(p.name for p in (tmp_path / "checkpoints" / "step-00000002" / "accelerate").glob("random_states_*"))
    assert state_files == ["random_states_0.pkl", "random_states_1.pkl"]
    # and the two ranks trained what one process does on the same global batch of 2 (each
    # sample's noise comes from its global position): losses and weights, not the trainer's own flag
    one = run_module("osp_cli.vae_train", "--preset", "debug", "--data", str(clips), "-o", str(tmp_path / "one"), "--max-steps", "2", "--batch-size", "2", "--json")
    assert one.returncode == 0, one.stderr[-4000:]
    single = json.loads(one.stdout)
    assert single["processes"] == 1 and single["samples_seen"] == 4
    ranks, alone = (json.loads((Path(s["checkpoint"]) / "trainer_state.json").read_text())["loss_history"] for s in (summary, single))
    assert len(ranks) == len(alone) == 2 and all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(ranks, alone, strict=True)), (ranks, alone)
    a, b = checkpoint_weights(Path(summary["checkpoint"])), checkpoint_weights(Path(single["checkpoint"]))
    assert set(a) == set(b) and any(k.startswith("model/") for k in a)
    # Adam divides by the gradient's size: an element whose gradient is ~0 moves by +-lr on the
    # sign of its rounding noise (the two ranks sum in another order), so a few elements differ
    # by up to a step; on average the weights agree to a small fraction of one (a run whose
    # ranks did not share gradients would be about a step away on a large share of them)
    lr = 1e-3  # presets/vae/debug.yaml
    mean_error = sum(float((a[k].float() - b[k].float()).abs().sum()) for k in a) / sum(a[k].numel() for k in a)
    assert mean_error < lr / 50, mean_error


def test_refuses_to_start_without_lpips_weights(clips, tmp_path):
    proc = run_module("osp_cli.vae_train", "--preset", "debug", "--data", str(clips), "-o", str(tmp_path), "--perceptual-weight", "1")
    assert_one_line_error(proc, "LPIPS", "--perceptual-weight 0")
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(InputError, match="wandb"):
            _train(_config(clips, tmp_path, **{"run.report_to": "wandb"}))
    with pytest.raises(InputError, match="no training data"):
        Trainer(_config("", tmp_path), VAERecipe(_config("", tmp_path)))


def test_released_checkpoint_loss_weights_are_used(tmp_path):
    """A released VAE file may carry `loss.*` (LPIPS, discriminator, logvar): training starts from them."""
    from safetensors.torch import load_file, save_file

    from osp_core.models.causal_vae import CausalVideoVAE
    from osp_core.train.losses import LPIPS, PatchGAN3D

    from .helpers import TINY_VAE

    CausalVideoVAE(**TINY_VAE).save_pretrained(tmp_path / "vae")
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    torch.manual_seed(1)
    lpips_state = {f"loss.perceptual_loss.{k}": torch.randn_like(v) for k, v in LPIPS().state_dict().items()}
    disc_state = {f"loss.discriminator.{k}": v.float() + 0.25 for k, v in PatchGAN3D(3, 8, 3).state_dict().items() if v.is_floating_point()}
    disc_state.update({f"loss.discriminator.{k}": v for k, v in PatchGAN3D(3, 8, 3).state_dict().items() if not v.is_floating_point()})
    save_file({**state, **lpips_state, **disc_state, "loss.logvar": torch.tensor(0.7)}, str(weights))

    cfg = load_config(VAETrainConfig, "debug", {"model.config": "", "model.pretrained": str(tmp_path), "loss.perceptual_weight": 1.0}, group="vae")
    recipe = VAERecipe(cfg)
    built = recipe.build(None)
    loss = built.extra_models[0]
    assert recipe.carried == ["discriminator", "logvar"]
    assert torch.isclose(loss.logvar, torch.tensor(0.7))
    assert torch.equal(loss.discriminator.main[0].weight, disc_state["loss.discriminator.main.0.weight"])
    assert torch.equal(loss._lpips[0].lin2.model[1].weight, lpips_state["loss.perceptual_loss.lin2.model.1.weight"])


def test_freeze_encoder_trains_the_decoder_only_and_keeps_latents_bit_identical(clips, tmp_path):
    """model.freeze_encoder: the encoder and quant_conv keep their weights, so a clip encodes to
    exactly the same latents before and after (what the shipped transformer was trained on)."""
    from osp_core.models.causal_vae import CausalVideoVAE

    from .helpers import TINY_VAE

    torch.manual_seed(0)
    CausalVideoVAE(**TINY_VAE).save_pretrained(tmp_path / "start")
    before = CausalVideoVAE.from_pretrained(str(tmp_path / "start")).eval()
    extra = {"model.config": "", "model.pretrained": str(tmp_path / "start"), "model.freeze_encoder": True, "run.max_steps": 3, "run.checkpoint_every": 3}
    summary = _train(_config(clips, tmp_path / "run", **extra))
    after = CausalVideoVAE.from_pretrained(str(Path(summary["checkpoint"]) / "model")).eval()
    old, new = before.state_dict(), after.state_dict()
    frozen = [k for k in old if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(old[k], new[k]) for k in frozen)
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))  # the decoder did train
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(before.encode(video).latent_dist.parameters, after.encode(video).latent_dist.parameters)


def test_freeze_encoder_refuses_what_would_change_or_lack_the_encoder(clips, tmp_path):
    with pytest.raises(InputError, match="freeze_encoder keeps a trained encoder"):
        _train(_config(clips, tmp_path / "a", **{"model.freeze_encoder": True}))
    proc = run_module("osp_cli.vae_train", "--preset", "debug", "--data", str(clips), "-o", str(tmp_path / "b"), "--freeze-encoder", "--pretrained", str(tmp_path), "--reset-mix-factor", "0.5")
    assert_one_line_error(proc, "mix factors", "--reset-mix-factor")
