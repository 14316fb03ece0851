"""The video API driven by the official `openai` client against a real uvicorn server, a real
SQLite queue and a real worker process running builtin:shapes on the CPU."""

from __future__ import annotations

import json
import re
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from fastapi import FastAPI

from osp_core.hub import BUILTIN_ROOT
from osp_core.io.video import read_video
from osp_core.serve.api import ApiContext, create_api
from osp_core.serve.queue import SqliteJobQueue
from osp_core.serve.worker import WorkerConfig, WorkerPool
from tests.serve.browser import free_port

MODEL = "builtin:shapes"
KEY = "test-key-0123456789"
FAST = {"steps": 4, "seed": 1}  # a video in about a second on the CPU
PNG = b"\x89PNG\r\n\x1a\n"

# the client marks the Videos resource deprecated (OpenAI's own service shuts down); osp keeps the shape
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="openai")


class ThreadServer:
    """uvicorn serving `app` on a free port in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def serve(output_dir: Path, **options: object) -> tuple[ThreadServer, SqliteJobQueue]:
    """The API mounted at /v1 of an app, as `osp serve` mounts it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    queue = SqliteJobQueue(output_dir / "queue.sqlite3")
    root = FastAPI()
    root.mount("/v1", create_api(ApiContext(queue=queue, output_dir=output_dir, model=MODEL, **options)))
    return ThreadServer(root), queue


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """One server with one CPU worker for the module (a worker takes seconds to start)."""
    output_dir = tmp_path_factory.mktemp("api")
    server, queue = serve(output_dir, api_key=KEY)
    pool = WorkerPool(WorkerConfig(str(queue.path), device="cpu", dtype="fp32"), 1)
    pool.start()
    try:
        with server:
            yield server, queue, output_dir
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def client(api):
    return openai.OpenAI(base_url=api[0].base_url, api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def video(client):
    """A completed video, shared by the tests that only read it."""
    done = client.videos.create_and_poll(prompt="a red circle moving right", extra_body=FAST, poll_interval_ms=200)
    assert done.status == "completed", done.error
    return done


def decode(data: bytes, tmp_path: Path, name: str = "video.mp4") -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(data)
    return np.asarray(read_video(path).frames)


def test_create_and_poll_then_download_the_mp4(client, video, tmp_path):
    assert (video.object, video.model, video.seconds, video.size, video.progress) == ("video", MODEL, "2", "64x64", 100)
    assert video.prompt == "a red circle moving right" and video.error is None and video.expires_at is None
    assert video.completed_at >= video.created_at > time.time() - 600
    frames = decode(client.videos.download_content(video.id).content, tmp_path)
    assert frames.shape[:3] == (17, 64, 64)
    assert frames.std() > 1  # a picture, not a flat frame


def test_thumbnail_and_spritesheet_are_pngs(client, video, tmp_path):
    thumbnail = client.videos.download_content(video.id, variant="thumbnail").content
    spritesheet = client.videos.download_content(video.id, variant="spritesheet").content
    assert thumbnail.startswith(PNG) and spritesheet.startswith(PNG)
    assert decode(thumbnail, tmp_path, "t.png").shape[1:3] == (64, 64)
    assert decode(spritesheet, tmp_path, "s.png").shape[1] > 64  # a grid of several frames


def test_json_bodies_work_as_curl_sends_them(api, video):
    """curl users send JSON (numbers as numbers); the openai client sends a form."""
    server = api[0]
    answer = httpx.post(f"{server.base_url}/videos", json={"prompt": "a blue square", "seconds": 2, "size": "64x64", **FAST}, headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["object"], body["status"], body["seconds"], body["size"]) == ("video", "queued", "2", "64x64")
    # curl -d without -H "Content-Type: application/json" labels JSON as a form
    bare = httpx.post(f"{server.base_url}/videos", content=b'{"prompt": "a blue square", "seconds": "1.5", "steps": 4}', headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-www-form-urlencoded"})
    assert bare.status_code == 200 and bare.json()["seconds"] == "1.5", bare.text
    for content, needle in ((b"[1, 2]", "must be a JSON object"), (b'{"prompt": ', "not valid JSON")):
        refused = httpx.post(f"{server.base_url}/videos", content=content, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        assert refused.status_code == 400 and needle in refused.json()["error"]["message"]


def test_list_is_newest_first_and_pages_with_limit_and_after(client, video):
    made = [client.videos.create(prompt=f"a green triangle {i}", extra_body=FAST).id for i in range(2)]
    every = [v.id for v in client.videos.list(limit=1)]  # the client follows last_id page by page
    assert every[:2] == made[::-1] and video.id in every and len(every) == len(set(every)) >= 3
    first = client.videos.list(limit=2)
    assert [v.id for v in first.data] == made[::-1] and first.has_more and first.last_id == made[0]
    second = client.videos.list(limit=2, after=made[0])
    assert [v.id for v in second.data] == every[2:4]
    assert [v.id for v in client.videos.list(order="asc", limit=100)] == every[::-1]
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.videos.list(limit=1000)
    assert client.videos.retrieve(made[0]).prompt == "a green triangle 0"


def test_delete_removes_the_job_and_its_files(client, api):
    output_dir = api[2]
    done = client.videos.create_and_poll(prompt="a yellow circle", extra_body=FAST, poll_interval_ms=200)
    folder = output_dir / "videos" / done.id
    assert done.status == "completed" and (folder / "thumbnail.png").is_file()
    deleted = client.videos.delete(done.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (done.id, "video.deleted", True)
    assert not folder.exists()
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(done.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(done.id)


def test_deleting_a_running_video_cancels_it(client, api):
    output_dir = api[2]
    running = client.videos.create(prompt="a slow red square", extra_body={"steps": 400, "seed": 2})
    deadline = time.monotonic() + 30
    while client.videos.retrieve(running.id).status != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.videos.delete(running.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(running.id)
    # the worker stops at its next report and leaves nothing behind
    after = client.videos.create_and_poll(prompt="a small blue circle", extra_body=FAST, poll_interval_ms=200)
    assert after.status == "completed"
    assert not list((output_dir / "videos").glob(f"*{running.id}*"))  # nor its attempt's .folder
    assert [run["outcome"] for run in api[1].runs(running.id)] == ["deleted"]  # it ran, then stopped


def test_remix_makes_a_new_video_from_a_completed_one(client, api, video, tmp_path):
    remix = client.videos.remix(video.id, prompt="a blue square moving left", extra_body={"steps": 8, "seed": 3})  # 0.6 of 8 keeps 5: PNDM's 4 fit
    assert remix.remixed_from_video_id == video.id and remix.status in ("queued", "in_progress")
    done = client.videos.poll(remix.id, poll_interval_ms=200)
    assert done.status == "completed", done.error
    assert (done.seconds, done.size, done.prompt) == (video.seconds, video.size, "a blue square moving left")
    source = decode(client.videos.download_content(video.id).content, tmp_path, "a.mp4")
    remixed = decode(client.videos.download_content(done.id).content, tmp_path, "b.mp4")
    assert remixed.shape == source.shape and np.abs(remixed.astype(float) - source).mean() > 1
    # a job that fails says why, in OpenAI's error object, without the server's paths
    output_dir = api[2]
    (output_dir / "videos" / done.id / "remix.mp4").unlink()
    failed = client.videos.poll(client.videos.remix(done.id, prompt="a red circle", extra_body={"steps": 8}).id, poll_interval_ms=200)
    assert failed.status == "failed" and failed.error.code == "invalid_request" and "the source video was deleted before this job ran" in failed.error.message
    assert str(output_dir) not in failed.error.message and failed.progress < 100
    with pytest.raises(openai.BadRequestError, match="failed, so it has no content"):
        client.videos.download_content(failed.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.remix("video_nope", prompt="x")
    # a strength the steps cannot keep (PNDM runs at least 4 of them) would silently become 1
    with pytest.raises(openai.BadRequestError, match="keeps 2 of the 4 steps, and PNDM runs at least 4"):
        client.videos.remix(video.id, prompt="x", extra_body={"steps": 4})
    for extra, param in (({"strength": 2}, "strength"), ({"seed": -1}, "seed"), ({"speed": "turbo"}, "speed"), ({"size": "64x64"}, "size")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.videos.remix(video.id, prompt="x", extra_body=extra)
        assert refused.value.body["param"] == param
    with pytest.raises(openai.BadRequestError, match="the prompt is empty"):
        client.videos.remix(video.id, prompt=" ")


def test_speed_picks_the_profile_the_job_runs_with(client, api, video):
    """`speed` resolves as `--speed` does (builtin:shapes' fastest, read from its sampling.json;
    explicit steps win) and the sidecar records what it resolved to."""
    done = client.videos.create_and_poll(prompt="a red circle moving right", extra_body={"speed": "fastest", "seed": 1}, poll_interval_ms=200)
    assert done.status == "completed", done.error
    queue, output_dir = api[1], api[2]
    files = queue.get(done.id, owner="api").result["files"]
    sidecar = json.loads((output_dir / "videos" / done.id / files["sidecar"]).read_text())
    settings = sidecar["settings"]
    fastest = json.loads((BUILTIN_ROOT / "shapes" / "sampling.json").read_text())["speed_profiles"]["fastest"]
    assert (settings["speed"], settings["scheduler"], settings["steps"]) == ("fastest", fastest["scheduler"] + "Scheduler", fastest["steps"]), settings
    # a remix resolves it too: 4 steps at strength 0.6 keep 2, too few for the default PNDM, enough for fastest's scheduler
    with pytest.raises(openai.BadRequestError, match="PNDM runs at least 4"):
        client.videos.remix(video.id, prompt="x", extra_body={"steps": 4})
    remix = client.videos.remix(video.id, prompt="x", extra_body={"steps": 4, "speed": "fastest"})
    assert queue.get(remix.id, owner="api").settings["job"]["speed"] == "fastest"
    client.videos.delete(remix.id)  # not needed to run: the worker stays free for the other tests
    for bad in ("turbo", "x" * 500):
        with pytest.raises(openai.BadRequestError) as refused:
            client.videos.create(prompt="x", extra_body={"speed": bad})
        error = refused.value.body
        assert error["param"] == "speed" and "default, fast, fastest" in error["message"] and len(error["message"]) < 200, error
    answer = httpx.post(f"{api[0].base_url}/videos", json={"prompt": "x", "speed": ["fast"]}, headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "speed", answer.text


def test_the_api_key_is_required(api, client):
    server = api[0]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).videos.list()
    for headers in ({}, {"Authorization": KEY}, {"Authorization": f"Bearer {KEY}x"}):
        answer = httpx.get(f"{server.base_url}/videos", headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.base_url}/nothing").status_code == 401  # unknown routes too: no probing
    assert client.videos.list(limit=1).object == "list"


@pytest.mark.parametrize(
    ("fields", "param", "needle"),
    [
        ({"seconds": "3"}, "seconds", "use one of 0.5, 1, 1.5, 2"),
        ({"seconds": "4"}, "seconds", "use one of"),
        ({"size": "720x1280"}, "size", "use 64x64"),
        ({"model": "sora-2"}, "model", "serves 'builtin:shapes'"),
        ({"extra_body": {"speed": "turbo"}}, "speed", "unknown speed profile 'turbo' (use speed default, fast, fastest)"),
        ({"extra_body": {"lora": "style.safetensors"}}, "lora", "offers no LoRA adapters"),
        ({"input_reference": ("ref.png", PNG + b"\x00" * 16, "image/png")}, "input_reference", "no image conditioning"),
        ({"extra_body": {"temperature": 1}}, "temperature", "unknown parameter 'temperature'"),
        ({"extra_body": {"steps": 0}}, "steps", "steps must be >= 1"),
        ({"extra_body": {"steps": "many"}}, "steps", "must be an integer"),
        ({"extra_body": {"steps": 2}}, "steps", "PNDM needs at least 4 steps, got 2"),  # would only fail in the worker
        ({"extra_body": {"guidance": -1}}, "guidance", "guidance must be a number >= 0"),
        ({"extra_body": {"seed": -1}}, "seed", "seed must be a non-negative"),
        ({"prompt": "   "}, "prompt", "the prompt is empty"),
        ({"prompt": "x" * 2001}, "prompt", "more than the 2000"),
        ({"extra_body": {"negative_prompt": "x" * 2001}}, "negative_prompt", "more than the 2000"),
    ],
)
def test_bad_creates_are_400s_that_name_the_field(client, fields, param, needle):
    fields = {"prompt": "a red circle", **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        client.videos.create(**fields)
    error = refused.value.body
    assert error["param"] == param and needle in error["message"] and error["type"] == "invalid_request_error", error
    assert "/" not in error["message"]  # no server path, no path at all


def test_unknown_ids_and_routes_are_404s(api, client):
    server = api[0]
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("video_0123")
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content("video_0123")
    with pytest.raises(openai.BadRequestError, match="not available in this osp"):
        client.videos.extend(prompt="more", seconds="4", video=("clip.mp4", b"\x00" * 64, "video/mp4"))
    answer = httpx.get(f"{server.base_url}/nothing/here", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "invalid_request_error"


def test_oversized_bodies_are_413s(api):
    server, auth = api[0], {"Authorization": f"Bearer {KEY}"}
    declared = httpx.post(f"{server.base_url}/videos", json={"prompt": "x" * 70_000}, headers=auth)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the server counts what arrives
        for _ in range(20):
            yield b"x" * 8192

    streamed = httpx.post(f"{server.base_url}/videos", content=chunks(), headers={**auth, "Content-Type": "application/json"})
    assert streamed.status_code == 413


def test_a_full_queue_is_a_429_with_retry_after(tmp_path):
    server, queue = serve(tmp_path, max_queue=1)  # no worker: jobs wait
    with server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        waiting = client.videos.create(prompt="a red circle")
        assert (waiting.status, waiting.progress, waiting.seconds, waiting.size) == ("queued", 0, "2", "64x64")
        with pytest.raises(openai.RateLimitError) as full:
            client.videos.create(prompt="a blue circle")
        assert int(full.value.response.headers["Retry-After"]) >= 1
        assert full.value.body["code"] == "queue_full"
        with pytest.raises(openai.BadRequestError, match="not completed"):
            client.videos.download_content(waiting.id)
        with pytest.raises(openai.BadRequestError, match="only a completed video"):
            client.videos.remix(waiting.id, prompt="a green circle")
        assert client.videos.delete(waiting.id).deleted  # a queued job: gone, and room again
        assert client.videos.create(prompt="a blue circle").status == "queued"
        assert queue.counts()["queued"] == 1
        # the page's jobs share the queue and stay out of the API
        page_job = queue.submit("t2v", {"job": {}, "folder": str(tmp_path / "page")}, owner="page", model=MODEL, prompt="the page's")
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(page_job.id)
        with pytest.raises(openai.NotFoundError):
            client.videos.delete(page_job.id)
        assert page_job.id not in [v.id for v in client.videos.list()] and queue.get(page_job.id) is not None


def test_what_a_browser_could_forge_or_a_client_garble_is_refused(api, client, video):
    """A page on another site may post a form here without a preflight: refused (programs send
    no Origin; this server's own pages are same-origin). Text that cannot be stored, a body
    nested too deep and a file where a value belongs are 400s, not server faults."""
    server, url = api[0], f"{api[0].base_url}/videos"
    auth = {"Authorization": f"Bearer {KEY}"}
    forged = httpx.post(url, content=b"prompt=from+another+site&steps=4", headers={**auth, "Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"})
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "cross_origin"
    own = httpx.get(url, headers={**auth, "Origin": f"http://127.0.0.1:{server.port}"})
    assert own.status_code == 200
    for body, needle in (
        (b'{"prompt": "\\ud800 a lone surrogate", "steps": 4}', "lone surrogate"),
        (b"[" * 20000 + b"]" * 20000, "nested too deeply"),
    ):
        answer = httpx.post(url, content=body, headers={**auth, "Content-Type": "application/json"})
        assert answer.status_code == 400 and needle in answer.json()["error"]["message"], answer.text
    as_file = httpx.post(url, files={"prompt": ("prompt.txt", b"a red circle")}, data={"steps": "4"}, headers=auth)
    assert as_file.status_code == 400 and as_file.json()["error"]["message"] == "'prompt' must be a value, not a file"
    # the auth scheme is case-insensitive (RFC 7235); another scheme is named as such
    assert httpx.get(url, headers={"Authorization": f"bearer {KEY}"}).status_code == 200
    basic = httpx.get(url, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401 and "Authorization: Bearer KEY" in basic.json()["error"]["message"]
    head = httpx.head(f"{url}/{video.id}/content", headers=auth)
    assert head.status_code == 200 and head.headers["content-type"] == "video/mp4"


def test_lora_names_an_adapter_the_server_offers(api, tmp_path):
    """`lora`: a name among --lora-dir's subfolders, with an optional scale (a JSON string or
    list, or repeated form fields from the client): the video's sidecar names the adapter; a
    path, an unknown name, a bad scale and a server without adapters are 400s."""
    import json

    from tests.jobs.test_lora import peft_adapter

    server, queue, output_dir = api
    offered = tmp_path / "adapters"
    peft_adapter(offered / "style", 1, 4, ["to_q", "to_v"])
    from osp_core.models.latte_t2v import LatteT2V

    from tests.train.helpers import TINY_T2V

    peft_adapter(offered / "wide", 2, 2, ["to_q"], model=LatteT2V(**TINY_T2V))  # made for another model config
    second, _ = serve(output_dir, api_key=KEY, lora_dir=offered)  # the same queue, so the module's worker runs it
    with second:
        client = openai.OpenAI(base_url=second.base_url, api_key=KEY, max_retries=0)
        done = client.videos.poll(client.videos.create(prompt="a red circle moving right", extra_body={**FAST, "lora": ["style:0.5"]}).id, poll_interval_ms=200)
        assert done.status == "completed", done.error
        # the worker's failure names the offered adapter by its name, never by its server path
        failed = client.videos.poll(client.videos.create(prompt="a red circle", extra_body={**FAST, "lora": "wide"}).id, poll_interval_ms=200)
        assert failed.status == "failed" and "adapter 'wide' was made for another model" in failed.error.message, failed.error
        assert str(offered) not in failed.error.message and str(tmp_path) not in failed.error.message
        sidecar = json.loads(next((output_dir / "videos" / done.id).glob("*.json")).read_text())
        assert [(Path(a["path"]).name, a["scale"]) for a in sidecar["models"]["lora"]] == [("style", 0.5)]
        for lora, needle in (
            ("../adapters/style", "no LoRA adapter '../adapters/style' on this server: it offers style"),
            ("other", "it offers style, wide"),
            ("style:abc", "is not a finite number"),
            ("style:1e9", "is 1e+09, outside the -2..2 this server takes"),
            ("style:-2.5", "outside the -2..2"),
            (["style"] * 9, "more than the 8"),
        ):
            with pytest.raises(openai.BadRequestError, match=re.escape(needle)) as refused:
                client.videos.create(prompt="x", extra_body={"lora": lora})
            assert refused.value.body["param"] == "lora" and str(offered) not in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="offers no LoRA adapters"):
        openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0).videos.create(prompt="x", extra_body={"lora": "style"})


def test_the_offered_adapters_are_one_bounded_list(tmp_path):
    """--lora-dir offers its first 64 adapters by name, to the page's picker and the API alike;
    an unknown name's refusal lists 20 and says how many more there are."""
    from osp_core.serve.session import AdapterRefused, offered_adapters, resolve_adapters

    for index in range(70):
        part = tmp_path / f"a{index:02d}" / ("text_encoder" if index % 2 else "")  # a text encoder's adapter alone counts too
        part.mkdir(parents=True)
        (part / "adapter_config.json").write_text("{}")
    (tmp_path / "0_not_an_adapter").mkdir()
    offered = offered_adapters(tmp_path)
    assert offered == [f"a{index:02d}" for index in range(64)]
    with pytest.raises(AdapterRefused, match=r"no LoRA adapter 'a64' on this server: it offers a00, .*, a19 and 44 more$"):
        resolve_adapters([("a64", 1.0)], tmp_path)
