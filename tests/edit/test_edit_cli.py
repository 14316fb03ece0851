"""`osp edit` as a user runs it: one end-to-end run, and every bad input refused in one line
with nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from osp_core.io import write_video
from tests.conftest import assert_one_line_error, run_osp
from tests.edit.helpers import moving_square


@pytest.fixture(scope="module")
def tiny_repo(reference_dir):
    return reference_dir / "pipeline" / "tiny-osp-v1.1.0"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit-inputs")
    write_video(folder / "in.mp4", moving_square(frames=9), fps=8)
    write_video(folder / "ten.mp4", moving_square(frames=10), fps=8)
    Image.fromarray(moving_square(frames=1)[0].numpy()).save(folder / "first.png")
    Image.fromarray(moving_square(frames=1, size=48)[0, :32].numpy()).save(folder / "first-wide.png")
    Image.new("L", (32, 32), 0).save(folder / "empty-mask.png")
    Image.new("L", (16, 32), 255).save(folder / "small-mask.png")
    (folder / "short-track.json").write_text(json.dumps([[[5, 5]] * 8]))
    (folder / "nan-track.json").write_text("[[[NaN, 5]" + ", [5, 5]" * 8 + "]]")  # Python's json reads NaN
    # not square, so a size written width-first reads wrong: 32 high, 48 wide; 60 high, 64 wide
    write_video(folder / "wide.mp4", moving_square(frames=9, size=48)[:, :32], fps=8)
    write_video(folder / "odd.mp4", moving_square(frames=9, size=64)[:, :60], fps=8)
    return folder


def test_edit_end_to_end(inputs, tiny_repo, tmp_path):
    out = tmp_path / "edited.mp4"
    proc = run_osp(
        "edit", str(inputs / "in.mp4"), "-o", str(out), "--box", "0,0,16,32", "--first-frame", str(inputs / "first.png"),
        "--prompt", "a square", "--keep-motion", "--model", str(tiny_repo), "--steps", "4", "--seed", "1", "--dtype", "fp32", "--json",
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["engine"] == "blend" and record["track_source"] == "keep-motion" and len(record["tracks"]) >= 1
    assert out.is_file() and out.with_suffix(".json").is_file()
    again = run_osp("edit", str(inputs / "in.mp4"), "-o", str(out), "--box", "0,0,16,32", "--model", str(tiny_repo))
    assert_one_line_error(again, "already exists", "--overwrite")


BAD = [
    (["--box", "0,0,40,16"], "outside the 32x32 (HxW) frame"),
    (["--box", "4,4,4,20"], "empty"),
    (["--box", "1,2,3"], "four integers"),
    ([], "--box or --mask"),
    (["--mask", "{d}/small-mask.png"], "is 32x16 (HxW), the video 32x32 (HxW)"),
    (["--mask", "{d}/empty-mask.png"], "no set pixel"),
    (["--box", "0,0,16,16", "--first-frame", "{d}/first-wide.png"], "resize it to 32x32 (HxW)"),
    (["--box", "0,0,16,16", "--track", "5,5:40,5"], "outside the 32x32 (HxW) frame"),
    (["--box", "0,0,16,16", "--track-file", "{d}/nan-track.json"], "point (nan, 5) at frame 0 is not a finite number"),
    (["--box", "0,0,16,16", "--track-file", "{d}/short-track.json"], "8 points, the edit 9 frames"),
    (["--box", "0,0,16,16", "--track", "5,5:9,5", "--keep-motion"], "not both"),
    (["--box", "0,0,16,16", "--engine", "control"], "no edit control module"),
    (["--box", "0,0,16,16", "--engine", "magic"], "unknown --engine"),
    (["--box", "0,0,16,16", "--strength", "0"], "--strength"),
    (["--box", "0,0,16,16", "--frames", "8"], "not 4k+1"),
]


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[b[1] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(osp_in_process, inputs, tiny_repo, tmp_path, args, needle):
    out = tmp_path / "sub" / "out.mp4"
    proc = osp_in_process("edit", str(inputs / "in.mp4"), "-o", str(out), *[a.format(d=inputs) for a in args], "--model", str(tiny_repo))
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize(
    ("video", "args", "needles"),
    [
        ("odd.mp4", ["--box", "0,0,16,16"], ("the video is 60x64 (HxW), not a multiple of 16", "e.g. to 48x64 (HxW)")),
        ("wide.mp4", ["--box", "0,0,16,40"], ("outside the 32x48 (HxW) frame", "Y0 < Y1 <= 32")),
        ("wide.mp4", ["--box", "0,0,16,16", "--first-frame", "{d}/first.png"], ("is 32x32 (HxW), the video 32x48 (HxW)", "resize it to 32x48 (HxW)")),
        ("wide.mp4", ["--box", "0,0,16,16", "--track", "5,5:5,40"], ("(5, 35.625) at frame 7 is outside the 32x48 (HxW) frame", "0 <= y < 32")),
    ],
)
def test_frame_sizes_are_height_first_like_everywhere_else(osp_in_process, inputs, tiny_repo, tmp_path, video, args, needles):
    """`osp edit` wrote sizes width-first ("the video is 64x60" for a 60-high video)."""
    proc = osp_in_process("edit", str(inputs / video), "-o", str(tmp_path / "out.mp4"), *[a.format(d=inputs) for a in args], "--model", str(tiny_repo))
    assert_one_line_error(proc, *needles)


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
    assert any(w.startswith("the model's edit strength 0.5 of 6 steps is 3") for w in unset.sampling.warnings)
