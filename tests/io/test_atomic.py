"""Atomic writes: fsync before the rename, and the sweep of temporaries a killed run left."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import torch

from osp_core.io import atomic, write_json, write_video
from osp_core.io.jsonfile import dumps

HOUR_AGO = time.time() - 3600


def _age(path, when=HOUR_AGO):
    os.utime(path, (when, when))
    return path


def test_next_write_removes_stale_temporaries_it_owns(tmp_path, monkeypatch):
    """A kill at the rename point left these behind; the next write into the folder removes the
    old, unlocked ones of osp's own pattern, and nothing else."""
    monkeypatch.setattr(atomic, "_swept", set())
    stale = [tmp_path / ".clip.0123456789ab.tmp.mp4", tmp_path / ".z.89abcdef0123.tmp.safetensors", tmp_path / ".osp-caption-ab12_xyz.tmp"]
    for path in stale:
        path.write_bytes(b"")
        _age(path)
    folder = tmp_path / ".model.0123456789ab.tmp"
    (folder / "inner").mkdir(parents=True)
    (folder / "inner" / "w.bin").write_bytes(b"x")
    _age(folder)
    old_copy = tmp_path / ".gone.old"  # an atomic_dir swap killed half-way: the only copy, kept
    old_copy.mkdir()
    _age(old_copy)
    fresh = tmp_path / ".other.0123456789ab.tmp.mp4"  # another run is writing it right now
    fresh.write_bytes(b"")
    locked = tmp_path / ".locked.0123456789ab.tmp.mp4"
    locked.write_bytes(b"")
    _age(locked)
    foreign = [tmp_path / ".tmpAbCdEf", tmp_path / ".hidden", tmp_path / "notes.tmp"]
    for path in foreign:
        path.write_bytes(b"user data")
        _age(path)

    import fcntl

    holder = os.open(locked, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a live writer holds its temporary locked
    try:
        write_video(tmp_path / "clip.mp4", torch.zeros(1, 8, 8, 3, dtype=torch.uint8), fps=8)
    finally:
        os.close(holder)
    for path in [*stale, folder]:
        assert not path.exists(), f"{path.name} was left"
    for path in [old_copy, fresh, locked, *foreign, tmp_path / "clip.mp4"]:
        assert path.exists(), f"{path.name} was removed"


def test_outputs_and_folders_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name file descriptors")
    monkeypatch.setattr(os, "fsync", spy)
    write_json(tmp_path / "a.json", {"x": 1})
    assert any(".a." in name and name.endswith(".tmp.json") for name in synced), synced  # the file, before the rename
    assert str(tmp_path) in synced  # its folder, after it
    synced.clear()
    with atomic.atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights.bin").write_bytes(b"w")
    assert any(name.endswith("weights.bin") for name in synced) and str(tmp_path) in synced


def test_checkpoints_are_fsynced(tmp_path, monkeypatch):
    """The checkpoint writer flushes every file of a checkpoint before renaming it into place."""
    from osp_core.train.checkpoint import CheckpointManager

    from ..train.helpers import TINY_T2V

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name file descriptors")
    from osp_core.models.latte_t2v import LatteT2V

    model = LatteT2V(**TINY_T2V)
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)  # the real one, as a one-process CPU run has it
    model = accelerator.prepare(model)
    final = CheckpointManager(accelerator, tmp_path).save(3, model, {"data": {}})
    assert (final / "trainer_state.json").is_file() and (final / "accelerate" / "random_states_0.pkl").is_file()
    for name in ("diffusion_pytorch_model.safetensors", "trainer_state.json", "random_states_0.pkl", "model.safetensors"):
        assert any(s.endswith(name) and ".step-00000003.tmp" in s for s in synced), name
    assert str(tmp_path / "checkpoints") in synced


def test_json_osp_writes_is_strict():
    text = dumps({"loss": float("nan"), "values": [1.0, float("inf"), -float("inf")], "n": 2})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}")) == {"loss": None, "values": [1.0, None, None], "n": 2}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fills glibc's heap through ctypes")
def test_mp4_bytes_do_not_depend_on_what_the_process_allocated_before(tmp_path):
    """The same frames, encoded after the heap was left holding different garbage, give the
    same mp4 (x264's mbtree read uninitialised memory on small frames)."""
    import ctypes
    import hashlib

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (9, 64, 64, 3), generator=gen, dtype=torch.uint8)
    frames[:, 20:40] //= 4  # some structure for the motion search
    digests = set()
    for fill in (0x00, 0x5A, 0xA5, 0xFF):
        blocks = [libc.malloc(n) for n in (4096, 16384, 65536) * 400]
        for block, n in zip(blocks, (4096, 16384, 65536) * 400):
            ctypes.memset(block, fill, n)
        for block in blocks:
            libc.free(ctypes.c_void_p(block))
        path = write_video(tmp_path / f"v{fill}.mp4", frames, fps=8)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_a_folder_that_cannot_take_a_file_is_refused_up_front():
    """/proc passes os.access for root; the probe file finds out before any work is done."""
    from pathlib import Path

    from osp_core.errors import InputError
    from osp_core.io.atomic import ensure_writable_dir

    with pytest.raises(InputError, match="not writable"):
        ensure_writable_dir(Path("/proc"))


def test_files_written_0600_inside_atomic_folders_get_the_mode_a_plain_write_would(tmp_path):
    """safetensors' save_file (and mkstemp) create 0600 files: an adapter or checkpoint copied
    into a folder another user serves must be readable like any other file osp writes."""
    from safetensors.torch import save_file

    from osp_core.train.checkpoint import CheckpointManager

    from ..train.helpers import TINY_T2V

    old = os.umask(0o022)
    try:
        with atomic.atomic_dir(tmp_path / "lora") as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp / "adapter_model.safetensors"))
            (tmp / "sub").mkdir(mode=0o700)
            save_file({"a": torch.zeros(2)}, str(tmp / "sub" / "w.safetensors"))
        from accelerate import Accelerator

        from osp_core.models.latte_t2v import LatteT2V

        accelerator = Accelerator(cpu=True)
        final = CheckpointManager(accelerator, tmp_path / "run").save(1, accelerator.prepare(LatteT2V(**TINY_T2V)), {"data": {}})
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "lora" / "adapter_model.safetensors").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(tmp_path / "lora" / "sub").st_mode & 0o777) == oct(0o755)
    assert oct(os.stat(tmp_path / "lora" / "sub" / "w.safetensors").st_mode & 0o777) == oct(0o644)
    written = [p for p in final.rglob("*.safetensors")]
    assert written and all(os.stat(p).st_mode & 0o777 == 0o644 for p in written), [(p.name, oct(os.stat(p).st_mode)) for p in written]
