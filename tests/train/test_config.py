"""Typed config tree: defaults < preset < CLI, unknown keys and bad types are one-line errors."""

from __future__ import annotations

import pytest

from osp_core.errors import InputError
from osp_core.train.config import T2VTrainConfig, VAETrainConfig, list_presets, load_config, parse_set_options


def test_precedence_cli_over_preset_over_defaults(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("run:\n  max_steps: 77\n  batch_size: 3\noptim:\n  lr: 0.5\n")
    cfg = load_config(VAETrainConfig, str(preset), {"run.max_steps": 5, "run.seed": None})
    assert cfg.run.max_steps == 5  # CLI wins
    assert cfg.run.batch_size == 3  # preset wins over default
    assert cfg.optim.lr == 0.5
    assert cfg.optim.betas == (0.5, 0.9)  # VAE default kept where nothing overrides it
    assert cfg.run.seed == 42  # None from the CLI means "not given"


def test_unknown_keys_and_bad_types_are_errors(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("run:\n  max_stepz: 3\n")
    with pytest.raises(InputError, match="run.max_stepz"):
        load_config(VAETrainConfig, str(preset))
    with pytest.raises(InputError, match="unknown config key 'nonsense'"):
        load_config(VAETrainConfig, None, {"nonsense": 1})
    with pytest.raises(InputError, match="must be an integer"):
        load_config(VAETrainConfig, None, {"run.max_steps": "many"})
    with pytest.raises(InputError, match="list of 2"):
        load_config(VAETrainConfig, None, {"optim.betas": [0.1]})
    with pytest.raises(InputError, match="unknown vae preset"):
        load_config(VAETrainConfig, "no-such-preset", group="vae")


def test_renamed_keys_name_their_new_name(tmp_path):
    from osp_core.train.config import T2VTrainConfig, check_overrides

    preset = tmp_path / "p.yaml"
    preset.write_text("diffusion:\n  high_noise_fraction: 0.5\n")
    with pytest.raises(InputError, match="'diffusion.high_noise_fraction' was renamed to 'diffusion.timestep_band_fraction'"):
        load_config(T2VTrainConfig, str(preset))
    with pytest.raises(InputError, match="renamed to 'diffusion.timestep_band'"):
        check_overrides(T2VTrainConfig, {"diffusion.high_noise_range": [0, 300]})


def test_set_options_parse_yaml_scalars():
    values = parse_set_options(["run.max_steps=12", "optim.betas=[0.5, 0.9]", "run.ema=true", "model.config=a=b.json"])
    assert values == {"run.max_steps": 12, "optim.betas": [0.5, 0.9], "run.ema": True, "model.config": "a=b.json"}
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_set_options(["novalue"])


@pytest.mark.parametrize(("cls", "group", "names"), [(VAETrainConfig, "vae", {"stage1", "stage2", "stage3", "debug"}), (T2VTrainConfig, "t2v", {"65x512x512", "221x512x512", "513x512x512", "debug"})])
def test_shipped_presets_load(cls, group, names):
    assert names <= set(list_presets(group))
    for name in names:
        cfg = load_config(cls, name, group=group)
        assert cfg.run.max_steps >= 1


def test_stage_presets_carry_the_report_settings():
    stage1 = load_config(VAETrainConfig, "stage1", group="vae")
    assert (stage1.data.frames, stage1.data.height, stage1.loss.disc_start, stage1.loss.kl_weight, stage1.loss.disc_weight) == (9, 256, 2001, 1e-6, 0.5)
    assert load_config(VAETrainConfig, "stage2", group="vae").data.frames == 25
    assert load_config(VAETrainConfig, "stage3", group="vae").model.reset_mix_factor == 0.5
    t221 = load_config(T2VTrainConfig, "221x512x512", group="t2v")
    assert (t221.data.frames, t221.model.pretrained, t221.diffusion.text_dropout) == (221, "65x512x512", 0.1)
    # the debug preset's model config is found beside the preset, wherever the run starts
    debug = load_config(VAETrainConfig, "debug", group="vae")
    assert debug.model.config.endswith("tiny-vae.json")


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    from osp_core.train.config import resolve_preset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes").mkdir()  # e.g. the data of `osp data synth --out shapes`
    assert resolve_preset("shapes", "t2v").name == "shapes.yaml"
