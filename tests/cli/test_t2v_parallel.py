"""`torchrun ... osp t2v sample --parallel ...`: every mode gives the frames one process gives,
one mp4 per video, and refusals in one line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from safetensors.torch import load_file

from osp_core.errors import InputError
from osp_core.parallel.launch import resolve_parallel
from tests.conftest import run_osp
from tests.distributed import torchrun

# 9 frames = 3 latent frames and 32x32 = 4 patch positions: the frames do not divide by 2 ranks
SIZE_ARGS = ("--frames", "9", "--height", "32", "--width", "32", "--dtype", "fp32", "--steps", "4", "--seed", "3")
PROMPTS = "a cat\na red balloon over a field\n"
STEMS = ["a-cat-3", "a-red-balloon-over-a-field-4"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_repo(reference_dir):
    return reference_dir / "pipeline" / "tiny-osp-v1.1.0"


def run_torchrun(ranks: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node RANKS -m osp_cli ARGS`, as a user launches it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **ONE_THREAD}
    env.pop("OSP_DEBUG", None)
    return subprocess.run([*torchrun(ranks), "-m", "osp_cli", *args], capture_output=True, text=True, env=env, timeout=timeout)


def sample_args(tiny_repo: Path, folder: Path) -> list[str]:
    prompts = folder.parent / "prompts.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    return ["t2v", "sample", "--prompts", str(prompts), *SIZE_ARGS, "--model", str(tiny_repo), "-o", str(folder), "--save-latents", "--json"]


def read_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]).astype(np.int16)


@pytest.fixture(scope="module")
def one_process(tiny_repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("one") / "videos"
    proc = run_osp(*sample_args(tiny_repo, folder), env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    return folder


def check_same_as_one_process(folder: Path, reference: Path, proc: subprocess.CompletedProcess, mode: str, ranks: int) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)  # one summary (the first rank's) for every rank's videos
    assert [Path(video["video"]).stem for video in summary["videos"]] == STEMS
    # one mp4 + latents + sidecar per video, not one per rank, and no temporaries left
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{stem}{ext}" for stem in STEMS for ext in (".mp4", ".latents.safetensors", ".json"))
    for stem in STEMS:
        expected, got = (load_file(str(f / f"{stem}.latents.safetensors"))["latents"] for f in (reference, folder))
        assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max()), stem
        assert int(np.abs(read_frames(folder / f"{stem}.mp4") - read_frames(reference / f"{stem}.mp4")).max()) <= 1, stem
        sidecar = json.loads((folder / f"{stem}.json").read_text())
        split = {"data": (ranks, 1, 1), "cfg": (1, 2, 1), "sp": (1, 1, ranks), "cfg+sp": (1, 2, ranks // 2)}[mode]
        split = dict(zip(("data", "cfg", "sp"), split))
        assert sidecar["settings"]["parallel"] == {"mode": mode, "world_size": ranks, **split}  # how the ranks were split


@pytest.mark.parametrize("mode", ["sp", "cfg", "data"])
@pytest.mark.distributed
def test_two_ranks_give_the_frames_of_one_process(mode, tiny_repo, one_process, tmp_path):
    folder = tmp_path / "videos"
    proc = run_torchrun(2, *sample_args(tiny_repo, folder), "--parallel", mode)
    check_same_as_one_process(folder, one_process, proc, mode, 2)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sp", "cfg+sp"])
@pytest.mark.distributed
def test_four_ranks_give_the_frames_of_one_process(mode, tiny_repo, one_process, tmp_path):
    # 4 ranks over 3 latent frames: one rank holds no frame in the spatial layout
    folder = tmp_path / "videos"
    proc = run_torchrun(4, *sample_args(tiny_repo, folder), "--parallel", mode)
    check_same_as_one_process(folder, one_process, proc, mode, 4)


@pytest.mark.distributed
def test_a_mode_that_cannot_apply_is_one_line_from_one_rank(tiny_repo, tmp_path):
    proc = run_torchrun(2, "t2v", "sample", "a cat", *SIZE_ARGS, "--guidance", "1", "--parallel", "cfg", "--model", str(tiny_repo), "-o", str(tmp_path / "out"))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--parallel cfg" in lines[0] and "--guidance 1" in lines[0], proc.stderr
    assert 'File "' + str(Path(__file__).parents[2] / "osp_core") not in proc.stderr  # no osp traceback
    assert not (tmp_path / "out").exists()


def test_parallel_without_torchrun_is_one_line(osp_in_process, tiny_repo, tmp_path):
    proc = osp_in_process("t2v", "sample", "a cat", *SIZE_ARGS, "--parallel", "sp", "--model", str(tiny_repo), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "torchrun" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("requested", "world", "videos", "guidance", "needle"),
    [
        ("cfg", 3, 1, 7.5, "2 processes, and this run has 3"),
        ("cfg", 2, 1, 1.0, "--guidance 1 turns it off"),
        ("cfg+sp", 2, 1, 7.5, "even number of processes >= 4"),
        ("cfg+sp", 6, 1, 1.0, "--guidance 1"),
        ("data", 4, 2, 7.5, "leave 2 of 4 processes idle"),
        ("pipeline", 2, 1, 7.5, "unknown --parallel"),
        ("sp", 1, 1, 7.5, "needs several processes"),
    ],
)
def test_modes_that_cannot_apply_say_why(requested, world, videos, guidance, needle):
    with pytest.raises(InputError, match=needle):
        resolve_parallel(requested, world, videos, guidance)


@pytest.mark.parametrize(
    ("world", "videos", "guidance", "mode", "sizes"),
    [
        (1, 1, 7.5, "none", (1, 1, 1)),
        (2, 2, 7.5, "data", (2, 1, 1)),
        (2, 1, 7.5, "cfg", (1, 2, 1)),
        (4, 1, 7.5, "cfg+sp", (1, 2, 2)),
        (3, 1, 7.5, "sp", (1, 1, 3)),
        (2, 1, 1.0, "sp", (1, 1, 2)),
    ],
)
def test_auto_picks_a_mode_for_the_world_and_job(world, videos, guidance, mode, sizes):
    layout = resolve_parallel(None, world, videos, guidance)
    assert (layout.mode, (layout.data, layout.cfg, layout.sp)) == (mode, sizes)
    assert layout.data * layout.cfg * layout.sp == max(world, 1)


@pytest.mark.distributed
def test_a_rank_that_fails_stops_the_run_with_one_line(tiny_repo, tmp_path):
    """Rank 1's sidecar name is taken by a folder: rank 1 fails at its write, rank 0 stops
    without a line of its own (torchrun's report follows), and only complete files are left."""
    folder = tmp_path / "videos"
    (folder / f"{STEMS[1]}.json" / "taken").mkdir(parents=True)
    proc = run_torchrun(2, *sample_args(tiny_repo, folder), "--parallel", "data", "--overwrite")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"{STEMS[1]}.json" in lines[0], proc.stderr
    assert 'File "' + str(Path(__file__).parents[2] / "osp_core") not in proc.stderr
    # rank 0's video is all there or not at all (a kill mid-write leaves only hidden temporaries,
    # which the next run sweeps); rank 1's is not there
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible in ([f"{STEMS[1]}.json"], sorted([f"{STEMS[0]}{ext}" for ext in (".mp4", ".latents.safetensors", ".json")] + [f"{STEMS[1]}.json"]))


def test_plan_refuses_a_cache_with_shared_videos_and_only_the_first_rank_reports(tiny_repo, tmp_path, monkeypatch):
    from osp_core.jobs.sampling import run_sampling
    from osp_core.jobs.sampling_plan import SamplingJob, plan_sampling

    monkeypatch.setenv("WORLD_SIZE", "2")
    job = SamplingJob(prompts=["a cat"], frames=9, height=32, width=32, dtype="fp32", model=str(tiny_repo), output_dir=tmp_path / "out", cache="pab", parallel="sp")
    with pytest.raises(InputError, match="--cache pab cannot run with --parallel sp"):
        plan_sampling(job)
    assert plan_sampling(SamplingJob(**{**job.__dict__, "parallel": "data", "prompts": ["a", "b"]})).parallel.mode == "data"
    for rank, quiet in (("0", False), ("1", True)):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(InputError) as refused:
            run_sampling(job)
        assert refused.value.quiet is quiet
    assert not (tmp_path / "out").exists()
