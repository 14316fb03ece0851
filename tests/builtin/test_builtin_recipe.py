"""`make builtin` groundwork: the tiny T5 builder, the shapes presets, the export/install/results
helpers and the build script's guard rails (the full smoke build is a slow test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import ByT5Tokenizer

from osp_core.builtin_recipe import (
    SIZE_LIMIT_BYTES,
    VERSION,
    check_repository,
    curve_svg,
    curve_table,
    export_transformer,
    export_vae,
    final_checkpoint,
    init_vae,
    install,
    latent_scaling_factor,
    loss_history,
    results_markdown,
    run_train_seconds,
    write_curve_csv,
)
from osp_core.errors import InputError, ModelLoadError
from osp_core.hub import BUILTIN_ROOT
from osp_core.models.tiny_t5 import TinyT5Config, build_tiny_t5, save_tiny_t5
from osp_core.pipelines.t2v import load_t5
from osp_core.train.config import T2VTrainConfig, VAETrainConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = ["a red circle moving right", "a blue circle moving right", "a yellow triangle moving down", ""]


pytestmark = pytest.mark.usefixtures("one_thread")


def _states(tokenizer, encoder, texts=CAPTIONS, length=32):
    tokens = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0], tokens.attention_mask


# --- tiny T5 -----------------------------------------------------------------------------------


def test_tiny_t5_is_deterministic_and_seeded(tmp_path):
    save_tiny_t5(tmp_path / "a", TinyT5Config(seed=0))
    torch.manual_seed(123)  # the global RNG state must not matter
    save_tiny_t5(tmp_path / "b", TinyT5Config(seed=0))
    save_tiny_t5(tmp_path / "c", TinyT5Config(seed=1))
    a, b, c = (load_file(str(tmp_path / n / "text_encoder" / "model.safetensors")) for n in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].numel() > 1)
    assert json.loads((tmp_path / "a" / "text_encoder" / "tiny_t5.json").read_text())["seed"] == 0


def _occurrence_similarity(spec: TinyT5Config, text: str, byte: str) -> float:
    """Mean cosine between the encoder states of the occurrences of `byte` in `text`."""
    tokenizer, encoder = build_tiny_t5(spec)
    with torch.no_grad():
        states = encoder(tokenizer([text], return_tensors="pt").input_ids)[0][0]
    unit = torch.nn.functional.normalize(states[[i for i, ch in enumerate(text) if ch == byte]], dim=-1)
    sims = unit @ unit.T
    return float(sims[~torch.eye(len(unit), dtype=torch.bool)].mean())


def test_tiny_t5_local_heads_make_a_byte_state_depend_on_its_word(tmp_path):
    text = "a green triangle moving right"  # 'g' in four different words
    assert _occurrence_similarity(TinyT5Config(seed=0), text, "g") > 0.9  # random: nearly one state
    assert _occurrence_similarity(TinyT5Config(seed=0, local_attention_bias=8.0), text, "g") < 0.7
    spec = TinyT5Config(seed=0, local_attention_bias=8.0)
    save_tiny_t5(tmp_path, spec)
    assert json.loads((tmp_path / "text_encoder" / "tiny_t5.json").read_text())["local_attention_bias"] == 8.0
    # the biases live in the saved weights: the loaded encoder is the built one
    _, built = build_tiny_t5(spec)
    _, loaded = load_t5(str(tmp_path), tmp_path, None)
    torch.testing.assert_close(_states(ByT5Tokenizer(), loaded)[0], _states(ByT5Tokenizer(), built)[0], rtol=0, atol=0)
    with pytest.raises(InputError, match="local_attention_bias"):
        build_tiny_t5(TinyT5Config(local_attention_bias=-1.0))


def test_tiny_t5_loads_back_through_the_sampler_and_trainer_paths(tmp_path):
    """`osp t2v sample` reads the repository's text_encoder/ + tokenizer/ (source None);
    `osp t2v train --text-encoder DIR` passes the folder: both give the built encoder."""
    spec = TinyT5Config(seed=0)
    save_tiny_t5(tmp_path, spec)
    built_tok, built_enc = build_tiny_t5(spec)
    expected, mask = _states(built_tok, built_enc)
    for source in (None, str(tmp_path)):
        tokenizer, encoder = load_t5(source, tmp_path, None)
        assert type(tokenizer).__name__ == "ByT5Tokenizer" and type(encoder).__name__ == "T5EncoderModel"
        assert encoder.config.d_model == spec.d_model
        states, got_mask = _states(tokenizer, encoder)
        assert torch.equal(got_mask, mask)
        torch.testing.assert_close(states, expected, rtol=0, atol=0)
    # byte-level: a caption is its UTF-8 bytes + EOS, so every world caption fits in 32 tokens
    assert int(mask[0].sum()) == len(CAPTIONS[0]) + 1
    # different captions give different states at the words that differ
    assert not torch.allclose(expected[0], expected[1])


def test_tiny_t5_refuses_to_overwrite(tmp_path):
    save_tiny_t5(tmp_path)
    with pytest.raises(InputError, match="already exists"):
        save_tiny_t5(tmp_path)
    save_tiny_t5(tmp_path, TinyT5Config(seed=3), overwrite=True)
    assert json.loads((tmp_path / "text_encoder" / "tiny_t5.json").read_text())["seed"] == 3


# --- presets -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preset_models():
    from osp_core.train.t2v_recipe import build_transformer
    from osp_core.train.vae_recipe import load_vae_for_training

    vae_cfg = load_config(VAETrainConfig, "shapes", group="vae")
    t2v_cfg = load_config(T2VTrainConfig, "shapes", group="t2v")
    torch.manual_seed(0)
    vae, _ = load_vae_for_training(vae_cfg)
    latent = vae.latent_shape(17, 64, 64)
    transformer = build_transformer(t2v_cfg, latent[0], latent[1:])
    return vae_cfg, t2v_cfg, vae, transformer


def test_presets_build_models_of_the_intended_size(preset_models):
    vae_cfg, t2v_cfg, vae, transformer = preset_models
    # VAE: the v1.1.0 block structure at width 32 (GroupNorm's 32 groups), 4 levels
    assert vae.config.hidden_size == 32 and list(vae.config.hidden_size_mult) == [1, 2, 2, 2]
    assert list(vae.config.encoder_resnet_blocks) == ["ResnetBlock2D", "ResnetBlock2D", "ResnetBlock3D", "ResnetBlock3D"]
    assert (vae.temporal_compression, vae.spatial_compression) == (4, 8)
    assert vae.latent_shape(17, 64, 64) == (5, 8, 8)
    vae_params = sum(p.numel() for p in vae.parameters())
    assert 3.4e6 < vae_params < 3.7e6
    # transformer: LatteT2V v1.1.0 structure, narrow; sized for 17x64x64 clips; reads the tiny T5
    c = transformer.config
    assert (c.num_layers, c.num_attention_heads * c.attention_head_dim, c.patch_size, c.norm_type) == (4, 192, 2, "ada_norm_single")
    assert (c.video_length, list(c.sample_size), c.in_channels, c.out_channels) == (5, [8, 8], 4, 8)
    assert c.caption_channels == TinyT5Config().d_model
    t2v_params = sum(p.numel() for p in transformer.parameters())
    assert 4.4e6 < t2v_params < 4.7e6
    # the whole repository in fp16 (T5 kept in fp32) fits the package budget with room to spare
    _, t5 = build_tiny_t5()
    total = 2 * (vae_params + t2v_params) + 4 * sum(p.numel() for p in t5.parameters())
    assert total <= 0.9 * SIZE_LIMIT_BYTES
    # training settings the build relies on: native 64x64, no LPIPS, no GAN, cached latents fit
    assert (vae_cfg.data.height, vae_cfg.data.width, vae_cfg.data.frames) == (64, 64, 9)
    assert vae_cfg.loss.perceptual_weight == 0 and vae_cfg.loss.disc_factor == 0
    assert (t2v_cfg.data.frames, t2v_cfg.data.height, t2v_cfg.data.width) == (17, 64, 64)
    assert t2v_cfg.model.max_text_tokens >= max(len(c) + 1 for c in CAPTIONS)
    assert t2v_cfg.diffusion.learn_sigma and t2v_cfg.run.ema


def test_init_vae_starts_nearly_deterministic_and_reproducible(tmp_path):
    from osp_core.models.causal_vae import CausalVideoVAE

    config = ROOT / "presets" / "vae" / "shapes-vae.json"
    init_vae(config, tmp_path / "a", seed=0)
    init_vae(config, tmp_path / "b", seed=0)
    a, b = (load_file(str(tmp_path / n / "diffusion_pytorch_model.safetensors")) for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    vae = CausalVideoVAE.from_pretrained(str(tmp_path / "a")).eval()
    with torch.no_grad():
        posterior = vae.encode(torch.rand(1, 3, 5, 32, 32) * 2 - 1).latent_dist
    # std ~ e^-3 instead of ~1: the decoder sees the encoder's means, not noise
    assert float(posterior.std.max()) < 0.2
    with pytest.raises(InputError, match="does not exist"):
        init_vae(tmp_path / "missing.json", tmp_path / "c")


def test_collapse_to_last_tap_keeps_images_and_codes_clips_frame_by_frame(tmp_path):
    """On one frame the collapsed VAE equals the original (all taps saw the same frame); on a
    clip every 3D kernel now reads only its current frame."""
    from osp_core.builtin_recipe import collapse_to_last_tap
    from osp_core.models.causal_vae import CausalVideoVAE

    init_vae(ROOT / "presets" / "vae" / "shapes-vae.json", tmp_path / "init", seed=0)
    original = CausalVideoVAE.from_pretrained(str(tmp_path / "init")).eval()
    with torch.no_grad():  # random taps: make them differ, so the collapse has work to do
        for module in original.modules():
            if isinstance(module, torch.nn.Conv3d) and module.kernel_size[0] > 1:
                module.weight.add_(torch.randn_like(module.weight) * 0.05)
    original.save_pretrained(str(tmp_path / "trained"))
    collapse_to_last_tap(tmp_path / "trained", tmp_path / "collapsed")
    collapsed = CausalVideoVAE.from_pretrained(str(tmp_path / "collapsed")).eval()
    image = torch.rand(1, 3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = original.decode(original.encode(image).latent_dist.mode()).sample
        got = collapsed.decode(collapsed.encode(image).latent_dist.mode()).sample
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    kernels = [m.weight.detach() for m in collapsed.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size[0] > 1]
    assert kernels and all(float(w[:, :, :-1].abs().max()) == 0 for w in kernels)
    assert not any(torch.equal(a, b) for a, b in zip(kernels, (m.weight for m in original.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size[0] > 1)))


# --- export, install, results --------------------------------------------------------------------


def _one_run(recipe: str, preset: str, data: Path, out: Path, **extra) -> dict:
    """A short real training run of `preset` (the trainer's own checkpoint layout: model/,
    model_ema/ with EMA, trainer_state.json); returns its summary."""
    from osp_core.train.t2v_recipe import T2VRecipe
    from osp_core.train.trainer import Trainer
    from osp_core.train.vae_recipe import VAERecipe

    config_class, recipe_class = {"vae": (VAETrainConfig, VAERecipe), "t2v": (T2VTrainConfig, T2VRecipe)}[recipe]
    overrides = {
        "data.data": str(data), "run.output_dir": str(out), "run.max_steps": 2, "run.batch_size": 1, "run.checkpoint_every": 2,
        "run.num_workers": 0, "run.report_to": "none", "optim.lr_warmup_steps": 0, **extra,
    }  # fmt: skip
    cfg = load_config(config_class, preset, overrides, group=recipe)
    return Trainer(cfg, recipe_class(cfg), reporter=lambda event, payload: None).train()


@pytest.fixture(scope="module")
def assembled(tmp_path_factory):
    """A repository assembled as the build does, from two-step runs of the shapes presets."""
    from osp_core.data.shapes import synthesize
    from osp_core.models.causal_vae import CausalVideoVAE

    tmp = tmp_path_factory.mktemp("assembled")
    data = synthesize(tmp / "clips", 2, seed=0)
    clips = sorted((tmp / "clips" / "videos").glob("*.mp4"))
    # fp32 as the t2v run below: accelerate keeps one mixed precision per process (the build runs
    # each training in its own, at the preset's bf16)
    runs = {"vae": _one_run("vae", "shapes", data, tmp / "vae-run", **{"run.mixed_precision": "no"})}
    vae_checkpoint = Path(runs["vae"]["checkpoint"])
    scale = latent_scaling_factor(CausalVideoVAE.from_pretrained(str(vae_checkpoint / "model")).eval(), clips, seed=0)
    repo = tmp / "repo"
    export_vae(vae_checkpoint, repo, scale)
    save_tiny_t5(repo)
    runs["t2v"] = _one_run("t2v", "shapes", data, tmp / "t2v-run", **{"model.model": str(repo)})
    assert Path(runs["t2v"]["checkpoint"], "model_ema", "config.json").is_file()  # the preset keeps an EMA
    folder, source = export_transformer(Path(runs["t2v"]["checkpoint"]), repo)
    return repo, scale, clips, source, runs


def test_latent_scaling_factor_is_reproducible(assembled):
    from osp_core.models.causal_vae import CausalVideoVAE

    repo, scale, clips, _, runs = assembled
    trained = CausalVideoVAE.from_pretrained(str(Path(runs["vae"]["checkpoint"]) / "model")).eval()
    assert scale > 0 and scale == latent_scaling_factor(trained, clips, seed=0)
    assert json.loads((repo / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(scale)


def test_exported_repository_is_fp16_and_samples(assembled):
    from osp_core.pipelines.t2v import T2VPipeline

    repo, _, _, source, _ = assembled
    assert source == "model_ema"
    config = json.loads((repo / VERSION / "config.json").read_text())
    assert not {"decay", "optimization_step", "use_ema_warmup", "_name_or_path"} & set(config)  # options only
    assert "_name_or_path" not in json.loads((repo / "vae" / "config.json").read_text())  # no training machine's folder
    for part in ("vae", VERSION):
        weights = load_file(str(repo / part / "diffusion_pytorch_model.safetensors"))
        assert {t.dtype for t in weights.values()} == {torch.float16}
    size = check_repository(repo)
    assert size <= SIZE_LIMIT_BYTES
    pipe = T2VPipeline.from_pretrained(repo, version=VERSION, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle moving right", num_frames=17, height=64, width=64, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 17, 64, 64, 3) and out.frames.dtype == torch.uint8


def test_check_repository_and_install_guard(assembled, tmp_path):
    repo = assembled[0]
    with pytest.raises(InputError, match="package limit"):
        check_repository(repo, limit=1000)
    with pytest.raises(ModelLoadError, match="lacks"):
        check_repository(tmp_path)
    target = tmp_path / "installed"
    install(repo, target)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in repo.iterdir())
    with pytest.raises(InputError, match="--overwrite"):
        install(repo, target)
    install(repo, target, overwrite=True)
    assert check_repository(target) == check_repository(repo)


def test_loss_curves(assembled, tmp_path):
    summary = assembled[4]["vae"]
    losses = loss_history(Path(summary["checkpoint"]))
    assert len(losses) == summary["steps"] == 2 and losses[-1] == pytest.approx(summary["losses"]["last"])
    csv = write_curve_csv(tmp_path / "loss.csv", {"vae": [3.0, 2.0], "t2v": [1.0, 0.5, 0.25]})  # the CSV's layout
    assert csv.read_text().splitlines() == ["step,vae,t2v", "1,3,1", "2,2,0.5", "3,,0.25"]
    svg = curve_svg([1.0, 0.5, float("nan"), 0.25, 0.2], "loss")
    assert ET.fromstring(svg).tag.endswith("svg") and svg.count("<polyline") == 2
    assert "too few" in curve_svg([1.0], "loss")
    assert curve_table([4.0, 2.0, 2.0, 0.0], rows=2) == [(2, 3.0), (4, 1.0)]


def test_final_checkpoint_follows_a_moved_run_folder(tmp_path):
    from osp_core.errors import ModelLoadError

    run = tmp_path / "moved" / "vae"
    (run / "checkpoints" / "step-00000005" / "model").mkdir(parents=True)
    (run / "checkpoints" / "step-00000005" / "model" / "config.json").write_text("{}")
    (run / "summary.json").write_text(json.dumps({"checkpoint": str(tmp_path / "gone" / "vae" / "checkpoints" / "step-00000005")}))
    assert final_checkpoint(run) == run / "checkpoints" / "step-00000005"
    (run / "summary.json").write_text(json.dumps({"checkpoint": str(tmp_path / "gone" / "vae" / "checkpoints" / "step-00000009")}))
    with pytest.raises(ModelLoadError, match="names no usable checkpoint"):
        final_checkpoint(run)


def test_run_train_seconds_from_the_trainer_or_a_complete_last_invocation():
    assert run_train_seconds({"train_seconds": 12.5}, {}) == 12.5
    assert run_train_seconds({"steps": 10, "steps_this_run": 0, "seconds_per_step": None}, {"train_seconds": 30.0}) == 30.0
    # older runs: steps x s/step only when the last invocation ran every step
    assert run_train_seconds({"steps": 10, "steps_this_run": 10, "seconds_per_step": 0.5}, {}) == 5.0
    assert run_train_seconds({"steps": 10, "steps_this_run": 4, "seconds_per_step": 0.5}, {}) is None


# --- the build script ------------------------------------------------------------------------------


def _build(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "build_builtin.py"), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_build_refuses_an_existing_model_before_doing_anything(tmp_path):
    target = tmp_path / "shapes"
    target.mkdir()
    proc = _build("--target", str(target), "--work-dir", str(tmp_path / "work"))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already exists" in lines[0] and "--overwrite" in lines[0]
    assert not (tmp_path / "work").exists()


def test_the_vae_trains_on_the_world_two_objects_and_looser_drawings(tmp_path, monkeypatch):
    # the build's data step (smoke scale): the VAE's data list names its three sets, and the sets
    # are what their names say (the round trip on clips drawn by other code needs the wide ones)
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import build_builtin

    build = build_builtin.Build(build_builtin.parse_args(["--smoke", "--work-dir", str(tmp_path / "work"), "--target", str(tmp_path / "model")]))
    build.data()
    data = tmp_path / "work" / "data"
    assert [line.split(",")[0] for line in (data / "vae.txt").read_text().splitlines()] == [str(data / f"vae-{name}") for name in ("one", "two", "wide")]
    clips = {name: json.loads((data / f"vae-{name}" / "annotations.json").read_text()) for name in ("one", "two", "wide")}
    assert all(len(c) == build.scale.vae_clips for c in clips.values())
    assert all(" and " in clip["cap"] for clip in clips["two"]) and not any(" and " in clip["cap"] for clip in clips["one"] + clips["wide"])
    # the wide drawings carry their own colour and edges; the world's clips draw the five exactly
    assert all("rgb" in clip["params"] and "antialias" in clip["params"] for clip in clips["wide"])
    assert not any("rgb" in clip["params"] for clip in clips["one"])


@pytest.mark.slow
def test_smoke_build_end_to_end(tmp_path):
    """The whole recipe at tiny step counts (about 3 minutes on 2 shared cores)."""
    target = tmp_path / "shapes-smoke"
    proc = _build("--smoke", "--keep", "--target", str(target), "--work-dir", str(tmp_path / "work"), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((target / "results.json").read_text())
    assert results["smoke"] and results["vae_eval"]["videos"] == 4 and results["vae_eval"]["psnr"] is not None
    assert results["t2v_eval"][0]["summary"]["videos"] == 3
    assert results["repository_bytes"] <= SIZE_LIMIT_BYTES
    assert (target / "RESULTS.md").is_file() and (target / "vae-loss.svg").is_file()
    assert check_repository(target) > 0
    assert all(run["train_seconds"] > 0 for run in results["training"].values())
    # each T2V stage trains from the previous stage's exported weights; stage 2 mostly at high noise
    assert list(results["training"]) == ["vae-image", "vae", "t2v", "t2v-stage2", "t2v-stage3"]
    configs = {run: json.loads((final_checkpoint(tmp_path / "work" / run) / "trainer_state.json").read_text())["config"] for run in ("t2v-stage2", "t2v-stage3")}
    assert Path(configs["t2v-stage2"]["model"]["pretrained"]) == tmp_path / "work" / "t2v-weights" / VERSION
    assert Path(configs["t2v-stage3"]["model"]["pretrained"]) == tmp_path / "work" / "t2v-stage2-weights" / VERSION
    assert configs["t2v-stage2"]["diffusion"]["timestep_band_fraction"] > 0 and configs["t2v-stage2"]["diffusion"]["loss_weighting"] == "inverse_snr"
    assert configs["t2v-stage3"]["diffusion"]["timestep_band_fraction"] == 0 and configs["t2v-stage3"]["diffusion"]["loss_weighting"] == "uniform"
    # --resume keeps the finished runs as they are (their timing included) and rebuilds the rest;
    # a finished run needs only its record and the weights the next step reads (the clip VAE's, the
    # transformers' EMA): the optimizer states and the image VAE's weights can go (a build carried over)
    for run in results["training"]:
        checkpoint = final_checkpoint(tmp_path / "work" / run)
        shutil.rmtree(checkpoint / "accelerate")
        drop = {"vae-image": ["model"], "vae": []}.get(run, ["model"] if (checkpoint / "model_ema").is_dir() else [])
        for folder in drop:
            for weights in (checkpoint / folder).glob("*.safetensors"):
                weights.unlink()
    again = _build("--smoke", "--keep", "--resume", "--overwrite", "--target", str(target), "--work-dir", str(tmp_path / "work"), timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("reusing the finished run") == 5
    rebuilt = json.loads((target / "results.json").read_text())
    assert {k: v["train_seconds"] for k, v in rebuilt["training"].items()} == {k: v["train_seconds"] for k, v in results["training"].items()}


def test_results_page_shows_a_build_note():
    results = {
        "name": "shapes", "smoke": False, "command": "python scripts/build_builtin.py", "finished": "2026-12-01 00:00 UTC", "host": "x86_64",
        "vae_eval": {"videos": 2, "psnr": 31.0, "ssim": 0.9},
        "t2v_eval": [{"scheduler": "PNDM", "steps": 150, "guidance": 7.5, "summary": {"videos": 60, "color_accuracy": 1.0, "direction_accuracy": 0.95, "shape_accuracy": 0.8}}],
        "stages": {"T2V training": 60.0}, "wall_seconds": 60.0, "repository_bytes": 1e6, "part_bytes": {"vae": 1e6},
        "scaling_factor": 0.4, "transformer_weights": "model_ema",
        "training": {"t2v-stage2": {"steps": 2, "seconds_per_step": 0.5, "train_seconds": 1.0, "batch_size": 2, "table": [(2, 0.5)]}},
    }  # fmt: skip
    page = results_markdown(results)
    assert "Stages up to" not in page and "| text to video (60 captions, 150 PNDM steps, guidance 7.5): direction correct | 95.0% | >= 90% |" in page
    assert "### t2v-stage2: 2 steps" in page
    noted = results_markdown({**results, "note": "Stages up to stage 1 are an earlier build's."})
    assert "\n\nStages up to stage 1 are an earlier build's.\n\n" in noted


@pytest.mark.slow
def test_edit_build_smoke_end_to_end(tmp_path):
    """`make builtin-edit SMOKE=1`: the three stages at tiny counts beside the installed base, both
    engines benchmarked, nothing installed (a few minutes on 2 cores)."""
    installed = {p: p.stat().st_mtime_ns for p in (BUILTIN_ROOT / "shapes").rglob("*") if p.is_file()}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_builtin_edit.py"), "--smoke", "--work-dir", str(work)], capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((work / "edit_results.json").read_text())
    # the base is used as installed: no VAE or transformer run, the copy's vae/ and 17x64x64/ are the installed files
    assert sorted(p.name for p in work.iterdir() if (p / "summary.json").is_file()) == ["stage1", "stage2", "stage3"]
    for part in ("vae", "17x64x64"):
        assert all((work / "repo" / part / f.name).read_bytes() == f.read_bytes() for f in (BUILTIN_ROOT / "shapes" / part).iterdir())
    # the build benchmarks at 1 and at the strength it writes as the model's default
    guided = f'{json.loads((BUILTIN_ROOT / "shapes" / "sampling.json").read_text())["edit_strength"]:g}'
    assert set(results["bench"]) == {"1", guided} and {"blend", "control"} <= set(results["bench"][guided]) and "reference" in results["bench"]["1"]
    assert "nothing installed" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in (BUILTIN_ROOT / "shapes").rglob("*") if p.is_file()} == installed
