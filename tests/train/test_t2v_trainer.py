"""`osp t2v train`: learning, exact resume (joint + accumulation + EMA + cache), caching,
validation samples, and checkpoints that load and sample."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from osp_core.train.config import T2VTrainConfig, load_config
from osp_core.train.t2v_recipe import T2VRecipe
from osp_core.train.trainer import Trainer

from tests.conftest import assert_one_line_error, run_osp

from .helpers import checkpoint_weights, run_module


def _config(data: Path, repo: Path, out: Path, **extra):
    overrides = {
        "data.data": str(data),
        "run.output_dir": str(out),
        "model.model": str(repo),
        "model.pretrained": "tiny",
        "model.text_encoder": str(repo),
        **extra,
    }
    return load_config(T2VTrainConfig, "debug", overrides, group="t2v")


def _run(cfg) -> tuple[dict, Trainer]:
    trainer = Trainer(cfg, T2VRecipe(cfg), reporter=lambda event, payload: None)
    return trainer.train(), trainer


@torch.no_grad()
def _fixed_eval_loss(recipe: T2VRecipe, model, batch) -> float:
    """The objective on one batch at fixed timesteps and noise."""
    torch.manual_seed(123)
    latents, states, mask, n = recipe._inputs(batch)
    total = 0.0
    for t in (50, 250, 500, 750, 950):
        noise = torch.randn_like(latents)
        terms = recipe.objective.training_losses(
            lambda x_t, t_: model(x_t, t_, encoder_hidden_states=states, encoder_attention_mask=mask, use_image_num=n, return_dict=False)[0],
            latents, t=torch.full((latents.shape[0],), t), noise=noise,
        )  # fmt: skip
        total += float(terms["loss"].mean())
    return total / 5


def test_loss_goes_down_on_a_fixed_batch(one_clip, tiny_repo, tmp_path):
    from osp_core.models.latte_t2v import LatteT2V

    cfg = _config(one_clip, tiny_repo, tmp_path, **{"run.max_steps": 30, "run.checkpoint_every": 100, "data.random_start": False, "diffusion.text_dropout": 0.0, "optim.lr": 3e-3})
    summary, trainer = _run(cfg)
    recipe = trainer.recipe
    batch = recipe.collate([recipe.dataset()[0]])
    trained = LatteT2V.from_pretrained(str(Path(summary["checkpoint"]) / "model"))
    start = LatteT2V.from_pretrained(str(tiny_repo / "tiny"))
    before, after = _fixed_eval_loss(recipe, start, batch), _fixed_eval_loss(recipe, trained, batch)
    assert after < 0.9 * before, (before, after)


def test_resume_gives_the_same_weights_as_a_straight_run(clips, tiny_repo, tmp_path, capfd):
    extra = {
        "data.use_image_num": 2,
        "run.gradient_accumulation_steps": 2,
        "run.ema": True,
        "run.ema_decay": 0.5,
        "run.deterministic": True,
        "data.cache_dir": str(tmp_path / "cache"),
    }
    straight, _ = _run(_config(clips, tiny_repo, tmp_path / "a", **{"run.max_steps": 4, **extra}))
    partial, _ = _run(_config(clips, tiny_repo, tmp_path / "b", **{"run.max_steps": 2, **extra}))
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed, _ = _run(_config(clips, tiny_repo, tmp_path / "b", **{"run.max_steps": 4, "run.resume": "latest", **extra}))
    # reading the EMA back is quiet: no diffusers deprecation, no "config attributes ... not expected"
    assert not [w for w in caught if "from_config" in str(w.message)]
    assert "not expected" not in capfd.readouterr().err
    assert resumed["steps_this_run"] == 2 and resumed["samples_seen"] == straight["samples_seen"] == 8
    # training time adds up over the runs: the resumed run's 2 steps on top of the first run's
    assert 0 < partial["train_seconds"] < resumed["train_seconds"]
    assert resumed["train_seconds"] - partial["train_seconds"] >= 2 * resumed["seconds_per_step"] * 0.99
    a, b = checkpoint_weights(Path(straight["checkpoint"])), checkpoint_weights(Path(resumed["checkpoint"]))
    assert set(a) == set(b) and {k.split("/")[0] for k in a} == {"model", "model_ema"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["skipped_samples"] == 1


def test_cache_makes_encoders_run_once_per_sample(clips, tiny_repo, tmp_path):
    extra = {"run.max_steps": 3, "data.cache_dir": str(tmp_path / "cache"), "data.random_start": False, "diffusion.text_dropout": 0.0, "data.use_image_num": 0}
    first, _ = _run(_config(clips, tiny_repo, tmp_path / "one", **extra))
    assert first["losses"]["last_logged"]["cache/misses"] == 6  # 3 clips + 3 captions
    second, trainer = _run(_config(clips, tiny_repo, tmp_path / "two", **extra))
    logged = second["losses"]["last_logged"]
    assert logged["cache/misses"] == 0 and logged["cache/hits"] == 6
    assert len(list((tmp_path / "cache" / "vae").rglob("*.safetensors"))) == 3
    assert len(list((tmp_path / "cache" / "t5").rglob("*.safetensors"))) == 3
    assert second["losses"]["first"] == first["losses"]["first"]  # same latents, same seed


def test_cached_clips_are_not_decoded_and_a_broken_entry_is_rebuilt(clips, tiny_repo, tmp_path, monkeypatch):
    import osp_core.data.datasets as datasets

    extra = {"run.max_steps": 3, "data.cache_dir": str(tmp_path / "cache"), "data.random_start": False, "diffusion.text_dropout": 0.0, "data.use_image_num": 0}
    first, _ = _run(_config(clips, tiny_repo, tmp_path / "one", **extra))
    decoded: list[str] = []
    real_read_video = datasets.read_video
    monkeypatch.setattr(datasets, "read_video", lambda path, *a, **k: decoded.append(str(path)) or real_read_video(path, *a, **k))
    second, _ = _run(_config(clips, tiny_repo, tmp_path / "two", **extra))
    readable = lambda paths: [p for p in paths if not p.endswith("broken.mp4")]  # noqa: E731 (the corrupt file is always tried)
    assert readable(decoded) == [] and second["losses"]["first"] == first["losses"]["first"]
    broken = sorted((tmp_path / "cache" / "vae").rglob("*.safetensors"))[0]
    broken.write_bytes(b"truncated by a killed run")
    third, _ = _run(_config(clips, tiny_repo, tmp_path / "three", **extra))
    assert len(readable(decoded)) == 1 and third["losses"]["last_logged"]["cache/misses"] == 1  # decoded again, only that clip
    assert third["losses"]["first"] == first["losses"]["first"]
    from safetensors.torch import load_file

    assert "moments" in load_file(str(broken))  # and cached again


def test_checkpoint_samples_and_validation_videos(clips, tiny_repo, tmp_path):
    from osp_core.models.causal_vae import CausalVideoVAE
    from osp_core.models.latte_t2v import LatteT2V
    from osp_core.pipelines.t2v import T2VPipeline, load_t5, make_scheduler

    summary, _ = _run(_config(clips, tiny_repo, tmp_path, **{"run.max_steps": 2, "validation.every": 2, "validation.steps": 4, "run.ema": True, "run.report_to": "tensorboard"}))
    assert list((tmp_path / "logs").rglob("events.out.tfevents*"))  # TensorBoard metrics
    videos = sorted((tmp_path / "samples" / "step-00000002").glob("*.mp4"))
    assert [v.name for v in videos] == ["00.mp4"]
    checkpoint = Path(summary["checkpoint"])
    for folder in ("model", "model_ema"):
        transformer = LatteT2V.from_pretrained(str(checkpoint / folder))
        tokenizer, encoder = load_t5(None, tiny_repo, None)
        pipe = T2VPipeline(tokenizer, encoder, CausalVideoVAE.from_pretrained(str(tiny_repo / "vae")), transformer, make_scheduler("PNDM"))
        frames = pipe("a gradient", num_frames=5, height=32, width=32, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).frames
        assert frames.shape == (1, 5, 32, 32, 3) and frames.dtype == torch.uint8
    # `osp t2v sample` takes the checkpoint placed in a repository layout as a version folder
    repo = tmp_path / "repo"
    repo.mkdir()
    for part in ("vae", "text_encoder", "tokenizer"):
        (repo / part).symlink_to(tiny_repo / part)
    (repo / "5x32x32").symlink_to(checkpoint / "model")
    proc = run_osp("t2v", "sample", "a gradient", "--model", str(repo), "--frames", "5", "--height", "32", "--width", "32", "--steps", "4", "--seed", "1", "-o", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 1


def test_cli_runs_the_debug_preset(clips, tiny_repo, tmp_path):
    proc = run_module(
        "osp_cli.t2v_train", "--preset", "debug", "--data", str(clips), "--model", str(tiny_repo), "--pretrained", "tiny",
        "--text-encoder", str(tiny_repo), "-o", str(tmp_path), "--max-steps", "2", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 2 and summary["skipped_samples"] == 1
    assert "broken.mp4" in proc.stderr and "done: 2 steps" in proc.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2


def test_trains_from_a_released_style_repository(reference_dir, clips, tmp_path):
    """The reference tiny repository (laid out like LanguageBind/Open-Sora-Plan-v1.1.0, with
    its own T5 and tokenizer): `--pretrained 9x32x32` starts from its weights."""
    repo = reference_dir / "pipeline" / "tiny-osp-v1.1.0"
    cfg = _config(clips, repo, tmp_path, **{"model.pretrained": "9x32x32", "data.frames": 9, "data.stride": 1, "model.max_text_tokens": 300, "run.max_steps": 1, "data.use_image_num": 0})
    summary, _ = _run(cfg)
    assert summary["steps"] == 1 and summary["losses"]["last"] > 0
    # one AdamW step (constant lr 1e-3, no warm-up) moves each weight by at most lr, plus the
    # decoupled decay lr x wd x |w|: every trained tensor is within a step of the repository's,
    # and the step did move most of them
    from safetensors.torch import load_file

    start: dict[str, torch.Tensor] = {}
    for file in sorted((repo / "9x32x32").glob("*.safetensors")):
        start.update(load_file(str(file)))
    trained = checkpoint_weights(Path(summary["checkpoint"]) / "model")
    trained = {key.split(":", 1)[1]: value for key, value in trained.items()}
    assert trained and set(trained) <= set(start)
    lr, decay = cfg.optim.lr, cfg.optim.weight_decay
    assert cfg.optim.lr_warmup_steps == 0
    moved = {key: float((value.float() - start[key].float()).abs().max()) for key, value in trained.items()}
    for key, value in moved.items():
        assert value <= 1.01 * lr * (1 + decay * float(start[key].float().abs().max())), key
    assert sum(m > lr / 2 for m in moved.values()) > len(moved) / 2


def test_bad_high_noise_band_is_a_one_line_error(clips, tiny_repo, tmp_path):
    proc = run_module(
        "osp_cli.t2v_train", "--preset", "debug", "--data", str(clips), "--model", str(tiny_repo), "--pretrained", "tiny",
        "--text-encoder", str(tiny_repo), "-o", str(tmp_path / "run"), "--max-steps", "1", "--set", "diffusion.timestep_band=[900,500]",
    )  # fmt: skip
    assert_one_line_error(proc, "diffusion.timestep_band", "900", "500", code=2)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_objective_options_reach_the_training_step(clips, tiny_repo, tmp_path, monkeypatch):
    from osp_core.train.diffusion import GaussianDiffusionObjective

    # every call of the real objective during the steps is recorded (it still computes the loss)
    calls: list[dict[str, torch.Tensor]] = []
    real = GaussianDiffusionObjective.training_losses
    monkeypatch.setattr(GaussianDiffusionObjective, "training_losses", lambda self, *a, **k: calls.append(real(self, *a, **k)) or calls[-1])
    extra = {"run.max_steps": 3, "data.use_image_num": 0, "diffusion.timestep_band_fraction": 1.0, "diffusion.timestep_band": [650, 750], "diffusion.loss_weighting": "inverse_snr", "diffusion.max_loss_weight": 50.0}
    cfg = _config(clips, tiny_repo, tmp_path, **extra)
    summary, trainer = _run(cfg)
    assert len(calls) == 3 and summary["steps"] == 3
    for terms in calls:
        # the steps drew their timesteps from the band and weighted the MSE by the capped 1/SNR
        assert all(650 <= t < 750 for t in terms["timesteps"].tolist()), terms["timesteps"]
        torch.testing.assert_close(terms["loss"].detach(), 50.0 * terms["mse"].detach() + terms["vb"].detach())
    logged = summary["losses"]["last_logged"]
    assert logged["loss"] == pytest.approx(50.0 * logged["diffusion/mse"] + logged["diffusion/vb"], rel=1e-4)
    objective = trainer.recipe.objective
    assert objective.timestep_band == (650, 750)
    assert all(650 <= t < 750 for t in objective.sample_timesteps(64, "cpu").tolist())
    # 1/SNR passes 50 before t = 650 (72.6 there), so every step of the band gets the cap
    assert float(objective.tables["loss_weight"][650:750].min()) == 50.0


def test_a_missing_data_file_is_refused_before_any_model_loads(tiny_repo, tmp_path, monkeypatch):
    from osp_core.errors import InputError

    cfg = _config(tmp_path / "missing.json", tiny_repo, tmp_path / "run")
    monkeypatch.setattr(T2VRecipe, "build", lambda self, accelerator: pytest.fail("a model loaded"))
    with pytest.raises(InputError, match="missing.json' does not exist"):
        _run(cfg)
    assert not (tmp_path / "run").exists()


def _cli_args(clips: Path, repo: Path, out: Path) -> list[str]:
    return ["t2v", "train", "--preset", "debug", "--data", str(clips), "--model", str(repo), "--pretrained", "tiny", "--text-encoder", str(repo), "-o", str(out)]


def test_a_size_that_cannot_fit_is_refused_before_any_weights_load(clips, tiny_repo, tmp_path, monkeypatch, osp_in_process):
    """The issue's `--size 100000x100000`: one line naming a size that fits, no model built (the
    estimate reads configs only), no output folder left behind."""
    monkeypatch.setattr(T2VRecipe, "build", lambda self, accelerator: pytest.fail("a model loaded"))
    proc = osp_in_process(*_cli_args(clips, tiny_repo, tmp_path / "run"), "--size", "100000x100000", "--max-steps", "1")
    assert_one_line_error(proc, "training on 1 sample(s) of 100000x100000", "memory", "available", "use --size")
    h, w = map(int, proc.stderr.split("--size ")[1].split()[0].split("x"))
    assert h == w and h % 16 == 0 and 16 <= h < 100_000
    assert not (tmp_path / "run").exists()


def test_a_tiny_size_passes_the_memory_check_and_trains(clips, tiny_repo, tmp_path):
    from osp_core.memory import available_memory

    cfg = _config(clips, tiny_repo, tmp_path, **{"run.max_steps": 1, "data.use_image_num": 0, "parallel.activation_checkpointing": 1})
    summary, trainer = _run(cfg)
    estimate = trainer.recipe.memory_estimate
    params = sum(p.numel() for p in trainer.inner.parameters())
    assert summary["steps"] == 1
    # the estimate counted the model actually trained: fp32 weights, gradients and two AdamW states
    assert estimate.parts["transformer weights"] == estimate.parts["gradients"] == 4 * params and estimate.parts["optimizer states"] == 8 * params
    assert 0 < estimate.total < available_memory("cpu")


def test_pretrained_with_a_transformer_config_is_refused(clips, tiny_repo, tmp_path, monkeypatch, osp_in_process):
    monkeypatch.setattr(T2VRecipe, "build", lambda self, accelerator: pytest.fail("a model loaded"))
    config = tmp_path / "latte.json"
    config.write_text(json.dumps({"num_layers": 4}))
    proc = osp_in_process(*_cli_args(clips, tiny_repo, tmp_path / "run"), "--transformer-config", str(config), "--max-steps", "1")
    assert_one_line_error(proc, "--pretrained and --transformer-config", "--pretrained", "--transformer-config")
    assert not (tmp_path / "run").exists()


def test_a_pretrained_version_the_model_lacks_names_the_ones_it_has(clips, tmp_path, monkeypatch, osp_in_process):
    """`--model builtin:shapes --pretrained builtin:shapes`: the hint names 17x64x64, not 65x512x512."""
    monkeypatch.setattr(T2VRecipe, "build", lambda self, accelerator: pytest.fail("a model loaded"))
    proc = osp_in_process("t2v", "train", "--preset", "debug", "--data", str(clips), "--model", "builtin:shapes", "--pretrained", "builtin:shapes", "-o", str(tmp_path / "run"), "--max-steps", "1")
    assert_one_line_error(proc, "no transformer 'builtin:shapes' in 'builtin:shapes'", "--pretrained with one of 17x64x64,")
    assert "65x512x512" not in proc.stderr and not (tmp_path / "run").exists()


def _wrappers_left_after_training(rank: int, world: int, clips: str, repo: str, out: str) -> dict:
    """A rank of a 2-process Python-API run (the group already joined, as torchrun's env says):
    the DDP wrappers still alive once `train()` returns, with the trainer still held."""
    import gc
    import os

    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    cfg = _config(Path(clips), Path(repo), Path(out), **{"run.max_steps": 1, "run.batch_size": 1})
    trainer = Trainer(cfg, T2VRecipe(cfg), reporter=lambda event, payload: None)
    summary = trainer.train()
    gc.collect()
    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    return {"processes": summary["processes"], "ddp_alive": alive, "bare": type(trainer.model).__name__, "recipe_model": type(trainer.recipe.model).__name__}


@pytest.mark.distributed
def test_a_ddp_run_lets_go_of_its_wrappers_before_the_group_ends(clips, tiny_repo, tmp_path):
    """The DDP wrappers hold the process group: left for interpreter exit, gloo's worker threads
    can reach for the GIL in finalization and abort a rank after a complete run.
    Once `train()` returns, no wrapper is alive and trainer and recipe hold the bare module."""
    from tests.distributed import run_ranks

    for result in run_ranks(_wrappers_left_after_training, 2, str(clips), str(tiny_repo), str(tmp_path / "run")):
        assert result == {"processes": 2, "ddp_alive": 0, "bare": "LatteT2V", "recipe_model": "LatteT2V"}, result


def test_caption_word_dropout_leaves_words_out_per_sample_and_reproducibly(clips, tiny_repo, tmp_path, monkeypatch):
    """diffusion.caption_word_dropout: the captions the text encoder reads lose words (in their
    order, never all of them), drawn from each sample's own seed, so a rerun reads the same."""
    from osp_core.train.t2v_recipe import drop_words

    read: list[list[str]] = []
    real_text = T2VRecipe._text
    monkeypatch.setattr(T2VRecipe, "_text", lambda self, captions: read.append(list(captions)) or real_text(self, captions))
    extra = {"run.max_steps": 4, "data.random_start": False, "diffusion.text_dropout": 0.0, "data.use_image_num": 0, "diffusion.caption_word_dropout": 0.5}
    _run(_config(clips, tiny_repo, tmp_path / "one", **extra))
    first, read[:] = list(read), []
    _run(_config(clips, tiny_repo, tmp_path / "two", **extra))
    assert read == first
    texts = [t for batch in first for t in batch]
    assert texts and all(t.strip() for t in texts)
    assert any(len(t.split()) < 6 for t in texts), texts  # the clips' captions have six words
    for t in texts:  # the words kept, in their order
        template = iter("a gradient moving right, clip #".split())
        assert all(("#" if w.isdigit() else w) in template for w in t.split()), t

    captions = ["a orange circle moving right"] * 400
    out = drop_words(captions, 0.3, seed=0, positions=list(range(400)), purpose="p")
    assert out == drop_words(captions, 0.3, seed=0, positions=list(range(400)), purpose="p")
    assert out != drop_words(captions, 0.3, seed=1, positions=list(range(400)), purpose="p")
    kept = sum(len(t.split()) for t in out) / (5 * 400)
    assert 0.65 < kept < 0.75  # each word kept with probability 0.7
    words = captions[0].split()
    for t in out:  # the words kept, in order
        it = iter(words)
        assert t and all(w in it for w in t.split())
    assert drop_words(["single"], 0.9, 0, [0], "p") == ["single"]


def test_caption_word_dropout_outside_its_range_is_a_one_line_error(clips, tiny_repo, tmp_path):
    r = run_osp("t2v", "train", "--preset", "debug", "--data", str(clips), "--model", str(tiny_repo), "-o", str(tmp_path / "run"), "--set", "diffusion.caption_word_dropout=1")
    assert_one_line_error(r, "caption_word_dropout must be in [0, 1)")
    assert not (tmp_path / "run").exists()
