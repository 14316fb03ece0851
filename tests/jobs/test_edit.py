"""The edit job (`jobs.edit`) on the tiny reference model: planning (strength, steps after the
cut), reading inputs, and the files a run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from osp_core.jobs.edit import EditJob, run_edit
from tests.conftest import assert_one_line_error
from tests.clips import inputs, moving_square  # noqa: F401 - inputs is a fixture

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_repo(reference_dir):
    return reference_dir / "pipeline" / "tiny-osp-v1.1.0"


def test_a_name_taken_meanwhile_suggests_another_o(inputs, tiny_repo, tmp_path):
    """`osp edit` has no --seed in its file name and no --output-dir: the fix is another -o."""
    from osp_core.errors import InputError
    from osp_core.jobs.edit import EditJob, run_edit
    from osp_core.jobs.progress import NoProgress

    out = tmp_path / "edited.mp4"

    class AnotherRunWrites(NoProgress):
        def step(self, done: int, total: int) -> None:
            out.write_bytes(b"another run's video") if not out.exists() else None

    job = EditJob(video=inputs / "in.mp4", output=out, box="0,0,16,16", model=str(tiny_repo), steps=4, seed=1, dtype="fp32")
    with pytest.raises(InputError) as raised:
        run_edit(job, AnotherRunWrites())
    assert "was written by another run meanwhile" in str(raised.value)
    assert str(raised.value).endswith("(pass --overwrite to replace it, or choose another -o)")
    assert "--seed" not in str(raised.value) and out.read_bytes() == b"another run's video"
    assert not out.with_suffix(".json").exists()


def test_frames_not_4k1_and_auto(osp_in_process, inputs, tiny_repo, tmp_path):
    proc = osp_in_process("edit", str(inputs / "ten.mp4"), "-o", str(tmp_path / "o.mp4"), "--box", "0,0,16,16", "--model", str(tiny_repo))
    assert_one_line_error(proc, "10 frames, not 4k+1", "--frames auto")
    assert list(tmp_path.iterdir()) == []
    from osp_core.jobs.edit import EditJob, read_edit_inputs

    read = read_edit_inputs(EditJob(video=inputs / "ten.mp4", output=tmp_path / "o.mp4", box="0,0,16,16", frames="auto"))
    assert read.shape == (9, 32, 32) and read.track_source == "keep-motion"
    assert torch.equal(read.mask[:, :16, :16], torch.ones(9, 16, 16))


def test_unset_strength_comes_from_the_model(inputs, tiny_repo, tmp_path):
    import shutil

    from osp_core.errors import ModelLoadError
    from osp_core.jobs.edit import EditJob, plan_edit

    def plan(model, **kw):
        return plan_edit(EditJob(video=inputs / "in.mp4", output=tmp_path / "o.mp4", box="0,0,16,16", model=str(model), **kw))

    assert plan(tiny_repo).strength == 1.0  # no edit_strength: the region starts from noise
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    (repo / "sampling.json").write_text(json.dumps({"edit_strength": 0.25}))
    assert plan(repo).strength == 0.25
    assert plan(repo, strength=0.8).strength == 0.8  # --strength wins
    (repo / "sampling.json").write_text(json.dumps({"edit_strength": 1.5}))
    with pytest.raises(ModelLoadError, match="edit_strength"):
        plan(repo)
    assert list(tmp_path.iterdir()) == [repo]  # planning writes nothing


def test_a_cut_that_leaves_pndm_too_few_steps_runs_its_fewest_and_says_so(inputs, tiny_repo, tmp_path):
    from osp_core.jobs.edit import EditJob, plan_edit

    plan = plan_edit(EditJob(video=inputs / "in.mp4", output=tmp_path / "o.mp4", box="0,0,16,16", model=str(tiny_repo), strength=0.5, steps=6))
    assert plan.sampling.scheduler == "PNDM" and plan.steps_run == 4  # not 3: PNDM's Runge-Kutta start needs 4
    assert any("runs at least 4" in w and "--steps 8" in w for w in plan.sampling.warnings)
    enough = plan_edit(EditJob(video=inputs / "in.mp4", output=tmp_path / "o.mp4", box="0,0,16,16", model=str(tiny_repo), strength=0.5, steps=8))
    assert enough.steps_run == 4 and not enough.sampling.warnings
    tiny = plan_edit(EditJob(video=inputs / "in.mp4", output=tmp_path / "o.mp4", box="0,0,16,16", model=str(tiny_repo), strength=1e-6, steps=6))
    assert tiny.steps_run == 4 and any("pass a higher --strength" in w for w in tiny.sampling.warnings)  # not --steps 4000000
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    (repo / "sampling.json").write_text(json.dumps({"edit_strength": 0.5}))
    unset = plan_edit(EditJob(video=inputs / "in.mp4", output=tmp_path / "o.mp4", box="0,0,16,16", model=str(repo), steps=6))
    assert any(w.startswith("the model's edit strength 0.5 keeps 3 of the 6 steps") for w in unset.sampling.warnings)


def test_run_edit_writes_video_and_sidecar_and_keeps_outside(tiny_repo, tmp_path, monkeypatch):
    import json

    from osp_core.eval.edit import evaluate_sidecar

    from osp_core.io import read_video, write_video

    write_video(tmp_path / "in.mp4", moving_square(), fps=8)
    job = EditJob(video=tmp_path / "in.mp4", output=tmp_path / "out" / "edited.mp4", box="0,0,16,32", prompt="a square", tracks=["10,14:20,14"], model=str(tiny_repo), steps=4, seed=3, dtype="fp32", engine="blend")
    summary = run_edit(job)
    source = read_video(tmp_path / "in.mp4").frames
    outside = torch.zeros(9, 32, 32, 3, dtype=torch.bool)
    outside[:, :, 16:] = True
    assert torch.equal(summary.frames[outside], source[outside])
    written = read_video(tmp_path / "out" / "edited.mp4")
    assert written.frames.shape == (9, 32, 32, 3) and written.fps == 8
    sidecar = json.loads((tmp_path / "out" / "edited.json").read_text())
    assert sidecar["engine"] == "blend" and sidecar["region"]["box"] == [0, 0, 16, 32] and sidecar["seed"] == 3
    assert sidecar["track_source"] == "track" and sidecar["tracks"][0][0] == [10, 14] and sidecar["tracks"][0][-1] == [20, 14]
    assert set(sidecar["seconds"]) == {"load", "text_encoder", "encode", "denoise", "decode", "write"}
    assert set(summary.record["seconds"]) == {*sidecar["seconds"], "total"} and Path(summary.record["source"]).is_absolute()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["edited.json", "edited.mp4"]
    # inputs are recorded relative to the sidecar: `osp eval edit` reads them from anywhere,
    # not what an unrelated file of the same name in the working directory holds
    assert sidecar["source"] == "../in.mp4" and sidecar["strength"] == sidecar["strength_run"] == 1.0 and sidecar["steps_run"] == 4
    decoy = tmp_path / "decoy"
    (decoy / "cwd").mkdir(parents=True)
    write_video(decoy / "in.mp4", torch.full((9, 32, 32, 3), 255, dtype=torch.uint8), fps=8)
    monkeypatch.chdir(decoy / "cwd")  # where "../in.mp4" is the decoy
    assert evaluate_sidecar(tmp_path / "out" / "edited.mp4")["psnr_outside"] > 34  # the real source (equal up to H.264: 36.8 dB measured), not white


@pytest.mark.parametrize(("scheduler", "evaluations"), [("DDIM", 2), ("PNDM", 4 * 3 + 1)])
def test_the_sidecar_counts_the_steps_that_ran(tiny_repo, tmp_path, scheduler, evaluations):
    import json
    import shutil

    from osp_core.io import write_video

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    (repo / "sampling.json").write_text(json.dumps({"scheduler": scheduler}))
    write_video(tmp_path / "in.mp4", moving_square(), fps=8)
    steps = 4 if scheduler == "DDIM" else 8
    job = EditJob(video=tmp_path / "in.mp4", output=tmp_path / "edited.mp4", box="0,0,16,32", prompt="a square", tracks=["10,14:20,14"], model=str(repo), steps=steps, seed=3, dtype="fp32", engine="blend", strength=0.5)
    run_edit(job)
    sidecar = json.loads((tmp_path / "edited.json").read_text())
    # DDIM: 2 of 4 steps; PNDM: 4 of 8 (3 Runge-Kutta steps of 4 evaluations, then one PLMS step)
    assert sidecar["steps_run"] == steps // 2 and sidecar["strength"] == sidecar["strength_run"] == 0.5
    assert sidecar["settings"]["scheduler"] == f"{scheduler}Scheduler" and sidecar["settings"]["cache"]["transformer_evaluations"] == evaluations


def test_a_whole_frame_edit_rerenders_the_clip_closer_to_the_source_at_low_strength(tmp_path):
    """A remix on builtin:shapes: the mp4 and sidecar are written; at strength 0.3 the result
    differs from the source yet stays nearer it than at 1; at 1 it is text-to-video from the
    seed's noise, frame for frame."""
    from osp_core.data.shapes import iter_clips, render
    from osp_core.errors import InputError
    from osp_core.eval.edit import evaluate_sidecar
    from osp_core.io import read_video, write_video
    from osp_core.jobs.sampling import run_sampling
    from osp_core.jobs.sampling_plan import SamplingJob
    from osp_core.metrics import psnr

    source = write_video(tmp_path / "clip.mp4", render(next(iter_clips(1, 0))), fps=8)  # a blue square moving down, 17x64x64
    frames = read_video(source).frames
    prompt = "a blue circle moving left"

    def remix(strength: float):
        job = EditJob(video=source, output=tmp_path / f"remix-{strength}.mp4", whole_frame=True, prompt=prompt, strength=strength, model="builtin:shapes", steps=10, seed=0, dtype="fp32")
        return run_edit(job)

    low, full = remix(0.3), remix(1.0)
    written = read_video(tmp_path / "remix-0.3.mp4")
    assert written.frames.shape == (17, 64, 64, 3) and written.fps == 8
    sidecar = json.loads((tmp_path / "remix-0.3.json").read_text())
    assert sidecar["region"] == {"whole_frame": True, "pixels_first_frame": 64 * 64} and sidecar["engine"] == "blend"
    assert sidecar["prompt"] == prompt and sidecar["strength"] == 0.3 and sidecar["tracks"] == [] and sidecar["track_source"] == "whole-frame"
    near, far = psnr(frames.float(), low.frames.float()), psnr(frames.float(), full.frames.float())
    assert not torch.equal(low.frames, frames) and near < 40  # re-rendered, the first frame too
    assert psnr(frames[:1].float(), low.frames[:1].float()) < 40
    assert near > far + 3, (near, far)  # 22.6 vs 14.0 dB measured
    t2v = run_sampling(SamplingJob(prompts=[prompt], steps=10, seed=0, dtype="fp32", model="builtin:shapes", output_dir=tmp_path / "t2v"))
    assert torch.equal(read_video(t2v.to_dict()["videos"][0]["video"]).frames, read_video(tmp_path / "remix-1.0.mp4").frames)
    with pytest.raises(InputError, match="whole-frame edit"):
        evaluate_sidecar(tmp_path / "remix-0.3.mp4")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"box": "0,0,16,16"}, "--box was given"),
        ({"mask": Path("m.png")}, "--mask was given"),
        ({"first_frame": Path("f.png")}, "--first-frame was given"),
        ({"tracks": ["1,1:2,2"]}, "--track was given"),
        ({"track_file": Path("t.json")}, "--track-file was given"),
        ({"keep_motion": True}, "--keep-motion was given"),
        ({"box": "0,0,16,16", "keep_motion": True}, "--box, --keep-motion were given"),
        ({"engine": "control"}, "--engine control edits a region"),
        ({"prompt": "  "}, "--whole-frame needs a --prompt"),
    ],
)
def test_whole_frame_refuses_what_holds_a_region(tmp_path, given, expected):
    from osp_core.errors import InputError

    options = {"prompt": "a cat", **given}
    with pytest.raises(InputError, match=expected):
        EditJob(video=tmp_path / "in.mp4", output=tmp_path / "o.mp4", whole_frame=True, **options).validate()
    EditJob(video=tmp_path / "in.mp4", output=tmp_path / "o.mp4", whole_frame=True, prompt="a cat", engine="blend").validate()
    with pytest.raises(InputError, match="give the region with --box or --mask"):
        EditJob(video=tmp_path / "in.mp4", output=tmp_path / "o.mp4", prompt="a cat").validate()
