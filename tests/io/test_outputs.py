"""A video's files appear together: never an old sidecar beside a new video, never one run's
file silently replacing a concurrent run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from osp_core.errors import InputError
from osp_core.io.outputs import FileGroup


def _write(group: FileGroup, names: list, content: str) -> None:
    for name in names:
        group.path(name).write_text(f"{content} {name.name}")


def test_commit_moves_every_file_and_leaves_no_temporaries(tmp_path):
    names = [tmp_path / "v.mp4", tmp_path / "v.latents.safetensors", tmp_path / "v.json"]
    with FileGroup(names) as group:
        _write(group, names, "new")
        group.commit()
    assert [p.read_text() for p in names] == [f"new {p.name}" for p in names]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in names)


def test_a_failed_block_leaves_nothing(tmp_path):
    names = [tmp_path / "v.mp4", tmp_path / "v.json"]
    with pytest.raises(RuntimeError), FileGroup(names) as group:
        group.path(names[0]).write_text("half")
        raise RuntimeError("killed while writing")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fail_at", [0, 1, 2])
def test_overwrite_interrupted_anywhere_never_pairs_old_and_new(tmp_path, monkeypatch, fail_at):
    """A kill between any two renames of --overwrite: the sidecar on disk (if any) belongs to
    the files beside it."""
    names = [tmp_path / "v.mp4", tmp_path / "v.latents.safetensors", tmp_path / "v.json"]
    for p in names:
        p.write_text(f"old {p.name}")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), FileGroup(names, overwrite=True) as group:
        _write(group, names, "new")
        group.commit()
    sidecar = tmp_path / "v.json"
    assert not sidecar.exists()  # the sidecar is removed first and placed last
    for p in names[:-1]:
        assert not p.exists() or p.read_text() == f"new {p.name}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temporaries removed


def test_without_overwrite_a_name_taken_meanwhile_is_refused(tmp_path):
    names = [tmp_path / "v.mp4", tmp_path / "v.json"]
    first, second = FileGroup(names), FileGroup(names)
    _write(first, names, "first")
    _write(second, names, "second")
    first.commit()
    with pytest.raises(InputError, match="was written by another run meanwhile"):
        second.commit()
    second.discard()
    assert [p.read_text() for p in names] == [f"first {p.name}" for p in names]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json", "v.mp4"]


def test_only_the_sidecar_taken_meanwhile_takes_back_our_video(tmp_path):
    video, sidecar = tmp_path / "v.mp4", tmp_path / "v.json"
    group = FileGroup([video, sidecar])
    _write(group, [video, sidecar], "ours")
    sidecar.write_text("theirs")
    with pytest.raises(InputError):
        group.commit()
    group.discard()
    assert not video.exists() and sidecar.read_text() == "theirs"


def test_two_concurrent_sampling_runs_into_one_folder(reference_dir, tmp_path):
    """Both start before either has written: exactly one writes the video, the other refuses in
    one line (the check before sampling cannot see a file that does not exist yet)."""
    tiny = reference_dir / "pipeline" / "tiny-osp-v1.1.0"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("OSP_DEBUG", None)
    args = [sys.executable, "-m", "osp_cli", "t2v", "sample", "a cat", "--model", str(tiny), "--frames", "9", "--height", "32", "--width", "32", "--steps", "4", "--seed", "9", "-o", str(tmp_path), "--json"]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes[0] == 0 and codes[1] == 2, results
    stderr = next(err for code, _, err in results if code != 0)
    assert stderr.strip().count("\n") == 0 and ("was written by another run meanwhile" in stderr or "already exist" in stderr), stderr
    winner = next(json.loads(out) for code, out, _ in results if code == 0)
    assert json.loads((tmp_path / "a-cat-9.json").read_text())["seconds"] == winner["videos"][0]["seconds"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-cat-9.json", "a-cat-9.mp4"]


def test_a_group_sweeps_temporaries_a_killed_run_left(tmp_path):
    """A kill at the rename point left `.NAME.<id>.tmp.mp4`: the next group in the folder
    removes it once it is old and nobody writes it, and leaves a fresh one alone."""
    stale, fresh = tmp_path / ".a-cat-9.0123456789ab.tmp.mp4", tmp_path / ".a-cat-9.ba9876543210.tmp.json"
    stale.write_text("left by a kill")
    fresh.write_text("being written")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    FileGroup([tmp_path / "b.mp4", tmp_path / "b.json"]).discard()
    assert not stale.exists() and fresh.exists()
