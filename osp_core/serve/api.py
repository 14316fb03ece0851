"""The video API of `osp serve`: OpenAI's Videos API (`/videos`, as the `openai` package's
`client.videos` calls it) over the job queue, so that an unmodified OpenAI client drives osp.

`create_api(context)` is a FastAPI app with its routes at its root; `osp serve` mounts it at
`/v1`. Every job goes through the queue (`queue.py`) and runs in a worker (`worker.py`), the
same jobs as the CLI and the page run. What a client sends is untrusted: the body is bounded
before it is parsed, every field is checked and every unknown or unsupported field refused
(never ignored), and every answer that is not a success is OpenAI's error JSON, without any of
the server's paths.

OpenAI's `seconds` and `size` ("WIDTHxHEIGHT") map to the model's frames and sizes: frames =
seconds x fps + 1, a 4k+1 count up to the longest the model was trained on, and a size it was
trained on.
"""

from __future__ import annotations

import hmac
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import OSPError
from ..jobs.edit import REMIX_STRENGTH, EditJob, strength_not_kept
from ..jobs.sampling_plan import SamplingJob, resolve_job_speed
from ..pipelines.repository import ModelRepository
from ..pipelines.t2v_inputs import SPEED_PROFILES, SpeedChoice
from .paths import without_server_paths
from .session import AdapterRefused, resolve_adapters
from .queue import COMPLETED, FAILED, JobQueue, JobRow, QueueFull, new_job_id
from .worker import job_settings, remove_job_files

if TYPE_CHECKING:
    from .server import Service

OWNER = "api"  # the queue's owner of every job made here: the page's jobs stay out of the API
VIDEOS_FOLDER = "videos"  # OUTPUT_DIR/videos/<job id>/
CONTENT = {"video": ("video", "video/mp4"), "thumbnail": ("thumbnail", "image/png"), "spritesheet": ("spritesheet", "image/png")}


@dataclass(frozen=True)
class ApiLimits:
    """What one request may ask for."""

    max_body_bytes: int = 64 * 1024  # a create or remix is a few hundred bytes of JSON or form fields
    # T5 reads 300 tokens (about 1200 characters of English) and cuts the rest; 2000 characters
    # leave room for any language while keeping rows, sidecars and logs small
    max_prompt_chars: int = 2000
    max_list: int = 100  # videos per list page
    poll_after_ms: int = 500  # the hint an unfinished video's retrieve gives `client.videos.poll`


@dataclass
class ModelChoices:
    """What the served model can make, in the API's terms."""

    name: str
    fps: float
    frames: list[int]  # every 4k+1 count from 5 up to the longest trained
    default_frames: int  # the shortest trained
    sizes: list[tuple[int, int]]  # trained (height, width), the default first

    @classmethod
    def of(cls, repository: ModelRepository) -> ModelChoices:
        trained = repository.trained_frames
        return cls(
            name=repository.model,
            fps=float(repository.sampling["fps"]),
            frames=list(range(5, trained[-1] + 1, 4)),
            default_frames=trained[0],
            sizes=repository.trained_sizes,
        )

    def seconds(self, frames: int) -> str:
        """The API's `seconds` of a frame count: (frames - 1) / fps, e.g. 17 frames at 8 fps = "2"."""
        return format(round((frames - 1) / self.fps, 3), "g")

    def frames_of(self, seconds: str) -> int:
        """The frame count of `seconds` (a 400 naming the values that work when it has none)."""
        allowed = [self.seconds(f) for f in self.frames]
        try:
            value = float(seconds)
        except ValueError:
            value = math.nan
        exact = value * self.fps + 1 if math.isfinite(value) else math.nan
        # 3 decimals of a second is what `seconds()` writes (24 fps: 64 frames are "2.667")
        if math.isfinite(exact) and abs(exact - round(exact)) <= 0.01 * self.fps and round(exact) in self.frames:
            return round(exact)
        if len(allowed) > 12:  # the released model: 55 lengths up to 221 frames
            allowed = [*allowed[:3], "...", *allowed[-2:]]
        raise ApiError(400, f"seconds '{seconds[:20]}' is not a length {self.name} can make (4k+1 frames at {self.fps:g} fps, up to {self.frames[-1]}): use one of {', '.join(allowed)}", "seconds")

    @staticmethod
    def size_text(height: int, width: int) -> str:
        return f"{width}x{height}"  # OpenAI's sizes are width x height, osp's height x width

    def size_of(self, size: str) -> tuple[int, int]:
        for height, width in self.sizes:
            if size.strip().lower() == self.size_text(height, width):
                return height, width
        raise ApiError(400, f"size '{size[:20]}' is not a size {self.name} was trained on: use {' or '.join(self.size_text(h, w) for h, w in self.sizes)} (width x height)", "size")


@dataclass
class ApiContext:
    """What the API serves: the queue, where the jobs' files go, the served model."""

    queue: JobQueue
    output_dir: Path
    model: str  # the served name, as the server was started with it
    repository: ModelRepository | None = None  # None: `ModelRepository.resolve(model)`
    api_key: str | None = None
    max_queue: int | None = 16  # jobs that may wait; more: 429
    workers: int = 1  # for the Retry-After estimate
    lora_dir: Path | None = None  # the adapters clients may name (`lora`): its subfolders
    limits: ApiLimits = field(default_factory=ApiLimits)

    @classmethod
    def of(cls, service: Service) -> ApiContext:
        """The API's view of `osp serve`'s queue, model and options."""
        options = service.options
        return cls(
            queue=service.queue,
            output_dir=service.output_dir,
            model=options.model,
            repository=service.repository,
            api_key=options.api_key,
            max_queue=options.max_queue,
            workers=options.workers,
            lora_dir=options.lora_dir,
        )

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir).absolute()
        if self.repository is None:
            self.repository = ModelRepository.resolve(self.model)
        self.choices = ModelChoices.of(self.repository)


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    TYPES = {401: "invalid_request_error", 429: "rate_limit_error", 500: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.headers)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = ApiError.TYPES.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status, headers=headers)


# -- requests -----------------------------------------------------------------------------------

CREATE_FIELDS = {"prompt", "model", "seconds", "size", "seed", "steps", "guidance", "negative_prompt", "lora", "speed"}
LIST_FIELDS = {"lora"}  # may repeat in a form (the client writes a list as lora[]); a JSON list or one string
REMIX_FIELDS = {"prompt", "model", "seed", "steps", "guidance", "strength", "speed"}


async def read_fields(request: Request, allowed: set[str], refused: dict[str, str]) -> dict[str, Any]:
    """The request's fields, from JSON (curl) or a form (the `openai` client sends
    multipart/form-data, every value a string); a 400 for a field not in `allowed`."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # `curl -d '{...}'` without -H says application/x-www-form-urlencoded: JSON all the same
    sent_json = kind == "application/x-www-form-urlencoded" and (await request.body()).lstrip().startswith(b"{")
    if kind == "application/json" or not kind or sent_json:
        try:
            fields = json.loads(await request.body() or b"null")
        except ValueError:
            raise ApiError(400, "the body is not valid JSON") from None
        except RecursionError:
            raise ApiError(400, "the body's JSON is nested too deeply: send one flat object") from None
        if not isinstance(fields, dict):
            raise ApiError(400, "the body must be a JSON object, e.g. {\"prompt\": \"a red circle\"}")
    elif kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        async with request.form(max_files=1, max_fields=len(allowed) + 8) as form:
            fields = {}
            for key, value in form.multi_items():
                name = key.split("[")[0]  # the client writes a nested value as name[key]
                if name in LIST_FIELDS and name in allowed and isinstance(value, str):
                    fields.setdefault(name, []).append(value)
                    continue
                if name in fields:
                    raise ApiError(400, f"field '{name[:40]}' was given twice", name[:40])
                if isinstance(value, UploadFile) and name not in refused:
                    raise ApiError(400, f"'{name[:40]}' must be a value, not a file", name[:40])
                fields[name] = "<file>" if isinstance(value, UploadFile) else value
    else:
        raise ApiError(400, f"Content-Type '{kind}' is not accepted: send application/json or multipart/form-data")
    for name in fields:
        if name in refused:
            raise ApiError(400, f"unsupported parameter '{name}': {refused[name]}", name, "unsupported_parameter")
        if name not in allowed:
            shown = name[:40]  # a client's text, echoed: bounded
            raise ApiError(400, f"unknown parameter '{shown}' (this server takes {', '.join(sorted(allowed))})", shown, "unknown_parameter")
    return fields


def text_field(fields: dict[str, Any], name: str, limit: int | None = None) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"'{name}' must be text", name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"'{name}' is not valid Unicode text (it holds a lone surrogate)", name) from None
    if limit is not None and len(value) > limit:
        raise ApiError(400, f"'{name}' is {len(value)} characters, more than the {limit} this server takes", name, "string_above_max_length")
    return value


def adapters_field(fields: dict[str, Any], lora_dir: Path | None) -> list[str]:
    """`lora`: adapters by name among those the server offers (`session.resolve_adapters`),
    each with an optional :SCALE ("style", "style:0.6", or a list of them)."""
    value = fields.get("lora")
    if value is None or value == []:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ApiError(400, "'lora' must be an adapter name, or a list of them (each NAME or NAME:SCALE)", "lora")
    chosen = []
    for item in items:
        name, _, scale = item.strip().partition(":")
        try:
            number = float(scale) if scale else 1.0
        except ValueError:
            number = math.nan
        if not math.isfinite(number) and lora_dir is not None:
            raise ApiError(400, f"lora '{item[:60]}': the scale '{scale[:20]}' is not a finite number (write NAME:SCALE, e.g. {name[:60]}:0.8)", "lora")
        chosen.append((name, number))
    try:
        return resolve_adapters(chosen, lora_dir)
    except AdapterRefused as exc:
        raise ApiError(400, exc.message, "lora", exc.code) from None


def number_field(fields: dict[str, Any], name: str, kind: type) -> Any:
    """An int or float field, given as a JSON number or (in a form) as text."""
    value = fields.get(name)
    if value is None:
        return None
    wanted = "an integer" if kind is int else "a number"
    if isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be {wanted}, got {json.dumps(value)}", name)
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            raise ApiError(400, f"'{name}' must be {wanted}, got '{value[:40]}'", name) from None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ApiError(400, f"'{name}' must be {wanted}, got {json.dumps(value)[:40]}", name)
    return kind(value)


CLI_OPTION = re.compile(r"--([a-z][a-z-]*)")
CLI_OPTION_VALUE = re.compile(r"--([a-z][a-z-]*) (-?[0-9][0-9.e+-]*)\b")


def validate(job: SamplingJob | EditJob, context: ApiContext) -> None:
    """`job.validate()` (a `SamplingJob`'s settings resolved too: `sampling_settings`), an
    `InputError` a 400."""
    if isinstance(job, SamplingJob):
        sampling_settings(job, context)
        return
    try:
        job.validate()
    except OSPError as exc:
        raise refusal(exc, context.output_dir, context.lora_dir) from None


def sampling_settings(job: SamplingJob, context: ApiContext) -> SpeedChoice:
    """`job.validate()` and its speed profile resolved and checked against the served model as
    `plan_sampling` does it (`resolve_job_speed`: steps the scheduler can run, a cache the
    model can take), so a job that could never run is refused now, not failed later; an
    `InputError` a 400."""
    try:
        job.validate()
        sampling = context.repository.sampling
        return resolve_job_speed(job, sampling, float(sampling["guidance"]) if job.guidance is None else job.guidance)
    except OSPError as exc:
        raise refusal(exc, context.output_dir, context.lora_dir) from None


def speed_field(fields: dict[str, Any]) -> str | None:
    """`speed`: a profile name (`SPEED_PROFILES`), checked with the job (`validate`)."""
    value = fields.get("speed")
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"'speed' must be one of {', '.join(SPEED_PROFILES)}, got {json.dumps(value)[:40]}", "speed")
    return value


def refusal(exc: OSPError, *roots: Path | None) -> ApiError:
    """A job's `InputError` as a 400: its CLI option names (--steps) as the API's fields (steps)."""
    text = without_server_paths(str(exc), *roots)
    first = CLI_OPTION.search(text)
    param = first.group(1).replace("-", "_") if first else ("prompt" if "prompt" in text else None)
    text = CLI_OPTION_VALUE.sub(lambda m: f'"{m.group(1).replace("-", "_")}": {m.group(2)}', text)  # "pass --steps 150"
    return ApiError(400, CLI_OPTION.sub(lambda m: m.group(1).replace("-", "_"), text), param)


# -- the app ------------------------------------------------------------------------------------


def create_api(context: ApiContext) -> FastAPI:
    """The Videos API over `context.queue` (routes at the app's root; mount it at /v1)."""
    app = FastAPI(title="osp video API", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(ApiGuard, api_key=context.api_key, max_body_bytes=context.limits.max_body_bytes)
    choices, limits, queue = context.choices, context.limits, context.queue

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        param = str(first.get("loc", ["", "?"])[-1])
        return error_response(400, f"'{param}': {first.get('msg', 'invalid value')}", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path[:100]
        message = {404: f"no route {request.method} {path}", 405: f"{request.method} is not allowed on {path}"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, None, "not_found" if exc.status_code == 404 else None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"the server failed ({type(exc).__name__}); its log says why", None, "internal_error")

    def video_object(row: JobRow) -> dict[str, Any]:
        shown = row.settings.get("api", {})
        error = None
        if row.status == FAILED:
            error = {"code": row.error_code or "failed", "message": without_server_paths(row.error_message or "failed", context.output_dir, context.lora_dir)}
        return {
            "id": row.id,
            "object": "video",
            "created_at": int(row.created_at),
            "completed_at": None if row.completed_at is None else int(row.completed_at),
            "expires_at": None,  # kept until deleted
            "error": error,
            "model": row.model,
            "progress": 100 if row.status == COMPLETED else max(0, min(99, int(row.progress * 100))),
            "prompt": row.prompt,
            "remixed_from_video_id": row.remixed_from,
            "seconds": shown.get("seconds", ""),
            "size": shown.get("size", ""),
            "status": row.status,
        }

    def find(video_id: str) -> JobRow:
        row = queue.get(video_id, owner=OWNER)
        if row is None:
            raise ApiError(404, f"no video '{video_id[:80]}'", "video_id", "not_found")
        return row

    def check_model(fields: dict[str, Any]) -> None:
        model = text_field(fields, "model")
        if model is not None and model != context.model:
            raise ApiError(400, f"model '{model[:80]}' is not served here: this server serves '{context.model}'", "model", "model_not_found")

    def submit(kind: str, job: Any, folder: Path, prompt: str, shown: dict[str, str], remixed_from: str | None = None) -> JobRow:
        """Queue a checked job (`validate`); a 429 when the queue is full."""
        settings = job_settings(job, folder, previews=True, api=shown)
        try:
            return queue.submit(kind, settings, owner=OWNER, model=context.model, prompt=prompt, remixed_from=remixed_from, max_waiting=context.max_queue, job_id=folder.name)
        except QueueFull as exc:
            waiting = f"{exc.waiting} videos are" if exc.waiting != 1 else "1 video is"
            raise ApiError(429, f"{waiting} waiting, the most this server queues: try again later", None, "queue_full", {"Retry-After": str(retry_after())}) from None

    def retry_after() -> int:
        """Seconds until a place in the queue is likely free: one job's time (the mean of the
        last finished ones, 10 s when none finished yet) over the workers."""
        rows, _ = queue.list(limit=20)
        times = [r.completed_at - r.started_at for r in rows if r.status == COMPLETED and r.completed_at and r.started_at]
        mean = sum(times) / len(times) if times else 10.0
        return max(1, math.ceil(mean / max(1, context.workers)))

    def new_folder() -> Path:
        return context.output_dir / VIDEOS_FOLDER / new_job_id()

    def prompt_of(fields: dict[str, Any]) -> str:
        prompt = text_field(fields, "prompt", limits.max_prompt_chars)
        if prompt is None:
            raise ApiError(400, "'prompt' is required", "prompt", "missing_required_parameter")
        return prompt

    @app.post("/videos")
    async def create(request: Request) -> JSONResponse:
        refused = {"input_reference": f"{context.model} has no image conditioning (text to video only)", "extend": "extending a video is not available in this osp"}
        fields = await read_fields(request, CREATE_FIELDS, refused)
        prompt = prompt_of(fields)
        check_model(fields)
        if isinstance(fields.get("seconds"), (int, float)) and not isinstance(fields.get("seconds"), bool):
            fields["seconds"] = str(fields["seconds"])  # curl users write "seconds": 2
        if fields.get("seconds") is not None and not isinstance(fields["seconds"], str):
            raise ApiError(400, "'seconds' must be a number of seconds, e.g. \"2\"", "seconds")
        seconds, size = text_field(fields, "seconds"), text_field(fields, "size")
        frames = choices.default_frames if seconds is None else choices.frames_of(seconds)
        height, width = choices.sizes[0] if size is None else choices.size_of(size)
        folder = new_folder()
        job = SamplingJob(
            prompts=[prompt],
            negative_prompt=text_field(fields, "negative_prompt", limits.max_prompt_chars) or "",
            frames=frames,
            height=height,
            width=width,
            steps=number_field(fields, "steps", int),
            guidance=number_field(fields, "guidance", float),
            seed=number_field(fields, "seed", int),
            output_dir=folder,
            model=context.model,
            lora=adapters_field(fields, context.lora_dir),
            speed=speed_field(fields),
        )
        shown = {"seconds": choices.seconds(frames), "size": choices.size_text(height, width)}
        validate(job, context)
        row = await run_in_threadpool(submit, "t2v", job, folder, prompt, shown)
        return JSONResponse(video_object(row))

    @app.get("/videos")
    def list_videos(
        limit: int = Query(20, ge=1, le=limits.max_list),
        after: str | None = Query(None, max_length=200),
        order: Literal["asc", "desc"] = Query("desc"),
    ) -> dict[str, Any]:
        rows, more = queue.list(owner=OWNER, limit=limit, after=after, order=order)
        data = [video_object(r) for r in rows]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None, "has_more": more}

    @app.get("/videos/{video_id}")
    def retrieve(video_id: str) -> JSONResponse:
        row = find(video_id)
        headers = {} if row.finished else {"openai-poll-after-ms": str(limits.poll_after_ms)}
        return JSONResponse(video_object(row), headers=headers)

    @app.delete("/videos/{video_id}")
    def delete(video_id: str) -> dict[str, Any]:
        row = queue.delete(video_id, owner=OWNER)  # a running job: cancelled, its worker drops it
        if row is None:
            raise ApiError(404, f"no video '{video_id[:80]}'", "video_id", "not_found")
        remove_job_files(row.settings, context.output_dir)
        return {"id": row.id, "object": "video.deleted", "deleted": True}

    @app.api_route("/videos/{video_id}/content", methods=["GET", "HEAD"])
    def content(video_id: str, variant: Literal["video", "thumbnail", "spritesheet"] = Query("video")) -> FileResponse:
        row = find(video_id)
        if row.status != COMPLETED:
            if row.status == FAILED:
                raise ApiError(400, f"video '{row.id}' failed, so it has no content (its error says why)", "video_id", "video_failed")
            raise ApiError(400, f"video '{row.id}' is {row.status.replace('_', ' ')}, not completed: its content is there once it completes", "video_id", "video_not_ready")
        key, media_type = CONTENT[variant]
        name = (row.result or {}).get("files", {}).get(key)
        path = Path(row.settings["folder"]) / name if name else None
        if path is None or not path.is_file():
            raise ApiError(404, f"video '{row.id}' has no {variant}", "variant", "not_found")
        suffix = path.suffix
        return FileResponse(path, media_type=media_type, filename=f"{row.id}{'' if variant == 'video' else '_' + variant}{suffix}", headers={"X-Content-Type-Options": "nosniff"})

    @app.post("/videos/{video_id}/remix")
    async def remix(video_id: str, request: Request) -> JSONResponse:
        fields = await read_fields(request, REMIX_FIELDS, {"negative_prompt": "a remix takes no negative prompt in this osp yet"})
        prompt = prompt_of(fields)
        check_model(fields)
        source = await run_in_threadpool(find, video_id)
        if source.status != COMPLETED or not (source.result or {}).get("files", {}).get("video"):
            raise ApiError(400, f"video '{source.id}' is {source.status.replace('_', ' ')}: only a completed video can be remixed", "video_id", "video_not_ready")
        folder = new_folder()
        steps, guidance, seed = number_field(fields, "steps", int), number_field(fields, "guidance", float), number_field(fields, "seed", int)
        speed = speed_field(fields)
        # the sampling settings checked as a create checks them (the edit job reads them later)
        chosen = sampling_settings(SamplingJob(prompts=[prompt], steps=steps, guidance=guidance, seed=seed, model=context.model, speed=speed), context)
        job = EditJob(
            video=Path(source.settings["folder"]) / source.result["files"]["video"],
            output=Path("remix.mp4"),
            whole_frame=True,
            prompt=prompt,
            # unset: the whole-frame edit's own default (`jobs.edit.REMIX_STRENGTH`, 0.6: the new
            # prompt shows, the source's layout and motion stay); the model's edit_strength is
            # tuned for region edits and would barely change a whole frame
            strength=number_field(fields, "strength", float),
            engine="blend",
            model=context.model,
            steps=steps,
            guidance=guidance,
            seed=seed,
            speed=speed,
        )
        validate(job, context)  # the strength
        strength = REMIX_STRENGTH if job.strength is None else job.strength
        named = f"strength {strength:g}" if job.strength is not None else f"the remix's default strength {strength:g}"
        note = strength_not_kept(chosen.steps, strength, chosen.scheduler, named, flag="")
        if note is not None:
            raise ApiError(400, note, "steps")  # the CLI warns and goes on; a client would never see the warning
        row = await run_in_threadpool(submit, "edit", job, folder, prompt, dict(source.settings.get("api", {})), source.id)
        return JSONResponse(video_object(row))

    @app.post("/videos/{action}")
    async def not_here(action: str) -> JSONResponse:
        # the client's edits, extensions and characters: OpenAI routes osp has no job for
        raise ApiError(400, f"POST /videos/{action[:40]} is not available in this osp (it makes videos from text, and remixes them)", None, "unsupported_endpoint")

    return app


# -- access and body bounds ---------------------------------------------------------------------


def same_origin(headers: dict[bytes, bytes]) -> bool:
    """Whether the request came from no page at all (a program: no Origin header) or from a
    page of this server (Origin's host:port is the Host the request was sent to)."""
    origin = headers.get(b"origin")
    if origin is None or headers.get(b"sec-fetch-site") == b"same-origin":
        return True
    return origin.partition(b"://")[2].rstrip(b"/").lower() == headers.get(b"host", b"").lower()


class ApiGuard:
    """ASGI middleware: the API key (constant-time comparison) on every route, unknown ones
    too, and a bounded request body (Content-Length and the bytes that arrive), read whole
    before the app parses it."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self.expected = None if api_key is None else api_key.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        if not same_origin(headers):
            # a page on another site may send a form here (no preflight for forms): clients
            # of this API are programs, which send no Origin, or this server's own page
            await error_response(403, "requests from another site's page are refused", None, "cross_origin")(scope, receive, send)
            return
        if self.expected is not None:
            scheme, _, key = headers.get(b"authorization", b"").partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(key.strip(), self.expected)):
                if b"authorization" not in headers:
                    message = "no API key: send 'Authorization: Bearer KEY'"
                elif scheme.lower() != b"bearer":
                    message = "send the API key as 'Authorization: Bearer KEY'"
                else:
                    message = "the API key is not this server's"
                await error_response(401, message, None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        declared = headers.get(b"content-length", b"0")
        too_large = error_response(413, f"the request body is larger than the {self.max_body_bytes} bytes this server takes", None, "request_too_large")
        if not declared.isdigit() or int(declared) > self.max_body_bytes:
            await too_large(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await too_large(scope, receive, send)
                return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
