"""`osp t2v train` on data the way people have it: a folder of videos with .txt captions, of
mixed sizes and lengths, in frames x height x width buckets (one shape per batch); and the
bad bucket options, each one line before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from osp_core.train.config import T2VTrainConfig, load_config
from osp_core.train.t2v_recipe import T2VRecipe
from osp_core.train.trainer import Trainer

from tests.conftest import assert_one_line_error


def _clip(path: Path, frames: int, height: int, width: int, shade: int) -> None:
    from osp_core.io import write_video

    ramp = torch.linspace(0, 1, width).view(1, 1, width, 1)
    video = (ramp * shade + torch.arange(frames).view(frames, 1, 1, 1) * 5).expand(frames, height, width, 3)
    write_video(path, video.clamp(0, 255).to(torch.uint8), fps=8)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """A captioned folder: two 12-frame 40x48 clips, two 4-frame 48x32 ones, one corrupt file."""
    root = tmp_path_factory.mktemp("mixed")
    for name, (frames, h, w) in {"wide0": (12, 40, 48), "wide1": (12, 40, 48), "tall0": (4, 48, 32), "tall1": (4, 48, 32)}.items():
        _clip(root / f"{name}.mp4", frames, h, w, 120 + 30 * len(name))
        (root / f"{name}.txt").write_text(f"a {name[:4]} gradient\n")
    (root / "broken.mp4").write_bytes(b"not a video")
    (root / "broken.txt").write_text("unreadable")
    return root


class _Recording(T2VRecipe):
    """Records the shape of every micro-batch it trains on."""

    shapes: list[tuple[int, ...]]

    def train_step(self, micro_batches, step):
        self.shapes = getattr(self, "shapes", []) + [tuple(b["video"].shape) for b in micro_batches]
        return super().train_step(micro_batches, step)


def test_mixed_sizes_from_a_captioned_folder_train_one_bucket_per_batch(mixed_folder, tiny_repo, tmp_path):
    overrides = {
        "data.data": str(mixed_folder),
        "data.buckets": "auto",
        "data.use_image_num": 2,
        "run.batch_size": 2,
        "run.max_steps": 6,
        "run.checkpoint_every": 100,
        "run.output_dir": str(tmp_path),
        "model.model": str(tiny_repo),
        "model.pretrained": "tiny",
        "model.text_encoder": str(tiny_repo),
    }
    cfg = load_config(T2VTrainConfig, "debug", overrides, group="t2v")  # 5x32x32 at stride 2
    events: list[tuple[str, dict]] = []
    recipe = _Recording(cfg)
    summary = Trainer(cfg, recipe, reporter=lambda event, payload: events.append((event, payload))).train()
    assert summary["steps"] == 6
    # 40x48 -> 16x32 (aspect kept inside 32x32), 5 of 6 frames; 48x32 -> 32x16, 2 frames at stride 2 -> 1
    assert summary["buckets"] == {"5x16x32": 2, "1x32x16": 2}
    assert set(recipe.shapes) == {(2, 3, 5, 16, 32), (2, 3, 1, 32, 16)}  # every batch one shape, both trained
    assert summary["skipped_samples"] == 1 and summary["skipped"][0]["path"].endswith("broken.mp4")
    start = next(payload for event, payload in events if event == "start")
    warnings = [payload["message"] for event, payload in events if event == "warning"]
    assert start["samples"] == 4 and start["buckets"] == summary["buckets"]
    assert any("1 of 5 clips are left out" in w and "broken.mp4" in w for w in warnings), warnings
    assert events.index(next(e for e in events if e[0] == "warning")) < events.index(next(e for e in events if e[0] == "start"))


def _cli(data: Path, repo: Path, out: Path, *extra: str) -> list[str]:
    return ["t2v", "train", "--preset", "debug", "--data", str(data), "--model", str(repo), "--pretrained", "tiny", "--text-encoder", str(repo), "-o", str(out), "--max-steps", "1", *extra]


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (("--buckets", "6x32x32"), ("bucket 6x32x32", "not 4k+1")),
        (("--buckets", "5x24x32"), ("24x32 is not a multiple of 16",)),
        (("--buckets", "9x32x32,5x32x32"), ("bucket 9x32x32 is larger than --frames 5",)),
        (("--buckets", "5-32-32"), ("cannot read bucket '5-32-32'",)),
        (("--upscale",), ("--upscale without --buckets",)),
        (("--buckets", "auto", "--fps", "-2"), ("data.fps must be >= 0",)),
    ],
)
def test_bad_bucket_options_are_one_line(osp_in_process, mixed_folder, tiny_repo, tmp_path, monkeypatch, extra, needles):
    monkeypatch.setattr(T2VRecipe, "build", lambda self, accelerator: pytest.fail("a model loaded"))
    proc = osp_in_process(*_cli(mixed_folder, tiny_repo, tmp_path / "run", *extra))
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "run").exists()


def test_bad_folders_and_unfit_data_are_one_line_before_any_model_loads(osp_in_process, mixed_folder, tiny_repo, tmp_path, monkeypatch):
    monkeypatch.setattr(T2VRecipe, "build", lambda self, accelerator: pytest.fail("a model loaded"))
    uncaptioned = tmp_path / "uncaptioned"
    uncaptioned.mkdir()
    (uncaptioned / "a.mp4").write_bytes((mixed_folder / "wide0.mp4").read_bytes())
    assert_one_line_error(osp_in_process(*_cli(uncaptioned, tiny_repo, tmp_path / "run")), "a.mp4' has no caption file 'a.txt'")
    (uncaptioned / "a.txt").write_text("a gradient")
    # 12 frames at stride 2 hold 6: a 9-frame bucket fits none of them
    proc = osp_in_process(*_cli(uncaptioned, tiny_repo, tmp_path / "run", "--frames", "9", "--buckets", "9x32x32"))
    assert_one_line_error(proc, "none of the 1 clips fits a bucket", "a.mp4", "6 frame(s) at stride 2")
    proc = osp_in_process("vae", "train", "--preset", "debug", "--data", str(uncaptioned), "-o", str(tmp_path / "run"), "--set", "data.buckets=auto")
    assert_one_line_error(proc, "text-to-video options")
    assert not (tmp_path / "run").exists()
