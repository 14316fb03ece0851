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
from tests.serve.browser import INSTALL_HINT, Page, ServerProcess, fetch, find_chromium, new_browser, sidecar_of

if find_chromium() is None:
    skip_or_fail(INSTALL_HINT, allow_module_level=True)  # one line for the whole module (a failure under CI)
pytest.importorskip("gradio")
STEPS = 10  # ~0.5 s a video on 2 CPU cores (150 would take ~3 s)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    process = ServerProcess(root / "out", "--max-upload-mb", "1")
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
    page.wait_for_result()
    sidecar = sidecar_of(page)
    assert (sidecar["num_frames"], sidecar["settings"]["frames"], sidecar["settings"]["temporal_attention"]) == (1, 1, False)


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


def test_two_sessions_at_once_each_get_their_own_video(server, browser):
    other = new_browser()
    try:
        pages = [Page(browser, server.url), Page(other, server.url)]
        prompts = ["a yellow circle moving down", "a purple square moving right"]
        pages[0].generate(prompts[0], steps=150, seed=4)  # ~3 s: the second job waits for it
        pages[1].generate(prompts[1], steps=STEPS, seed=4)
        assert pages[1].wait_for(lambda: "queue: 1/1" in pages[1].browser.page_source, 10)  # its position
        urls = [page.wait_for_result() for page in pages]
        assert urls[0] != urls[1]
        assert [sidecar_of(page)["prompt"] for page in pages] == prompts
        folders = {Path(p).parent.parent for prompt in prompts for p in server.output_dir.glob(f"*/t2v-*/{prompt.replace(' ', '-')}-4.mp4")}
        assert len(folders) == 2  # two session folders
    finally:
        other.quit()


def test_vae_tab_round_trips_an_upload(page, server, tmp_path):
    page.generate("a red square moving left", steps=STEPS, seed=5)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(fetch(page.wait_for_result()))
    page.tab("VAE round trip")
    page.find("#vae-upload input[type=file]").send_keys(str(clip))
    page.wait_for(lambda: "clip.mp4" in page.find("#vae-upload").text.replace("\n", ""), 30)  # uploaded
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


def test_uploads_are_limited_and_stay_inside_the_output_folder(server):
    """A 2 MB upload over --max-upload-mb 1 is refused; a `../` file name is stored inside."""
    assert server.upload("big.mp4", b"x" * 2 * 2**20)[0] == 413
    status, body = server.upload("../../escape.mp4", b"x" * 100)
    assert status == 200
    stored = Path(json.loads(body)[0]).resolve()
    assert stored.is_relative_to((server.output_dir / ".gradio").resolve()) and stored.name == "escape.mp4"
    assert [p for p in server.output_dir.parent.rglob("escape.mp4") if p.resolve() != stored] == []


def test_requests_for_paths_outside_the_output_folder_are_refused(server):
    secret = server.output_dir.parent / "secret.txt"
    secret.write_text("not for the page")
    inside = next(server.output_dir.glob("*/t2v-*/*.json"), None) or pytest.skip("needs a result of the tests above")
    assert server.get(f"/gradio_api/file={inside}")[0] == 200  # what the page may serve
    for path in (f"{server.output_dir}/../secret.txt", f"{inside.parent}/../../../secret.txt", "../secret.txt", "../../../../../../etc/passwd", str(secret)):
        status, body = server.get(f"/gradio_api/file={path}")
        assert status in (403, 404) and b"not for the page" not in body, path


def test_edit_tab_edits_an_upload_and_plays_it_beside_the_source(page, server, tmp_path):
    """Upload a clip and an edited first frame, give the box and a track: the edited video plays
    beside the source, outside the box it is the source."""
    from PIL import Image

    page.generate("a red square moving left", steps=STEPS, seed=6)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(fetch(page.wait_for_result()))
    source = read_video(clip).frames
    first = source[0].clone()
    first[20:44, 8:32] = 0
    first[24:40, 12:28, 1] = 200  # a green square drawn in the box
    Image.fromarray(first.numpy()).save(tmp_path / "first.png")
    page.tab("Edit")
    page.find("#edit-upload input[type=file]").send_keys(str(clip))
    page.wait_for(lambda: "clip.mp4" in page.find("#edit-upload").text.replace("\n", ""), 30)
    page.find("#edit-first input[type=file]").send_keys(str(tmp_path / "first.png"))
    page.wait_for(lambda: "first.png" in page.find("#edit-first").text.replace("\n", ""), 30)
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
    assert page.wait_for(lambda: page.status("edit"), 30).startswith("Error: --box 0,16,99,48 is outside the 64x64 frame")
