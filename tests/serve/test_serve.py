"""`osp serve` without a browser: its refusals and the pieces that keep sessions and paths apart."""

from __future__ import annotations

import sys

import pytest

from osp_core.errors import InputError
from osp_core.serve.jobs import ServeOptions, Sessions, StepReporter, check_upload, job_folder
from tests.conftest import assert_one_line_error


def test_missing_gradio_is_one_line_naming_the_extra(osp_in_process, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    assert_one_line_error(osp_in_process("serve", "--model", "builtin:shapes"), "gradio", "osp[serve]")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--port", "0"], ["--port", "7860"]),
        (["--max-queue", "0"], ["--max-queue"]),
        (["--max-upload-mb", "0"], ["--max-upload-mb"]),
        (["--device", "tpu"], ["tpu"]),
        (["--model", "no/such-folder-here"], ["no/such-folder-here"]),
    ],
)
def test_bad_options_are_refused_before_serving(osp_in_process, args, needles, tmp_path):
    pytest.importorskip("gradio")
    assert_one_line_error(osp_in_process("serve", "--model", "builtin:shapes", "-o", str(tmp_path), *args), *needles)


def test_busy_port_and_unknown_host_are_one_line_and_create_nothing(osp_in_process, tmp_path):
    pytest.importorskip("gradio")
    import socket

    out = tmp_path / "out"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_one_line_error(osp_in_process("serve", "--model", "builtin:shapes", "-o", str(out), "--port", port), f"127.0.0.1:{port} is in use", "--port")
    assert_one_line_error(osp_in_process("serve", "--model", "builtin:shapes", "-o", str(out), "--host", "999.1.1.1"), "--host '999.1.1.1'")
    assert not out.exists()


def test_session_folders_stay_inside_the_output_folder(tmp_path):
    """A session id is hashed with a server secret: `../` names cannot leave the output folder,
    and no two sessions (or two servers) share a folder."""
    sessions, other_server = Sessions(), Sessions()
    keys = {sessions.key(s) for s in ("a", "b", "../../etc", "/abs/path")}
    assert len(keys) == 4 and all(k.isalnum() for k in keys)
    assert sessions.key("a") == sessions.key("a") != other_server.key("a")
    for session in ("../../etc", "..", "/abs/path"):
        folder = job_folder(tmp_path, sessions.key(session), "t2v")
        assert folder.resolve().is_relative_to(tmp_path.resolve()) and folder.parent.parent == tmp_path
    assert job_folder(tmp_path, "k", "t2v") != job_folder(tmp_path, "k", "t2v")  # one folder per job


def test_uploads_must_be_small_videos_or_images(tmp_path):
    for name, size, needle in (("notes.txt", 10, "not a video or image"), ("big.mp4", 2048, "larger than")):
        path = tmp_path / name
        path.write_bytes(b"x" * size)
        with pytest.raises(InputError, match=needle):
            check_upload(path, 1024)
    (tmp_path / "clip.MP4").write_bytes(b"x")
    assert check_upload(tmp_path / "clip.MP4", 1024).name == "clip.MP4"
    with pytest.raises(InputError, match="no file uploaded"):
        check_upload(None, 1024)


def test_a_set_cancel_flag_stops_the_run_at_the_next_callback():
    import threading

    flag, seen = threading.Event(), []
    reporter = StepReporter(lambda fraction, text: seen.append((fraction, text)), flag)
    reporter.step(1, 4)
    flag.set()
    with pytest.raises(InputError.__mro__[1], match="cancelled"):
        reporter.step(2, 4)
    assert seen == [(0.25, "denoising step 1/4")]


def test_options_validate():
    ServeOptions(port=1).validate()
    with pytest.raises(InputError, match="--port"):
        ServeOptions(port=70000).validate()
