"""The `shapes-lora` recipe (preset) and the example adapter shipped with `builtin:shapes`
(`builtin:shapes/lora/orange`, made by that recipe). Training it is the benchmark
(benchmarks/shapes_lora.py), not a test."""

from __future__ import annotations

import json

import pytest

from osp_core.hub import BUILTIN_ROOT, resolve_model_dir
from osp_core.io import read_video
from tests.conftest import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = BUILTIN_ROOT / "shapes" / "lora" / "orange"


def test_the_preset_loads_and_plans_on_the_built_in_model(tmp_path, osp_in_process):
    from osp_core.models.lora import check_rank, target_modules
    from osp_core.pipelines.lora_inputs import TEXT_PATTERN, split_targets
    from osp_core.pipelines.t2v import load_t5_encoder
    from osp_core.pipelines.t2v_inputs import locate_t5
    from osp_core.train.config import T2VTrainConfig, load_config
    from osp_core.train.plan import check_t2v_config

    cfg = load_config(T2VTrainConfig, "shapes-lora", group="t2v")
    check_t2v_config(cfg)
    assert (cfg.model.model, cfg.model.pretrained, cfg.lora.rank, cfg.lora.targets, cfg.lora.preserve_captions, cfg.lora.preserve_weight, cfg.run.ema) == ("builtin:shapes", "17x64x64", 8, "cross,text", "model", 3.0, False)
    assert split_targets(cfg.lora.targets) == ("cross", True)  # the caption cross-attention and the text encoder
    assert (cfg.data.frames, cfg.data.height, cfg.data.width) == (17, 64, 64) and cfg.data.cache_dir
    encoder = load_t5_encoder(locate_t5(None, resolve_model_dir(cfg.model.model, subfolders=[])), None)
    modules = target_modules(encoder, TEXT_PATTERN)
    check_rank(modules, cfg.lora.rank)
    assert len(modules) == 14  # q, k, v, o, wi_0, wi_1, wo of the tiny T5's 2 layers
    proc = osp_in_process("t2v", "train", "--preset", "shapes-lora", "--data", str(tmp_path / "D" / "data.txt"), "-o", str(tmp_path / "run"), "--print-config")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["lora"]["rank"] == 8 and printed["model"]["model"] == "builtin:shapes" and printed["run"]["output_dir"] == str(tmp_path / "run")
    proc = osp_in_process("t2v", "train", "--preset", "shapes-lora", "--data", str(tmp_path / "D" / "data.txt"), "-o", str(tmp_path / "run"), "--set", "lora.rank=0")
    assert_one_line_error(proc, "rank")
    assert not (tmp_path / "run").exists()


def test_the_example_adapter_is_small_loads_by_name_and_changes_the_video(tmp_path, osp_in_process):
    files = {str(p.relative_to(EXAMPLE)): p.stat().st_size for p in EXAMPLE.rglob("*") if p.is_file()}
    parts = {"adapter_config.json", "adapter_model.safetensors"}
    assert set(files) == parts | {f"text_encoder/{name}" for name in parts} and sum(files.values()) < 2 * 2**20
    assert json.loads((EXAMPLE / "adapter_config.json").read_text())["r"] == json.loads((EXAMPLE / "text_encoder" / "adapter_config.json").read_text())["r"] == 8
    sample = ["t2v", "sample", "a orange circle moving right", "--model", "builtin:shapes", "--steps", "4", "--seed", "5", "--dtype", "fp32", "--json"]
    base = osp_in_process(*sample, "-o", str(tmp_path / "base"))
    adapted = osp_in_process(*sample, "-o", str(tmp_path / "adapted"), "--lora", "builtin:shapes/lora/orange")
    assert base.returncode == 0 and adapted.returncode == 0, adapted.stderr
    (before,), (after,) = json.loads(base.stdout)["videos"], json.loads(adapted.stdout)["videos"]
    difference = (read_video(after["video"]).frames.float() - read_video(before["video"]).frames.float()).abs().mean()
    assert difference > 1.0
    sidecar = json.loads(open(after["video"].rsplit(".", 1)[0] + ".json").read())
    assert sidecar["models"]["lora"][0]["path"] == str(EXAMPLE) and sidecar["models"]["lora"][0]["scale"] == 1.0
    assert sidecar["models"]["lora"][0]["parts"] == ["transformer", "text_encoder"]
    assert_one_line_error(osp_in_process(*sample, "-o", str(tmp_path / "none"), "--lora", "builtin:shapes/lora/mauve"), "does not exist")
