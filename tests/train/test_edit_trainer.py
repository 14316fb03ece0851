"""`osp edit train`: the control module learns beside a frozen transformer, resumes exactly,
runs the three stages, and its checkpoint is a folder `osp edit` loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from osp_core.errors import InputError
from osp_core.train.config import EditTrainConfig, load_config
from osp_core.train.edit_recipe import EditRecipe, stage_parameters
from osp_core.train.trainer import Trainer
from tests.distributed import torchrun

from .helpers import checkpoint_weights


def _config(data: Path, repo: Path, out: Path, **extra):
    overrides = {"data.data": str(data), "run.output_dir": str(out), "model.model": str(repo), "model.pretrained": "tiny", "model.text_encoder": str(repo), **extra}
    return load_config(EditTrainConfig, "debug", overrides, group="edit")


def _run(cfg) -> tuple[dict, Trainer]:
    trainer = Trainer(cfg, EditRecipe(cfg), reporter=lambda event, payload: None)
    return trainer.train(), trainer


@pytest.fixture(scope="module")
def two_objects(tmp_path_factory) -> Path:
    from osp_core.data.shapes import synthesize

    return synthesize(tmp_path_factory.mktemp("two") / "d", 3, seed=11, objects=2)


def test_resume_gives_the_same_weights_and_the_transformer_stays_frozen(clips, tiny_repo, tmp_path):
    from osp_core.models.latte_t2v import LatteT2V

    extra = {"run.deterministic": True, "data.random_start": False}
    straight, _ = _run(_config(clips, tiny_repo, tmp_path / "a", **{"run.max_steps": 4, **extra}))
    _run(_config(clips, tiny_repo, tmp_path / "b", **{"run.max_steps": 2, **extra}))
    resumed, trainer = _run(_config(clips, tiny_repo, tmp_path / "b", **{"run.max_steps": 4, "run.resume": "latest", **extra}))
    assert resumed["steps_this_run"] == 2
    a, b = checkpoint_weights(Path(straight["checkpoint"])), checkpoint_weights(Path(resumed["checkpoint"]))
    assert a.keys() == b.keys() and any("zero_projections" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the control learned (its zero projections moved) and the transformer did not
    assert any(v.abs().sum() > 0 for k, v in a.items() if "zero_projections.0.weight" in k)
    frozen = LatteT2V.from_pretrained(str(tiny_repo / "tiny")).state_dict()
    for key, value in trainer.recipe.transformer.state_dict().items():
        assert torch.equal(value.cpu(), frozen[key]), key


def test_stages_on_annotated_objects_and_the_checkpoint_loads(two_objects, tiny_repo, tmp_path):
    from osp_core.models.edit_control import EditControl

    size = {"data.height": 64, "data.width": 64, "data.frames": 9, "data.stride": 1, "run.max_steps": 1, "run.checkpoint_every": 1}
    one, trainer = _run(_config(two_objects, tiny_repo, tmp_path / "s1", **size))
    # the region and tracks came from the annotation: the object's centre path
    batch = trainer.recipe.collate([trainer.recipe.dataset()[0]])
    mask, tracks = trainer.recipe._region_and_tracks(batch, 0, __import__("numpy").random.default_rng(0))
    entry, start = trainer.recipe.clips.entries[int(batch["index"][0])], int(batch["start"][0])
    assert len(tracks) == 1 and any(torch.allclose(tracks[0], torch.tensor(o["centers"][start : start + 9], dtype=torch.float32), atol=1e-3) for o in entry.objects)
    x, y = (int(v) for v in tracks[0][0])
    assert mask[0, y, x] == 1
    stage1 = Path(one["checkpoint"]) / "model"
    two, _ = _run(_config(two_objects, tiny_repo, tmp_path / "s2", **size, **{"edit.stage": 2, "edit.pretrained": str(stage1)}))
    stage2 = Path(two["checkpoint"]) / "model"
    three, _ = _run(_config(two_objects, tiny_repo, tmp_path / "s3", **size, **{"edit.stage": 3, "edit.pretrained": str(stage2)}))
    before, after = EditControl.from_pretrained(stage2), EditControl.from_pretrained(Path(three["checkpoint"]) / "model")
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])}
    assert changed and all(".attn1." in k and k.startswith("temporal_transformer_blocks") for k in changed), changed


def test_stage_three_trains_temporal_attention_only():
    from tests.models.test_edit_control import tiny_transformer
    from osp_core.models.edit_control import EditControl

    control = EditControl.from_transformer(tiny_transformer(), num_layers=2, fusion_channels=8)
    params = stage_parameters(control, 3)
    names = {n for n, p in control.named_parameters() if p.requires_grad}
    assert len(params) == len(names) > 0 and all(n.startswith("temporal_transformer_blocks") and ".attn1." in n for n in names)
    assert len(stage_parameters(control, 1)) == len(list(control.parameters()))


def test_stage_three_needs_a_trained_module(clips, tiny_repo, tmp_path):
    cfg = _config(clips, tiny_repo, tmp_path, **{"edit.stage": 3})
    with pytest.raises(InputError, match="stage 3"):
        _run(cfg)


def test_cli_refuses_stage_three_without_a_module_in_one_line(osp_in_process, clips, tiny_repo, tmp_path):
    from tests.conftest import assert_one_line_error

    proc = osp_in_process("edit", "train", "--preset", "debug", "--data", str(clips), "--model", str(tiny_repo), "--version", "tiny", "--text-encoder", str(tiny_repo), "--stage", "3", "-o", str(tmp_path / "run"))
    assert_one_line_error(proc, "stage 3", "--edit-module")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_refuses_fsdp_in_one_line(osp_in_process, clips, tiny_repo, tmp_path):
    from tests.conftest import assert_one_line_error

    out = tmp_path / "run"
    proc = osp_in_process("edit", "train", "--preset", "debug", "--data", str(clips), "--model", str(tiny_repo), "--version", "tiny", "--text-encoder", str(tiny_repo), "--set", "parallel.strategy=fsdp", "-o", str(out))
    assert_one_line_error(proc, "runs under --strategy ddp", "drop parallel.strategy")
    assert not (out / "checkpoints").exists()


@pytest.mark.distributed
def test_torchrun_ddp_on_two_ranks_keeps_them_identical(clips, tiny_repo, tmp_path):
    """`torchrun --nproc_per_node 2 -m osp_cli.edit_train` (CPU ranks, DDP): both ranks end with
    the same control weights, every rank's data counted, one checkpoint with both RNG states."""
    import json

    from .helpers import run_module

    args = ("--preset", "debug", "--data", str(clips), "--model", str(tiny_repo), "--version", "tiny", "--text-encoder", str(tiny_repo), "--max-steps", "2", "--json")
    proc = run_module("osp_cli.edit_train", *args, "-o", str(tmp_path), launcher=torchrun(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["processes"] == 2 and summary["parallel"]["strategy"] == "ddp" and summary["samples_seen"] == 4
    assert summary["ranks_in_sync"] is True and len(summary["rank_weight_digests"]) == 2
    checkpoint = tmp_path / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in (checkpoint / "accelerate").glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]


def test_cli_refuses_a_missing_edit_module_in_one_line(osp_in_process, clips, tiny_repo, tmp_path):
    from tests.conftest import assert_one_line_error

    out = tmp_path / "run"
    proc = osp_in_process("edit", "train", "--preset", "debug", "--data", str(clips), "--model", str(tiny_repo), "--version", "tiny", "--text-encoder", str(tiny_repo), "--stage", "2", "--edit-module", str(tmp_path / "nope" / "model"), "-o", str(out))
    assert_one_line_error(proc, "is not a control module folder", "osp edit train")
    assert not (out / "checkpoints").exists()
