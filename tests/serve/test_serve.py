"""The web page without a browser: the pieces that keep sessions and paths apart, uploads,
Cancel, its options, no share link, and the VAE tab."""

from __future__ import annotations

import pytest

from osp_core.errors import InputError
from osp_core.serve.session import ServeOptions, Sessions, check_upload, job_folder


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


MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
PNG_HEAD = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8


def test_uploads_must_be_small_videos_or_images_by_their_content(tmp_path):
    for name, data, needle in (
        ("notes.txt", b"x" * 10, "'notes.txt' is not a video or image"),
        ("big.mp4", MP4_HEAD + b"x" * 2048, "larger than"),
        ("page.mp4", b"<html><script>alert(1)</script></html>", "'page.mp4' is named .mp4 but its content is not a video or image"),
        ("still.mp4", PNG_HEAD, "'still.mp4' is named .mp4 but its content is a PNG image"),
        ("clip.png", MP4_HEAD, "'clip.png' is named .png but its content is an MP4/QuickTime video"),
        ("empty.webm", b"", "'empty.webm' is named .webm but its content is not a video or image"),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError, match=needle):
            check_upload(path, 1024)
    (tmp_path / "clip.MP4").write_bytes(MP4_HEAD)
    assert check_upload(tmp_path / "clip.MP4", 1024).name == "clip.MP4"
    (tmp_path / "frame.JPG").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 12)
    assert check_upload(tmp_path / "frame.JPG", 1024).name == "frame.JPG"
    with pytest.raises(InputError, match="no file uploaded"):
        check_upload(None, 1024)


def test_a_cancel_reaches_the_running_job_at_its_next_report(tmp_path):
    """The worker's reporter carries progress to the queue and raises `Cancelled` at the first
    report after a cancel (the page's Cancel and the API's DELETE go through the queue)."""
    import threading

    from osp_core.serve.queue import SqliteJobQueue
    from osp_core.serve.worker import Cancelled, JobReporter

    queue = SqliteJobQueue(tmp_path / "q.sqlite3")
    row = queue.submit("t2v", {"job": {}, "folder": str(tmp_path / "job")}, owner="page", model="m", prompt="p")
    claim = queue.claim("w", 30)
    reporter = JobReporter(queue, claim, 30, threading.Event())
    reporter.step(1, 4)
    assert (queue.get(row.id).progress, queue.get(row.id).message) == (0.25, "denoising step 1/4")
    queue.cancel(row.id)
    reporter.last = 0  # past the report interval
    with pytest.raises(Cancelled, match="cancelled"):
        reporter.step(2, 4)


def test_options_validate():
    ServeOptions(port=1).validate()
    with pytest.raises(InputError, match="--port"):
        ServeOptions(port=70000).validate()
    for options, needle in (
        (ServeOptions(page=False, api=False), "leave nothing to serve"),
        (ServeOptions(workers=0), "--workers must be in 1..64"),
        (ServeOptions(host="0.0.0.0"), "opens the server to the network without a key"),
        (ServeOptions(host="0.0.0.0", api_key="short"), "shorter than 8"),
        (ServeOptions(api_key="  a-long-key-with-spaces  "), "white space"),
    ):
        with pytest.raises(InputError, match=needle):
            options.validate()
    ServeOptions(host="0.0.0.0", api_key="a-long-enough-key").validate()
    ServeOptions(host="localhost").validate()


def test_upload_temps_left_by_a_killed_server_are_swept_at_start(tmp_path):
    from osp_core.serve.session import sweep_upload_temps

    gradio = tmp_path / ".gradio"
    (gradio / "0a1b").mkdir(parents=True)
    for name in ("tmpab12cd", "tmp0"):
        (gradio / name).write_bytes(b"")
    (gradio / "0a1b" / "tmp-named-upload.mp4").write_bytes(b"kept: a stored upload")
    (gradio / "kept.txt").write_text("not Gradio's temp")
    assert sweep_upload_temps(gradio) == 2
    assert sorted(p.relative_to(gradio).as_posix() for p in gradio.rglob("*") if p.is_file()) == ["0a1b/tmp-named-upload.mp4", "kept.txt"]
    assert sweep_upload_temps(tmp_path / "missing") == 0


def test_the_page_never_opens_a_public_share_link(tmp_path, monkeypatch):
    """Even where Gradio is told to share by its environment (GRADIO_SHARE), `osp serve` serves
    on this machine only: no share link is asked for."""
    pytest.importorskip("gradio")
    from osp_core.serve.app import Server
    from osp_core.serve.server import Service
    from tests.serve.browser import free_port

    monkeypatch.setenv("GRADIO_SHARE", "True")
    options = ServeOptions(model="builtin:shapes", port=free_port(), output_dir=tmp_path / "out")
    demo, url = Server(Service(options)).launch()
    try:
        assert url.startswith("http://127.0.0.1:")
        assert demo.share is False and demo.share_url is None
    finally:
        demo.close()


def test_the_adapter_picker_lists_the_lora_dir_and_checks_what_the_page_sends(tmp_path):
    """The page lists --lora-dir's adapters (subfolders with adapter_config.json, by name) and
    nothing without it; what a picker sends comes over HTTP and is checked (`chosen_adapters`)."""
    pytest.importorskip("gradio")
    from osp_core.serve.app import Server
    from osp_core.serve.server import Service

    def picker_ids(server: Server) -> list[str]:
        return sorted(b.elem_id for b in server.build().blocks.values() if "lora" in (getattr(b, "elem_id", None) or ""))

    offered = tmp_path / "adapters"
    for name in ("style", "motion"):
        (offered / name).mkdir(parents=True)
        (offered / name / "adapter_config.json").write_text("{}")
    (offered / "notes").mkdir()  # no adapter_config.json: not an adapter
    assert picker_ids(Server(Service(ServeOptions(model="builtin:shapes", output_dir=tmp_path / "plain")))) == []
    server = Server(Service(ServeOptions(model="builtin:shapes", output_dir=tmp_path / "out", lora_dir=offered)))
    assert server.adapters == ["motion", "style"]
    tabs = [f"{tab}-lora{suffix}" for tab in ("edit", "t2v") for suffix in ("", "-0", "-0-scale", "-1", "-1-scale")]
    assert picker_ids(server) == sorted(tabs)
    assert server.chosen_adapters((False, 1.0, False, 0.5)) == []
    for picks, needle in (
        ((True, 1.0), "sent 2 values for 2 adapters"),
        ((True, "abc", False, 1.0), "the scale of LoRA adapter 'motion' is not a finite number"),
        ((False, 1.0, True, None), "the scale of LoRA adapter 'style' is not a finite number"),
        ((True, 1.0, False, 1.0), "has no adapter_model.safetensors"),  # offered, but its files are not an adapter
    ):
        with pytest.raises(InputError, match=needle) as refused:
            server.chosen_adapters(picks)
        assert str(offered) not in str(refused.value)


def test_a_worker_runs_the_vae_round_trip_into_its_folder_and_keeps_the_vae(tmp_path):
    """The page's VAE tab as a queued job, run by a worker in this process: `<upload>-recon.mp4`
    and a PSNR/SSIM sidecar in the job's folder (written beside it, then moved in), tile
    progress reported, the VAE loaded once for two jobs; a cancelled job writes nothing."""
    import json

    import torch

    from osp_core.io import write_video
    from osp_core.jobs.vae import VaeJob
    from osp_core.serve.queue import SqliteJobQueue
    from osp_core.serve.worker import Worker, WorkerConfig, job_settings

    upload = tmp_path / "My Clip.mp4"
    write_video(upload, torch.randint(0, 256, (9, 64, 64, 3), dtype=torch.uint8), fps=8)
    queue = SqliteJobQueue(tmp_path / "q.sqlite3")
    worker = Worker(WorkerConfig(str(queue.path), device="cpu", dtype="fp32"))

    def run(folder, cancel=False):
        row = queue.submit("vae", job_settings(VaeJob("recon", upload, model="builtin:shapes", frames="auto"), folder), owner="page", model="builtin:shapes", prompt="")
        claim = queue.claim(worker.name, 30)
        if cancel:
            queue.cancel(row.id)
        worker.run(claim)
        return queue.get(row.id)

    done = run(tmp_path / "job")
    assert done.status == "completed" and done.result["files"] == {"video": "my-clip-recon.mp4", "sidecar": "my-clip-recon.json"}
    sidecar = json.loads((tmp_path / "job" / "my-clip-recon.json").read_text())
    assert sidecar["input"] == "My Clip.mp4" and sidecar["frames"] == 9 and sidecar["size"] == [64, 64] and sidecar["psnr"] == round(done.result["record"]["psnr"], 3)
    assert (tmp_path / "job" / "my-clip-recon.mp4").is_file() and sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("q.sqlite3")) == ["My Clip.mp4", "job"]
    held = worker.models.vaes.held
    assert run(tmp_path / "job2").status == "completed"
    assert worker.models.vaes.held[1] is held[1]  # kept, not loaded again
    cancelled = run(tmp_path / "job3", cancel=True)
    assert (cancelled.status, cancelled.error_code) == ("failed", "cancelled")
    assert not (tmp_path / "job3").exists() and not list(tmp_path.glob(".job3*"))


def test_several_workers_each_see_one_device_and_share_the_cores(monkeypatch):
    from osp_core.serve.worker import device_env

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    envs = [device_env({"CUDA_VISIBLE_DEVICES": "2,3"}, i, 2, "cuda") for i in range(2)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "3"] and [e["ASCEND_RT_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"8"}
    cpu = device_env({}, 1, 4, "cpu")
    assert cpu == {"OMP_NUM_THREADS": "4"}  # nothing to hide on a CPU
    assert device_env({"OMP_NUM_THREADS": "3"}, 0, 1, None) == {"OMP_NUM_THREADS": "3"}  # one worker: the server's own


def test_the_speed_dropdown_sets_the_controls_and_its_profile_reaches_the_job(reference_dir, tmp_path):
    """Picking a profile sets the steps, scheduler and cache controls to its values (the user may
    change them after: the controls are what the job gets); the job carries the profile's name
    through the queue, and the profile fills what the page has no control for."""
    import json
    import shutil

    gr = pytest.importorskip("gradio")
    from osp_core.serve.app import Server
    from osp_core.serve.queue import SqliteJobQueue
    from osp_core.serve.server import Service
    from osp_core.serve.worker import Worker, WorkerConfig, job_settings

    repo = tmp_path / "repo"
    shutil.copytree(reference_dir / "pipeline" / "tiny-osp-v1.1.0", repo)
    fast = {"scheduler": "EulerDiscrete", "steps": 3, "cache": "teacache", "cache_threshold": 0.3, "guidance_interval": [0.2, 0.9]}
    (repo / "sampling.json").write_text(json.dumps({"steps": 4, "scheduler": "DDIM", "teacache_coefficients": [1.0, 0.0], "speed_profiles": {"fast": fast}}))
    server = Server(Service(ServeOptions(model=str(repo), output_dir=tmp_path / "out")))
    assert server.defaults.speeds == ["default", "fast"]
    assert [update["value"] for update in server.speed_controls("fast")] == [3, "EulerDiscrete", "teacache"]
    assert [update["value"] for update in server.speed_controls("default")] == [4, "DDIM", "none"]
    assert server.speed_controls("fastest") == (gr.update(), gr.update(), gr.update())  # not this model's: nothing moves
    with pytest.raises(InputError, match="unknown speed profile"):
        server.t2v_job("a cat", "", 9, "32x32", 3, 7.5, "EulerDiscrete", 1, "teacache", "x" * 10_000, False)

    # the controls as the dropdown left them, but one step more: the control wins
    job = server.t2v_job("a cat", "", 9, "32x32", 4, 7.5, "EulerDiscrete", 1, "teacache", "fast", False)
    queue = SqliteJobQueue(tmp_path / "q.sqlite3")
    worker = Worker(WorkerConfig(str(queue.path), device="cpu", dtype="fp32"))
    row = queue.submit("t2v", job_settings(job, tmp_path / "job"), owner="page", model=str(repo), prompt="a cat")
    worker.run(queue.claim(worker.name, 30))
    done = queue.get(row.id)
    assert done.status == "completed", done.error_message
    settings = json.loads((tmp_path / "job" / done.result["files"]["sidecar"]).read_text())["settings"]
    assert (settings["speed"], settings["steps"], settings["scheduler"]) == ("fast", 4, "EulerDiscreteScheduler")
    assert (settings["cache"]["method"], settings["cache"]["threshold"], settings["guidance_interval"]["interval"]) == ("teacache", 0.3, [0.2, 0.9])
