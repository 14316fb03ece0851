"""`osp caption` as a user runs it: the annotation format, filters, a killed run, two ranks, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from osp_core.caption.clips import split
from osp_core.caption.journal import journal_dir
from tests.conftest import ROOT, assert_one_line_error, run_osp
from tests.distributed import torchrun

COMMON = ["--clip-frames", "8", "--num-frames", "3", "--batch-size", "2", "--max-new-tokens", "5"]
VIDEO_KEYS = {"path", "cap", "frame_idx", "fps", "num_frames", "resolution", "motion_score", "caption_model", "is_english"}


@pytest.fixture(scope="module")
def dataset(clips_dir, tmp_path_factory):
    """The generated clips plus an unreadable file and a non-video file."""
    root = tmp_path_factory.mktemp("dataset")
    shutil.copytree(clips_dir, root, dirs_exist_ok=True)
    (root / "broken.mp4").write_bytes(b"this is not a video" * 4)
    (root / "readme.txt.md").write_text("not media")
    return root


@pytest.fixture(scope="module")
def single_run(dataset, tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "annotations.json"
    proc = run_osp("caption", str(dataset), "-o", str(out), "-m", str(tiny_vlm), *COMMON, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_annotations_follow_the_open_sora_plan_format(single_run, dataset, tiny_vlm):
    out, summary = single_run
    entries = json.loads(out.read_text())
    expected = {
        (name, f"{s}:{e}")
        for name, frames in (("long.mp4", 40), ("moving.mp4", 24), ("sub/pan.mp4", 24))
        for s, e in split(frames, 8)
    }
    assert {(e["path"], e["frame_idx"]) for e in entries} == expected  # every moving clip kept, in place
    assert [(e["path"], int(e["frame_idx"].split(":")[0])) for e in entries] == sorted((e["path"], int(e["frame_idx"].split(":")[0])) for e in entries)
    for entry in entries:
        assert set(entry) == VIDEO_KEYS
        assert isinstance(entry["cap"], str) and entry["cap"].strip()
        assert entry["fps"] == 8.0 and entry["num_frames"] == 8
        assert entry["resolution"] == {"height": 48, "width": 64}
        assert entry["motion_score"] > 1.0
        assert entry["caption_model"] == str(tiny_vlm)
        assert isinstance(entry["is_english"], bool)
        assert (dataset / entry["path"]).is_file()  # relative to the dataset root

    assert summary["output"] == str(out) and summary["root"] == str(dataset.resolve())
    assert summary["captioned"] == len(expected) == 11
    assert summary["dropped"] == {"static": 3}  # the three clips of static.mp4
    assert summary["failed_total"] == 1 and summary["failed"][0]["path"] == "broken.mp4"
    assert "cannot read" in summary["failed"][0]["reason"]
    assert summary["not_english"] == sum(not e["is_english"] for e in entries)
    assert summary["processed"] == summary["clips"] == 11 + 3 + 1
    assert (dataset / "broken.mp4").read_bytes() == b"this is not a video" * 4  # reported, never deleted
    assert (journal_dir(out) / "rank0.jsonl").is_file()


def test_the_training_reader_loads_the_annotations(single_run, tmp_path):
    from osp_core.data import annotations
    out, summary = single_run
    data_list = tmp_path / "data.txt"
    data_list.write_text(f"{summary['root']},{out}\n")  # the line the command tells users to write
    entries = annotations.read_data_list(data_list)
    written = json.loads(out.read_text())
    assert len(entries) == len(written) == 11
    for entry, record in zip(entries, written, strict=True):
        assert entry.path.is_file() and entry.captions == (record["cap"],)
        assert f"{entry.start}:{entry.end}" == record["frame_idx"]


def test_existing_output_needs_resume_or_overwrite(single_run, dataset, tiny_vlm):
    out, _ = single_run
    proc = run_osp("caption", str(dataset), "-o", str(out), "-m", str(tiny_vlm), *COMMON)
    assert_one_line_error(proc, "already exists", "--resume")
    proc = run_osp("caption", str(dataset), "-o", str(out), "-m", str(tiny_vlm), *COMMON, "--resume", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["resumed"] == 14 and summary["processed"] == 1  # only the unreadable file is tried again
    assert summary["captioned"] == 11


@pytest.mark.distributed
def test_two_ranks_write_the_same_annotations_as_one(single_run, dataset, tiny_vlm, tmp_path):
    out = tmp_path / "annotations.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("OSP_DEBUG", None)
    cmd = [*torchrun(2), "-m", "osp_cli", "caption", str(dataset), "-o", str(out), "-m", str(tiny_vlm), *COMMON, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in journal_dir(out).iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    assert json.loads(out.read_text()) == json.loads(single_run[0].read_text())
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])  # only rank 0 prints
    assert summary["world_size"] == 2
    for key in ("captioned", "dropped", "failed_total", "clips", "processed"):
        assert summary[key] == single_run[1][key]


def _captioned_lines(path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # the line being written when the process was killed
    return [r for r in records if r.get("status") == "captioned"]


def test_a_killed_run_resumes_without_repeating_or_losing_clips(clips_dir, tiny_vlm, tmp_path):
    out = tmp_path / "annotations.json"
    clips = split(40, 2)  # 20 one-clip batches: the kill lands mid-run however busy the machine
    args = [str(clips_dir / "long.mp4"), "-o", str(out), "-m", str(tiny_vlm), "--clip-frames", "2", "--num-frames", "2", "--batch-size", "1", "--max-new-tokens", "4", "--min-motion", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "osp_cli", "caption", *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = journal_dir(out) / "rank0.jsonl"
    deadline = time.monotonic() + 120
    while len(_captioned_lines(journal)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)  # frozen where it is: the kill point is the one seen here
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    before = {r["key"]: r["annotation"] for r in _captioned_lines(journal)}
    assert 2 <= len(before) < len(clips)  # killed mid-run
    assert not out.exists()

    done = run_osp("caption", *args, "--resume", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed"] == len(before) and summary["processed"] == len(clips) - len(before)
    keys = [r["key"] for r in _captioned_lines(journal)]
    assert len(keys) == len(set(keys)) == len(clips)  # nothing captioned twice
    entries = json.loads(out.read_text())
    assert [e["frame_idx"] for e in entries] == [f"{s}:{e}" for s, e in clips]  # nothing lost
    for entry in entries:  # clips done before the kill keep their captions
        key = f"{entry['path']}#{entry['frame_idx']}"
        if key in before:
            assert entry == before[key]


def test_bad_inputs_are_one_line_errors(clips_dir, tiny_vlm, text_only_model, tmp_path):
    video = str(clips_dir / "moving.mp4")
    out = tmp_path / "a.json"
    assert_one_line_error(run_osp("caption", video, "-o", str(out), "-m", str(text_only_model)), "not a vision-language model")
    assert not journal_dir(out).exists()  # a refused model leaves nothing behind
    assert_one_line_error(run_osp("caption", video, "-o", str(out), "-m", str(tiny_vlm), "--prompt", "nope"), "unknown prompt template 'nope'")
    assert not out.exists()


def test_unwritable_output_and_unfillable_templates_are_one_line_errors(clips_dir, tiny_vlm, tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    proc = run_osp("caption", str(clips_dir / "moving.mp4"), "-o", str(a_file / "ann.json"), "-m", str(tiny_vlm))
    assert_one_line_error(proc, "cannot create output folder", "is a file")
    template = tmp_path / "needs_caption.yaml"
    template.write_text("kind: video\nprompt: 'Improve this caption: {}'\nfields: [caption]\n")
    proc = run_osp("caption", str(clips_dir), "-o", str(tmp_path / "v.json"), "-m", str(tiny_vlm), "--prompt", str(template))
    assert_one_line_error(proc, "needs 'caption' text", '"cap"')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "needs_caption.yaml"]


@pytest.mark.distributed
def test_a_killed_run_resumes_on_another_number_of_ranks(clips_dir, tiny_vlm, tmp_path):
    """docs/captioning.md (Scale-out): a resumed job may use a different number of ranks. One process is
    killed mid-run, then `--resume` under torchrun with 2 CPU ranks: the clips of rank 0's
    journal are not captioned again by either rank, and the merged file is the straight run's."""
    # four files (ranks take every 2nd file): long.mp4 (5 clips, first in order) is cut short
    args = [str(clips_dir), "-m", str(tiny_vlm), "--clip-frames", "8", "--num-frames", "2", "--batch-size", "1", "--max-new-tokens", "4", "--min-motion", "0"]
    straight = tmp_path / "straight.json"
    proc = run_osp("caption", *args, "-o", str(straight))
    assert proc.returncode == 0, proc.stderr
    total = len(json.loads(straight.read_text()))
    assert total == 14

    out = tmp_path / "annotations.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("OSP_DEBUG", None)
    killed = subprocess.Popen([sys.executable, "-m", "osp_cli", "caption", *args, "-o", str(out)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = journal_dir(out) / "rank0.jsonl"
    deadline = time.monotonic() + 120
    while len(_captioned_lines(journal)) < 2 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, killed.stderr.read().decode()[-2000:]
    before = {r["key"] for r in _captioned_lines(journal)}
    assert 2 <= len(before) < total and not out.exists()  # killed mid-run

    proc = subprocess.run([*torchrun(2), "-m", "osp_cli", "caption", *args, "-o", str(out), "--resume", "--json"], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])  # only rank 0 prints
    assert summary["world_size"] == 2 and summary["resumed"] == len(before) and summary["processed"] == total - len(before)
    assert sorted(p.name for p in journal_dir(out).iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    keys = [r["key"] for name in ("rank0.jsonl", "rank1.jsonl") for r in _captioned_lines(journal_dir(out) / name)]
    assert len(keys) == len(set(keys)) == total  # nothing captioned twice, by either rank
    assert _captioned_lines(journal_dir(out) / "rank1.jsonl")  # rank 1 did its share
    assert json.loads(out.read_text()) == json.loads(straight.read_text())  # nothing lost
