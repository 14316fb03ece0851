"""`osp t2v train --sample-prompts FILE --validate-every N`: samples before the first step and
every N steps under samples/step-N/ and in TensorBoard (read back with its EventAccumulator),
none again for a step a resumed run sampled already, and bad prompt files refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from osp_core.train.config import T2VTrainConfig, load_config
from osp_core.train.t2v_recipe import T2VRecipe
from osp_core.train.trainer import Trainer
from tests.conftest import assert_one_line_error

PROMPTS = "# what the run should learn\na gradient moving right\n\n  a gradient moving left  \n"


def _train(clips: Path, repo: Path, out: Path, prompts: Path, **extra) -> list[dict]:
    """A LoRA run sampling `prompts` every 2 steps; returns its 'validate' events."""
    overrides = {
        "data.data": str(clips), "run.output_dir": str(out), "model.model": str(repo), "model.pretrained": "tiny", "model.text_encoder": str(repo),
        "run.max_steps": 2, "run.report_to": "tensorboard", "validation.every": 2, "validation.steps": 4, "validation.prompts_file": str(prompts),
        "lora.rank": 2, **extra,
    }  # fmt: skip
    cfg = load_config(T2VTrainConfig, "debug", overrides, group="t2v")
    events: list[dict] = []
    Trainer(cfg, T2VRecipe(cfg), reporter=lambda event, payload: events.append(payload) if event == "validate" else None).train()
    return events


def _images(out: Path) -> dict[str, list[int]]:
    """TensorBoard's image tags and their steps, as TensorBoard reads the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[int]] = {}
    for folder in sorted({p.parent for p in (out / "logs").rglob("events.out.tfevents*")}):
        events = EventAccumulator(str(folder), size_guidance={"images": 0})
        events.Reload()
        for tag in events.Tags()["images"]:
            found.setdefault(tag, []).extend(image.step for image in events.Images(tag))
    return found


def test_samples_at_the_start_and_every_n_steps_once_each_across_a_resume(clips, tiny_repo, tmp_path):
    pytest.importorskip("tensorboard")
    from osp_core.io import read_video

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "run"
    first = _train(clips, tiny_repo, out, prompts)
    assert [e["step"] for e in first] == [0, 2]  # before the first step, then every 2
    for step in (0, 2):
        folder = out / "samples" / f"step-{step:08d}"
        assert sorted(p.name for p in folder.iterdir()) == ["00.mp4", "01.mp4", "samples.json"]  # nothing left under a temporary name
        record = json.loads((folder / "samples.json").read_text())
        assert [(s["file"], s["prompt"]) for s in record["samples"]] == [("00.mp4", "a gradient moving right"), ("01.mp4", "a gradient moving left")]
        assert read_video(folder / "00.mp4").num_frames == 5
    # the start's samples are the base model's (adapters start at zero), step 2's the trained adapters'
    assert (out / "samples" / "step-00000000" / "00.mp4").read_bytes() != (out / "samples" / "step-00000002" / "00.mp4").read_bytes()
    assert _images(out) == {"samples/00": [0, 2], "samples/01": [0, 2]}
    before = (out / "samples" / "step-00000002" / "00.mp4").stat().st_mtime_ns

    resumed = _train(clips, tiny_repo, out, prompts, **{"run.max_steps": 4, "run.resume": "latest"})
    assert [e["step"] for e in resumed] == [4]  # step 2 was sampled before the checkpoint: not again
    assert (out / "samples" / "step-00000002" / "00.mp4").stat().st_mtime_ns == before
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-00000000", "step-00000002", "step-00000004"]
    assert _images(out) == {"samples/00": [0, 2, 4], "samples/01": [0, 2, 4]}


@pytest.mark.parametrize(
    "content, extra, needles",
    [
        ("# only a comment\n\n", (), ("has no prompts", "comments")),
        ("".join(f"prompt {i}\n" for i in range(17)), (), ("17 prompts", "more than the 16")),
        (b"\xff\xfe not utf-8", (), ("cannot read prompt file", "UnicodeDecodeError")),
        (None, (), ("does not exist",)),
        ("a prompt\n", ("--validate-every", "0"), ("--sample-prompts without an interval", "--validate-every")),
        ("a prompt\n", ("--validation-prompt", "x"), ("--validation-prompt and --sample-prompts both given",)),
    ],
)
def test_bad_prompt_files_are_one_line(content, extra, needles, clips, tiny_repo, tmp_path, osp_in_process):
    prompts = tmp_path / "prompts.txt"
    if isinstance(content, bytes):
        prompts.write_bytes(content)
    elif content is not None:
        prompts.write_text(content)
    args = ["--preset", "debug", "--data", str(clips), "--model", str(tiny_repo), "--pretrained", "tiny", "--text-encoder", str(tiny_repo)]
    proc = osp_in_process("t2v", "train", *args, "-o", str(tmp_path / "run"), "--sample-prompts", str(prompts), "--validate-every", "2", *extra)
    assert_one_line_error(proc, *needles, code=2)
    assert not (tmp_path / "run").exists()
