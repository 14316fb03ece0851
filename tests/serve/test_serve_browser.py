"""`osp serve --model builtin:shapes` driven in headless Chromium, as a user: generate and
download a video, see an error, cancel, two sessions at once, the VAE tab, and `../` requests.
Skips (one line saying how to install it) without the system Chromium."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from osp_core.io import read_video
from tests.conftest import skip_or_fail
from tests.serve.browser import INSTALL_HINT, JOB_TIMEOUT, Page, ServerProcess, fetch, find_chromium, new_browser, sidecar_of

if find_chromium() is None:
    skip_or_fail(INSTALL_HINT, allow_module_level=True)  # one line for the whole module (a failure under CI)
pytest.importorskip("gradio")
STEPS = 10  # ~0.5 s a video on 2 CPU cores (150 would take ~3 s)


def stored_files(output_dir: Path) -> list[Path]:
    """The files of the output folder but the job database's (SQLite's WAL files come and go)."""
    return sorted(p for p in output_dir.rglob("*") if p.is_file() and not p.name.startswith("queue.sqlite3"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.jobs.test_lora import peft_adapter

    root = tmp_path_factory.mktemp("serve")
    (root / "tmp").mkdir()
    offered = root / "adapters"  # two adapters made by PEFT on builtin:shapes, for the picker
    peft_adapter(offered / "motion", 1, 2, ["to_q"])
    peft_adapter(offered / "style", 2, 4, ["to_q", "to_v", "proj"])
    process = ServerProcess(root / "out", "--max-upload-mb", "1", "--lora-dir", str(offered), env={"TMPDIR": str(root / "tmp")})
    process.temp_dir, process.adapters = root / "tmp", offered
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser():
    driver = new_browser()
    yield driver
    driver.quit()


@pytest.fixture()
def page(server, browser):
    return Page(browser, server.url)


def test_generate_plays_and_downloads_a_17_frame_video(page, server, tmp_path):
    page.generate("a red circle moving right", steps=STEPS, seed=7)
    url = page.wait_for_result()
    mp4 = tmp_path / "video.mp4"
    mp4.write_bytes(fetch(url))
    video = read_video(mp4)
    assert (video.num_frames, *video.size) == (17, 64, 64)
    sidecar = sidecar_of(page)
    assert (sidecar["prompt"], sidecar["seed"], sidecar["settings"]["steps"]) == ("a red circle moving right", 7, STEPS)
    assert "17 frames 64x64, seed 7" in page.status("t2v")
    # the result is its own file in a session folder under the output folder
    written = list(server.output_dir.glob("*/t2v-*/a-red-circle-moving-right-7.mp4"))
    assert len(written) == 1 and written[0].read_bytes() == mp4.read_bytes()


def test_an_empty_prompt_shows_its_error_and_the_server_goes_on(page):
    page.generate("   ", steps=STEPS)
    assert page.wait_for(lambda: page.status("t2v")) == "Error: the prompt is empty (pass some text to generate from)"
    page.generate("a blue square moving up", steps=STEPS, seed=1)
    page.wait_for_result()
    assert sidecar_of(page)["prompt"] == "a blue square moving up"


def test_single_image_switch_samples_one_frame_without_temporal_attention(page):
    page.find("#t2v-single input").click()
    page.generate("a blue circle moving left", steps=STEPS, seed=3)
    url = page.wait_for_result()
    sidecar = sidecar_of(page)
    assert (sidecar["num_frames"], sidecar["settings"]["frames"], sidecar["settings"]["temporal_attention"]) == (1, 1, False)
    # one frame is an image: a PNG, shown in the image box in place of the video player
    player = page.find("#t2v-video")
    assert url == page.image_url() and page.video_url() is None and (player is None or not player.is_displayed())
    assert fetch(url).startswith(b"\x89PNG\r\n\x1a\n") and sidecar["video"].endswith(".png")
    page.find("#t2v-single input").click()  # back to video: the player returns
    page.generate("a blue circle moving left", steps=STEPS, seed=3)
    assert page.wait_for_result() == page.video_url() and page.image_url() is None


def test_a_running_job_can_be_cancelled(page, server):
    before = set(server.output_dir.glob("*/t2v-*/*.mp4"))
    page.generate("a green triangle moving left", steps=500, seed=2)  # ~10 s: time to cancel
    page.wait_for(lambda: "denoising step" in page.browser.page_source, 60)
    page.find("#t2v-cancel").click()
    assert page.wait_for(lambda: page.status("t2v"), 30) == "cancelled"
    time.sleep(1.5)  # the run stops at its next step; nothing of it is written
    assert set(server.output_dir.glob("*/t2v-*/*.mp4")) == before and page.video_url() is None
    page.generate("a green triangle moving left", steps=STEPS, seed=2)  # the device is free again
    page.wait_for_result()


def test_two_sessions_at_once_each_get_their_own_video_and_one_progress_indicator(server, browser):
    """The second session's job waits while the first runs (it is started only once the first
    is denoising, so the wait is certain); each page shows one progress bar or queue position,
    on its video, not one per output box."""
    other = new_browser()
    try:
        pages = [Page(browser, server.url), Page(other, server.url)]
        prompts = ["a yellow circle moving down", "a purple square moving right"]
        pages[0].generate(prompts[0], steps=300, seed=4)
        pages[0].wait_for(lambda: pages[0].visible_texts(".progress-level"), 60)  # the first is running
        pages[1].generate(prompts[1], steps=STEPS, seed=4)
        assert pages[1].wait_for(lambda: any("queue: 1/1" in t for t in pages[1].visible_texts(".progress-text")), 10)  # its position
        running, waiting = pages[0].visible_texts(".progress-level"), pages[1].visible_texts(".progress-text")
        assert len(running) == 1 and "denoising step" in running[0], running
        assert len(waiting) == 1 and "queue: 1/1" in waiting[0], waiting
        assert pages[0].find("#t2v-video .progress-level") is not None  # on the video box
        urls = [page.wait_for_result() for page in pages]
        assert urls[0] != urls[1]
        assert [sidecar_of(page)["prompt"] for page in pages] == prompts
        folders = {Path(p).parent.parent for prompt in prompts for p in server.output_dir.glob(f"*/t2v-*/{prompt.replace(' ', '-')}-4.mp4")}
        assert len(folders) == 2  # two session folders
    finally:
        other.quit()


def test_a_queued_job_can_be_cancelled_before_it_starts(server, browser):
    """Cancel on a page whose job waits behind another session's: it never runs (nothing of it
    is written), its page says so, and the running job finishes."""
    other = new_browser()
    try:
        running, queued = Page(browser, server.url), Page(other, server.url)
        running.generate("an orange circle moving up", steps=300, seed=11)
        running.wait_for(lambda: running.visible_texts(".progress-level"), 60)
        queued.generate("an orange square moving down", steps=STEPS, seed=11)
        queued.wait_for(lambda: any("queue: 1/1" in t for t in queued.visible_texts(".progress-text")), 10)
        queued.find("#t2v-cancel").click()
        assert queued.wait_for(lambda: queued.status("t2v"), JOB_TIMEOUT) == "cancelled"
        running.wait_for_result()
        assert sidecar_of(running)["prompt"] == "an orange circle moving up"
        assert list(server.output_dir.glob("*/t2v-*/an-orange-square-moving-down-*")) == []
        assert queued.video_url() is None
    finally:
        other.quit()


def test_vae_tab_round_trips_an_upload(page, server, tmp_path):
    clip = page.sample_clip(tmp_path / "clip.mp4", "a red square moving left", STEPS, seed=5)
    page.tab("VAE round trip")
    page.upload("vae-upload", clip)
    page.click("#vae-run", "vae")
    (tmp_path / "recon.mp4").write_bytes(fetch(page.wait_for_result("vae")))
    video = read_video(tmp_path / "recon.mp4")
    assert (video.num_frames, *video.size) == (17, 64, 64)
    status = page.status("vae")
    assert status.startswith("17 frames 64x64  PSNR") and "SSIM" in status
    sidecar = sidecar_of(page, "vae")
    assert sidecar["input"] == "clip.mp4" and sidecar["psnr"] > 15


def test_vae_tab_refuses_a_file_that_is_not_a_video(page, tmp_path):
    """The page refuses it (the server's handler refuses it too: test_serve.py)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    page.tab("VAE round trip")
    page.find("#vae-upload input[type=file]").send_keys(str(notes))  # past the file picker's filter
    assert page.wait_for(lambda: "Invalid file type: notes.txt" in page.browser.page_source, 10)
    assert "notes.txt" not in page.find("#vae-upload").text.replace("\n", "")  # not taken


MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"  # what every mp4 starts with


def test_uploads_are_limited_and_stay_inside_the_output_folder(server):
    """A 2 MB upload over --max-upload-mb 1 is refused; a `../` file name is stored inside."""
    assert server.upload("big.mp4", MP4_HEAD + b"x" * 2 * 2**20)[0] == 413
    status, body = server.upload("../../escape.mp4", MP4_HEAD + b"x" * 100)
    assert status == 200
    stored = Path(json.loads(body)[0]).resolve()
    assert stored.is_relative_to((server.output_dir / ".gradio").resolve()) and stored.name == "escape.mp4"
    assert [p for p in server.output_dir.parent.rglob("escape.mp4") if p.resolve() != stored] == []


def test_requests_for_paths_outside_the_output_folder_are_refused(page, server):
    secret = server.output_dir.parent / "secret.txt"
    secret.write_text("not for the page")
    page.generate("a white circle moving up", steps=STEPS, seed=8)  # a result of its own to serve
    page.wait_for_result()
    inside = next(server.output_dir.glob("*/t2v-*/a-white-circle-moving-up-8.json"))
    assert server.get(f"/gradio_api/file={inside}")[0] == 200  # what the page may serve
    for path in (f"{server.output_dir}/../secret.txt", f"{inside.parent}/../../../secret.txt", "../secret.txt", "../../../../../../etc/passwd", str(secret)):
        status, body = server.get(f"/gradio_api/file={path}")
        assert status in (403, 404) and b"not for the page" not in body, path


def test_edit_tab_edits_an_upload_and_plays_it_beside_the_source(page, server, tmp_path):
    """Upload a clip and an edited first frame, give the box and a track: the edited video plays
    beside the source, outside the box it is the source."""
    from PIL import Image

    clip = page.sample_clip(tmp_path / "clip.mp4", "a red square moving left", STEPS, seed=6)
    source = read_video(clip).frames
    first = source[0].clone()
    first[20:44, 8:32] = 0
    first[24:40, 12:28, 1] = 200  # a green square drawn in the box
    Image.fromarray(first.numpy()).save(tmp_path / "first.png")
    page.tab("Edit")
    page.upload("edit-upload", clip)
    page.upload("edit-first", tmp_path / "first.png")
    page.type_into("#edit-box textarea", "0,16,64,48")
    page.type_into("#edit-tracks textarea", "20,32:40,32")
    page.type_into("#edit-prompt textarea", "a green square moving right")
    page.type_into("#edit-steps input[type=number]", str(STEPS))
    page.find("#edit-engine input[value=blend]").click()
    page.click("#edit-run", "edit")
    edited = tmp_path / "edited.mp4"
    edited.write_bytes(fetch(page.wait_for_result("edit")))
    assert page.find("#edit-source video").get_attribute("src")  # the source plays beside it
    frames = read_video(edited).frames
    assert frames.shape == source.shape
    outside = (frames[:, :16].float() - source[:, :16].float()).abs().mean()
    assert outside < 3  # the source's pixels (through one more H.264 pass)
    sidecar = sidecar_of(page, "edit")
    assert sidecar["engine"] == "blend" and sidecar["region"]["box"] == [0, 16, 64, 48] and sidecar["track_source"] == "track"
    assert "blend engine, 1 track(s) (track)" in page.status("edit")
    page.type_into("#edit-box textarea", "0,16,99,48")
    page.click("#edit-run", "edit")
    assert page.wait_for(lambda: page.status("edit"), 30).startswith("Error: --box 0,16,99,48 is outside the 64x64 (HxW) frame")


SCRIPT_MARK = "window.name='script ran'"  # window.name outlives a navigation: a script that ran leaves it


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("evil.html", f"<html><body><script>{SCRIPT_MARK}</script></body></html>".encode()),
        ("evil.svg", f'<svg xmlns="http://www.w3.org/2000/svg"><script>{SCRIPT_MARK}</script></svg>'.encode()),
        ("notes.txt", b"hello"),
        ("page.mp4", b"<html><script>alert(1)</script></html>"),  # a page named like a video
        ("clip.png", MP4_HEAD + b"x" * 100),  # a video named like an image
    ],
)
def test_uploads_that_are_not_videos_or_images_are_refused_by_the_server(server, name, data):
    """Gradio's upload route takes any file; the server checks the content, answers 415 with
    one line naming the file, and keeps nothing of it (nor an empty temp file)."""
    before = stored_files(server.output_dir)
    status, body = server.upload(name, data)
    assert status == 415, (status, body)
    assert name in body.decode() and len(body.decode().splitlines()) == 1
    assert stored_files(server.output_dir) == before


def test_a_refused_request_removes_only_its_refused_files(server):
    """Uploads are stored by content: a request that also carries a page must not delete an
    earlier upload of the same (accepted) content, which may be another session's."""
    clip = MP4_HEAD + b"shared content" * 10
    status, body = server.upload("mine.mp4", clip)
    assert status == 200
    stored = Path(json.loads(body)[0])
    status, body = server.upload("mine.mp4", clip, ("evil.html", b"<html></html>"))
    assert status == 415 and b"evil.html" in body
    assert stored.read_bytes() == clip and server.get(f"/gradio_api/file={stored}")[0] == 200
    assert not list(server.output_dir.rglob("evil.html"))


def test_nothing_served_from_the_output_folder_renders_as_a_page(server, browser, tmp_path):
    """Files that reach the output folder by any way (an upload an older server took, a file
    put there by hand) are sent as downloads with no script allowed: opened in Chromium, their
    scripts do not run in the page's origin. Videos and raster images still play inline."""
    planted = server.output_dir / ".gradio" / "planted"
    planted.mkdir(parents=True, exist_ok=True)
    files = {
        "evil.html": f"<html><body><script>{SCRIPT_MARK}</script></body></html>",
        "evil.svg": f'<svg xmlns="http://www.w3.org/2000/svg" onload="{SCRIPT_MARK}"><script>{SCRIPT_MARK}</script></svg>',
        "evil.js": SCRIPT_MARK,
        "evil.json": '{"a": 1}',
    }
    for name, text in files.items():
        (planted / name).write_text(text)
    (planted / "still.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    for name in files:
        status, headers, _ = server.get_with_headers(f"/gradio_api/file={planted / name}")
        assert status == 200, name
        assert headers["content-type"] == "application/octet-stream" and headers["content-disposition"].startswith("attachment"), (name, headers)
        assert headers["x-content-type-options"] == "nosniff" and "sandbox" in headers["content-security-policy"], (name, headers)
    status, headers, _ = server.get_with_headers(f"/gradio_api/file={planted / 'still.png'}")
    assert headers["content-type"] == "image/png" and headers["content-disposition"].startswith("inline")
    Page(browser, server.url)  # the page's origin
    browser.execute_script("window.name = 'clean'")
    for name in ("evil.html", "evil.svg"):
        browser.get(f"{server.url.rstrip('/')}/gradio_api/file={planted / name}")
        time.sleep(1)
        assert browser.execute_script("return window.name") == "clean", f"{name} ran a script"
        assert "script ran" not in browser.page_source


def test_the_page_writes_nothing_outside_its_output_folder(server):
    """Gradio's temp and history folders (it reads GRADIO_TEMP_DIR when imported) live in
    OUTPUT_DIR/.gradio, not in the system temp folder."""
    assert (server.output_dir / ".gradio" / "vibe_edit_history").is_dir()
    assert not (server.temp_dir / "gradio").exists()


def test_a_failed_job_names_the_users_file_not_a_server_path(page, server, tmp_path):
    page.generate("a red square moving right", steps=STEPS, seed=9)
    clip = fetch(page.wait_for_result())
    broken = tmp_path / "trunc.mp4"
    broken.write_bytes(clip[:3000])  # an mp4 cut short: its header is right, its frames are gone
    page.tab("VAE round trip")
    page.upload("vae-upload", broken)
    page.click("#vae-run", "vae")
    status = page.wait_for(lambda: page.status("vae"), 60)
    assert status.startswith("Error: cannot read 'trunc.mp4'"), status
    assert str(server.output_dir) not in status and ".gradio" not in status


def test_jobs_and_refused_uploads_leave_no_empty_files(page, server, tmp_path):
    """Every finished VAE job and every refused upload leaves no zero-byte file behind."""
    clip = page.sample_clip(tmp_path / "clip.mp4", "a green circle moving down", STEPS, seed=10)
    page.tab("VAE round trip")
    page.upload("vae-upload", clip)
    page.click("#vae-run", "vae")
    page.wait_for_result("vae")
    server.upload("big.mp4", MP4_HEAD + b"x" * 2 * 2**20)  # over --max-upload-mb
    server.upload("evil.html", b"<html></html>")
    empty = [p for p in (server.output_dir / ".gradio").rglob("*") if p.is_file() and p.stat().st_size == 0]
    assert empty == []


def test_the_page_picks_adapters_and_the_sidecar_names_them(page, server):
    """With --lora-dir the text-to-video tab lists the adapters the API offers, each with a
    scale; a chosen one reaches the worker: its hash and scale are in the sidecar, and the
    video differs from the one without it at the same seed."""
    import hashlib

    names = [page.find(f"#t2v-lora-{i}").text.split("\n")[0].strip() for i in range(2)]
    assert names == ["motion", "style"] and page.find("#t2v-lora-2") is None
    page.tab("Edit")  # the edit tab has its own picker
    assert page.wait_for(lambda: page.find("#edit-lora-1"), 10).text.split("\n")[0].strip() == "style"
    page.tab("Text to video")
    page.generate("a red circle moving right", steps=STEPS, seed=7)
    plain = fetch(page.wait_for_result())
    assert "lora" not in sidecar_of(page)["models"]
    page.find("#t2v-lora-1 input").click()
    page.type_into("#t2v-lora-1-scale input[type=number]", "0.5")
    page.generate("a red circle moving right", steps=STEPS, seed=7)
    adapted = fetch(page.wait_for_result())
    weights = (server.adapters / "style" / "adapter_model.safetensors").read_bytes()
    chosen = sidecar_of(page)["models"]["lora"]
    assert [(Path(a["path"]).name, a["scale"], a["sha256"]) for a in chosen] == [("style", 0.5, hashlib.sha256(weights).hexdigest())]
    assert adapted != plain
