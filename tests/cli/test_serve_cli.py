"""`osp serve` as a user starts it: its help, and the refusals before anything is served (a
missing extra, bad options, a busy port), each one line."""

from __future__ import annotations

import sys

import pytest

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


def test_help_names_all_three_tabs_of_the_page(osp_in_process):
    for args in (["--help"], ["serve", "--help"]):
        text = " ".join(osp_in_process(*args).stdout.replace("│", " ").split()).lower()  # the help's table borders out
        assert "text to video" in text and "vae round trip" in text and "video editing" in text, args
