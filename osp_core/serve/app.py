"""The web page of `osp serve`: a Gradio face over the job queue (text to video, the VAE round
trip, editing), whose jobs the workers run.

Imported only once Gradio is known to be installed (`session.check_gradio`). No
`from __future__ import annotations` here: Gradio finds the `gr.Request` parameter of a
handler by its annotation object.
"""

import hmac
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import InputError, OSPError
from ..hub import BUILTIN_PREFIX
from ..jobs.sampling_plan import SamplingJob, slugify
from ..pipelines.repository import ModelRepository
from ..pipelines.t2v_inputs import CACHE_METHODS, SCHEDULER_NAMES, resolve_speed
from .guard import UploadGuard
from .paths import without_server_paths
from .server import Service
from .session import Sessions, check_upload, job_folder, offered_adapters, parse_tracks, resolve_adapters, sweep_upload_temps, use_gradio_folder
from .queue import FAILED, QUEUED
from .worker import error_of, job_settings

log = logging.getLogger(__name__)

# a few prompts in the released model's style (any model that is not builtin:shapes)
GENERAL_EXAMPLES = [
    "A quiet beach at dawn, the waves gently lapping at the shore and the sky painted in pastel hues.",
    "A shiba inu wearing a beret and a black turtleneck, sitting in a cafe.",
    "Time-lapse of clouds drifting over snowy mountains under a blue sky.",
]
SHAPES_EXAMPLES = 8  # captions of the shapes world shown under the prompt
POLL_SECONDS = 0.1  # how often a page job's handler reads its progress from the queue


@dataclass
class PageDefaults:
    """What the form starts with: the model's trained sizes and its sampling.json."""

    frames: int
    max_frames: int
    sizes: list[str]
    steps: int
    guidance: float
    scheduler: str
    edit_strength: float
    examples: list[str] = field(default_factory=list)
    speeds: list[str] = field(default_factory=lambda: ["default"])
    """The `--speed` profiles the model defines (default always)."""

    @classmethod
    def of(cls, repository: ModelRepository) -> "PageDefaults":
        sampling = repository.sampling
        if repository.model.startswith(f"{BUILTIN_PREFIX}shapes"):
            from ..data.shapes import all_captions

            captions = all_captions()
            examples = captions[:: max(1, len(captions) // SHAPES_EXAMPLES)][:SHAPES_EXAMPLES]
        else:
            examples = list(GENERAL_EXAMPLES)
        return cls(
            frames=repository.trained_frames[0],
            max_frames=repository.trained_frames[-1],
            sizes=[f"{h}x{w}" for h, w in repository.trained_sizes],
            steps=int(sampling["steps"]),
            guidance=float(sampling["guidance"]),
            scheduler=str(sampling["scheduler"]),
            edit_strength=float(sampling["edit_strength"]),
            examples=examples,
            speeds=["default", *sampling.get("speed_profiles", {})],
        )


def upload_box(**kwargs: Any) -> gr.File:
    """A one-file upload box whose handler gets the stored upload's path. `gr.File`'s own
    preprocess also opens an empty temp file per job and never deletes it (one more zero-byte
    file in the output folder each time); the handlers check the file themselves
    (`check_upload`: content and size). Set on the instance: a `gr.File` subclass would make
    Gradio write a .pyi stub beside this module at import."""
    box = gr.File(file_count="single", **kwargs)
    box.preprocess = stored_upload_path  # type: ignore[method-assign]
    return box


def result_boxes(tab: str, video_label: str, image_label: str, status_label: str) -> tuple[gr.Video, gr.Image, gr.File, gr.Textbox]:
    """A tab's result column: the video, the image shown instead for one frame, the downloads and
    a status line (elem_ids `TAB-video`, `TAB-image`, `TAB-files`, `TAB-status`)."""
    video = gr.Video(label=video_label, height=360, interactive=False, autoplay=True, loop=True, elem_id=f"{tab}-video")
    image = gr.Image(label=image_label, height=360, interactive=False, visible=False, type="filepath", elem_id=f"{tab}-image")
    files = gr.File(label="Download (mp4, or png for one frame, and JSON sidecar)", file_count="multiple", interactive=False, elem_id=f"{tab}-files")
    status = gr.Textbox(label=status_label, interactive=False, elem_id=f"{tab}-status")
    return video, image, files, status


def stored_upload_path(payload: Any) -> str | None:
    """The path of the upload in a File box's payload (one FileData, or a list of one)."""
    if payload is None:
        return None
    files = getattr(payload, "root", [payload])
    return str(files[0].path) if files else None


def result_views(path: str | None) -> tuple[Any, Any]:
    """(video player, image box) updates showing `path`: a one-frame result is a PNG, which the
    video player cannot show, so the image box takes its place; None clears both (the player
    shown, where the next job's progress bar is drawn)."""
    if path is not None and path.endswith(".png"):
        return gr.update(value=None, visible=False), gr.update(value=path, visible=True)
    return gr.update(value=path, visible=True), gr.update(value=None, visible=False)


class JobFailed(Exception):
    """A page job that ended failed: `code` and the one-line `message` the worker recorded."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Server:
    """The page's handlers and the state behind them: the sessions, and the queue (`service`)
    its jobs go through, with the video API's."""

    def __init__(self, service: Service) -> None:
        self.options = service.options
        self.service = service
        self.repository = service.repository
        self.defaults = PageDefaults.of(self.repository)
        self.output_dir = service.output_dir
        sweep_upload_temps(self.output_dir / ".gradio")
        self.sessions = Sessions()
        self.adapters = offered_adapters(self.options.lora_dir)
        """The adapters the picker lists: those --lora-dir offers as the server starts."""

    # -- running a job -----------------------------------------------------------------------

    def run_job(self, kind: str, job: Any, folder: Path, prompt: str, session: str, progress: gr.Progress) -> dict[str, Any]:
        """Queue `job` for the workers and wait for it, reporting its progress; a Cancel of the
        session cancels it (queued or running). Returns the result, paths made absolute."""
        cancelled = self.sessions.cancel_flag(session)
        if cancelled.is_set():  # cancelled while it waited for the page's own queue
            raise JobFailed("cancelled", "cancelled")
        queue = self.service.queue
        row = queue.submit(kind, job_settings(job, folder), owner="page", model=self.options.model, prompt=prompt)
        shown, asked_cancel = None, False
        while not row.finished:
            if cancelled.is_set() and not asked_cancel:
                queue.cancel(row.id)
                asked_cancel = True
            now = (row.progress or None, row.message or ("waiting for the device ..." if row.status == QUEUED else "starting ..."))
            if now != shown:
                progress(now[0], desc=now[1])
                shown = now
            time.sleep(POLL_SECONDS)
            row = queue.get(row.id) or row
        if row.status == FAILED:
            raise JobFailed(row.error_code or "job_failed", row.error_message or "failed")
        result = dict(row.result or {})
        result["paths"] = {name: str(folder / file) for name, file in result.get("files", {}).items() if file}
        return result

    # -- handlers ----------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        negative_prompt: str,
        frames: float,
        size: str,
        steps: float,
        guidance: float,
        scheduler: str,
        seed: float | None,
        randomize: bool,
        cache: str,
        speed: str,
        single_image: bool,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
        *picks: Any,
    ) -> tuple[Any, Any, str, Any]:
        """Text to video: (video, [mp4, sidecar], status line, seed used). `picks`: the adapter
        picker's (chosen, scale) values (`chosen_adapters`)."""
        session = request.session_hash or ""
        try:
            job = self.t2v_job(prompt, negative_prompt, frames, size, steps, guidance, scheduler, None if randomize else seed, cache, speed, single_image, picks)
            folder = job_folder(self.output_dir, self.sessions.key(session), "t2v")
            result = self.run_job("t2v", job, folder, job.prompts[0], session, progress)
        except Exception as exc:  # one line in the page; the server goes on
            return *result_views(None), None, self.failed(exc), gr.update()
        record, paths = result["record"], result["paths"]
        status = f"{record['num_frames']} frames {record['size'][0]}x{record['size'][1]}, seed {record['seed']}, {record['seconds']['denoise']:.1f}s denoising"
        status = "; ".join([status, *result["notes"]])
        return *result_views(paths["video"]), [paths["video"], paths["sidecar"]], status, record["seed"]

    def t2v_job(self, prompt: str, negative_prompt: str, frames: float, size: str, steps: float, guidance: float, scheduler: str, seed: float | None, cache: str, speed: str, single_image: bool, picks: tuple[Any, ...] = ()) -> SamplingJob:
        """The text-to-video tab's job from its controls, checked (an empty prompt is refused
        before the queue). The controls are explicit settings: the speed profile fills only what
        the page has no control for (its cache threshold and guidance interval); picking a
        profile sets the controls to its values first (`speed_controls`)."""
        height, width = (int(v) for v in size.split("x"))
        job = SamplingJob(
            prompts=[prompt or ""],
            negative_prompt=negative_prompt or "",
            frames=1 if single_image else int(frames),
            height=height,
            width=width,
            steps=int(steps),
            guidance=float(guidance),
            scheduler=scheduler,
            seed=None if seed is None else int(seed),
            model=self.options.model,
            cache=cache,
            speed=speed,
            lora=self.chosen_adapters(picks),
        )
        job.validate()
        return job

    def speed_controls(self, speed: str) -> tuple[Any, Any, Any]:
        """A speed profile picked: the steps, scheduler and cache controls set to its values
        (`resolve_speed`, the one place profiles resolve); the rest stays as the user left it."""
        try:
            chosen = resolve_speed(speed, self.repository.sampling, model=f"'{self.options.model}'")
        except OSPError:  # not a profile of this model: the job refuses it when it runs
            return gr.update(), gr.update(), gr.update()
        return gr.update(value=chosen.steps), gr.update(value=chosen.scheduler), gr.update(value=chosen.cache)

    def round_trip(self, upload: str | None, size: str, request: gr.Request, progress: gr.Progress = gr.Progress()) -> tuple[Any, Any, Any, str]:
        """The VAE tab: (reconstruction as video, as image, [mp4 or png, sidecar], PSNR/SSIM line)."""
        from ..jobs.vae import VaeJob

        session = request.session_hash or ""
        try:
            path = check_upload(upload, self.options.max_upload_mb * 2**20)
            job = VaeJob("recon", path, model=self.options.model, frames="auto", size=size.strip() or None if size else None, memory_hint="pass a smaller size")
            folder = job_folder(self.output_dir, self.sessions.key(session), "vae")
            result = self.run_job("vae", job, folder, "", session, progress)
        except Exception as exc:
            return *result_views(None), None, self.failed(exc)
        record, paths = result["record"], result["paths"]
        status = f"{record['frames']} frames {record['size'][0]}x{record['size'][1]}  PSNR {record['psnr']:.2f} dB  SSIM {record['ssim']:.4f}"
        return *result_views(paths["video"]), [paths["video"], paths["sidecar"]], status

    def edit(
        self,
        upload: str | None,
        box: str,
        first_frame: str | None,
        prompt: str,
        tracks: str,
        engine: str,
        strength: float,
        steps: float,
        seed: float | None,
        speed: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
        *picks: Any,
    ) -> tuple[Any, Any, Any, str]:
        """The Edit tab: (edited video, source video, [mp4, sidecar], status line); `picks` as
        for `generate`."""
        from ..jobs.edit import EditJob

        session = request.session_hash or ""
        try:
            lora = self.chosen_adapters(picks)
            path = check_upload(upload, self.options.max_upload_mb * 2**20)
            first = check_upload(first_frame, self.options.max_upload_mb * 2**20) if first_frame else None
            folder = job_folder(self.output_dir, self.sessions.key(session), "edit")
            job = EditJob(
                video=path,
                output=Path(f"{slugify(path.stem)}-edited.mp4"),
                box=box or None,
                first_frame=first,
                prompt=prompt or "",
                tracks=parse_tracks(tracks),
                engine=engine,
                strength=float(strength),
                model=self.options.model,
                frames="auto",
                steps=int(steps),
                seed=None if seed is None else int(seed),
                lora=lora,
                speed=speed,
            )
            job.validate()  # a malformed box is refused before the queue
            result = self.run_job("edit", job, folder, job.prompt, session, progress)
        except Exception as exc:
            return None, None, None, self.failed(exc)
        r, paths = result["record"], result["paths"]
        status = f"{r['num_frames']} frames {r['size'][0]}x{r['size'][1]}, {r['engine']} engine, {len(r['tracks'])} track(s) ({r['track_source']}), seed {r['seed']}"
        return paths["video"], str(path), [paths["video"], paths["sidecar"]], "; ".join([status, *result["notes"]])

    def chosen_adapters(self, picks: tuple[Any, ...]) -> list[str]:
        """The job's `lora` entries from the picker's values: a (chosen, scale) pair per listed
        adapter (`adapter_picker`), checked as the API checks its `lora` (`resolve_adapters`).
        They come over HTTP: anything but a pair per adapter, or a scale that is not a number,
        is refused."""
        if len(picks) != 2 * len(self.adapters):
            raise InputError(f"the adapter picker sent {len(picks)} values for {len(self.adapters)} adapters", "reload the page")
        chosen = []
        for name, on, scale in zip(self.adapters, picks[::2], picks[1::2]):
            if on:
                try:
                    chosen.append((name, float(scale)))
                except (TypeError, ValueError):
                    chosen.append((name, float("nan")))
        return resolve_adapters(chosen, self.options.lora_dir) if chosen else []

    def adapter_picker(self, tab: str) -> list[Any]:
        """The adapters of --lora-dir, each a checkbox and a scale (elem_ids `TAB-lora-I` and
        `TAB-lora-I-scale`), in a panel `TAB-lora`; nothing without --lora-dir. Returns the
        components in the order `chosen_adapters` reads them."""
        components: list[Any] = []
        if not self.adapters:
            return components
        with gr.Accordion(f"LoRA adapters ({len(self.adapters)})", open=True, elem_id=f"{tab}-lora"):
            for index, name in enumerate(self.adapters):
                with gr.Row():
                    components.append(gr.Checkbox(value=False, label=name, elem_id=f"{tab}-lora-{index}"))
                    components.append(gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label="Scale", elem_id=f"{tab}-lora-{index}-scale"))
        return components

    def start_edit(self, request: gr.Request) -> tuple[None, None, None, str]:
        self.sessions.cancel_flag(request.session_hash or "").clear()
        return None, None, None, ""

    def start(self, request: gr.Request) -> tuple[Any, Any, None, str]:
        """On a click, before the job queues: the last result and status clear (the page never
        shows a stale line) and an earlier cancel no longer applies."""
        self.sessions.cancel_flag(request.session_hash or "").clear()
        return *result_views(None), None, ""

    def cancel(self, request: gr.Request) -> None:
        """Stop this session's job: a running one at its next step, a queued one when its turn
        comes (it then reports "cancelled"). Gradio's own `cancels=` is not used: it leaves the
        form's outputs in an error state and does not stop a running thread."""
        self.sessions.cancel_flag(request.session_hash or "").set()

    def failed(self, exc: Exception) -> str:
        """The status line of a failed job: the worker's line, or (a refusal before the queue)
        an `OSPError` as the CLI prints it and anything else by type, as a worker records it."""
        if isinstance(exc, JobFailed):
            code, message = exc.code, str(exc)
        else:
            if not isinstance(exc, OSPError):  # a bug, not a bad input: the server log keeps the traceback
                log.error("job failed:\n%s", traceback.format_exc())
            code, message = error_of(exc)
        return "cancelled" if code == "cancelled" else without_server_paths(f"Error: {message}", self.output_dir, self.options.lora_dir)

    # -- the page ----------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        d = self.defaults
        with gr.Blocks(title="osp", analytics_enabled=False) as demo:
            gr.Markdown(f"## osp: Open-Sora-Plan v1.1.0 · model `{self.options.model}`")
            with gr.Tab("Text to video", id="t2v"):
                with gr.Row():
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="t2v-prompt")
                        negative = gr.Textbox(label="Negative prompt", elem_id="t2v-negative")
                        with gr.Row():
                            # longer than trained is allowed (the sidecar notes it), as in the CLI
                            frames = gr.Slider(1, d.max_frames * 2 - 1, value=d.frames, step=4, label="Frames", elem_id="t2v-frames")
                            size = gr.Dropdown(d.sizes, value=d.sizes[0], label="Size (HxW)", elem_id="t2v-size")
                        with gr.Row():
                            steps = gr.Slider(1, max(500, d.steps), value=d.steps, step=1, label="Steps", elem_id="t2v-steps")
                            guidance = gr.Slider(0, 20, value=d.guidance, step=0.1, label="Guidance", elem_id="t2v-guidance")
                        with gr.Row():
                            scheduler = gr.Dropdown(list(SCHEDULER_NAMES), value=d.scheduler, label="Scheduler", elem_id="t2v-scheduler")
                            cache = gr.Radio(list(CACHE_METHODS), value="none", label="Cache", elem_id="t2v-cache")
                        speed = gr.Dropdown(d.speeds, value="default", label="Speed (sets steps, scheduler and cache; change them after to override)", elem_id="t2v-speed")
                        with gr.Row():
                            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="t2v-seed")
                            randomize = gr.Checkbox(value=True, label="Randomize seed", elem_id="t2v-randomize")
                            single = gr.Checkbox(value=False, label="Single image (1 frame, temporal attention off)", elem_id="t2v-single")
                        t2v_adapters = self.adapter_picker("t2v")
                        with gr.Row():
                            generate = gr.Button("Generate", variant="primary", elem_id="t2v-generate")
                            stop = gr.Button("Cancel", elem_id="t2v-cancel")
                        gr.Examples(d.examples, inputs=[prompt], label="Example prompts")
                    with gr.Column():
                        video, image, files, status = result_boxes("t2v", "Video", "Image", "Status")
                # the last result and status clear first, so the page never shows a stale line
                generate.click(self.start, None, [video, image, files, status], queue=False, api_visibility="private").then(
                    self.generate,
                    [prompt, negative, frames, size, steps, guidance, scheduler, seed, randomize, cache, speed, single, *t2v_adapters],
                    [video, image, files, status, seed],
                    concurrency_id="device",  # the tabs share the workers: one page job at a time each
                    concurrency_limit=self.options.workers,
                    api_visibility="private",
                    show_progress_on=video,  # one progress bar and queue position, not one per output
                )
                stop.click(self.cancel, None, None, queue=False, api_visibility="private")
                speed.change(self.speed_controls, [speed], [steps, scheduler, cache], queue=False, api_visibility="private")
            with gr.Tab("VAE round trip", id="vae"):
                with gr.Row():
                    with gr.Column():
                        upload = upload_box(label="Video or image", file_types=["video", "image"], elem_id="vae-upload")
                        vae_size = gr.Textbox(label="Resize to HxW (optional, multiples of 8)", elem_id="vae-size")
                        with gr.Row():
                            run = gr.Button("Round trip", variant="primary", elem_id="vae-run")
                            vae_stop = gr.Button("Cancel", elem_id="vae-cancel")
                    with gr.Column():
                        recon, recon_image, recon_files, vae_status = result_boxes("vae", "Reconstruction", "Reconstruction", "PSNR / SSIM")
                run.click(self.start, None, [recon, recon_image, recon_files, vae_status], queue=False, api_visibility="private").then(
                    self.round_trip, [upload, vae_size], [recon, recon_image, recon_files, vae_status], concurrency_id="device", concurrency_limit=self.options.workers, api_visibility="private", show_progress_on=recon
                )
                vae_stop.click(self.cancel, None, None, queue=False, api_visibility="private")
            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    with gr.Column():
                        edit_upload = upload_box(label="Video to edit (4k+1 frames are used)", file_types=["video"], elem_id="edit-upload")
                        edit_box = gr.Textbox(label="Box X0,Y0,X1,Y1 (pixels, x right, y down, end exclusive)", elem_id="edit-box")
                        edit_first = upload_box(label="Edited first frame (optional; same size as the video)", file_types=["image"], elem_id="edit-first")
                        edit_prompt = gr.Textbox(label="Prompt", elem_id="edit-prompt")
                        edit_tracks = gr.Textbox(label="Tracks: one X0,Y0:X1,Y1 per line (empty: keep the source's motion)", lines=2, elem_id="edit-tracks")
                        with gr.Row():
                            edit_engine = gr.Radio(["auto", "control", "blend"], value="auto", label="Engine", elem_id="edit-engine")
                            edit_strength = gr.Slider(0.05, 1.0, value=d.edit_strength, step=0.05, label="Strength", elem_id="edit-strength")
                        with gr.Row():
                            edit_steps = gr.Slider(4, max(500, d.steps), value=d.steps, step=1, label="Steps", elem_id="edit-steps")
                            edit_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="edit-seed")
                        edit_speed = gr.Dropdown(d.speeds, value="default", label="Speed (sets the steps; its scheduler and cache apply too)", elem_id="edit-speed")
                        edit_adapters = self.adapter_picker("edit")
                        with gr.Row():
                            edit_run = gr.Button("Edit", variant="primary", elem_id="edit-run")
                            edit_stop = gr.Button("Cancel", elem_id="edit-cancel")
                    with gr.Column():
                        with gr.Row():
                            edited = gr.Video(label="Edited", height=300, interactive=False, autoplay=True, loop=True, elem_id="edit-video")
                            source = gr.Video(label="Source", height=300, interactive=False, autoplay=True, loop=True, elem_id="edit-source")
                        edit_files = gr.File(label="Download (mp4 and JSON sidecar)", file_count="multiple", interactive=False, elem_id="edit-files")
                        edit_status = gr.Textbox(label="Status", interactive=False, elem_id="edit-status")
                edit_run.click(self.start_edit, None, [edited, source, edit_files, edit_status], queue=False, api_visibility="private").then(
                    self.edit,
                    [edit_upload, edit_box, edit_first, edit_prompt, edit_tracks, edit_engine, edit_strength, edit_steps, edit_seed, edit_speed, *edit_adapters],
                    [edited, source, edit_files, edit_status],
                    concurrency_id="device",
                    concurrency_limit=self.options.workers,
                    api_visibility="private",
                    show_progress_on=edited,
                )
                edit_stop.click(self.cancel, None, None, queue=False, api_visibility="private")
                edit_speed.change(lambda picked: self.speed_controls(picked)[0], [edit_speed], [edit_steps], queue=False, api_visibility="private")
        return demo

    def launch(self, routes: list[Any] | None = None) -> tuple[gr.Blocks, str]:
        """Start serving in the background, with `routes` (the video API's mount) ahead of the
        page's own; returns the page and its URL."""
        from starlette.middleware import Middleware

        gradio_dir = use_gradio_folder(self.output_dir)
        demo = self.build()
        demo.queue(max_size=self.options.max_queue, default_concurrency_limit=1)
        # system fonts: the page fetches nothing from third parties (and works offline)
        theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
        key = self.options.api_key
        try:
            _, url, _ = demo.launch(
                server_name=self.options.host,
                server_port=self.options.port,
                share=False,
                prevent_thread_lock=True,
                allowed_paths=[str(self.output_dir)],
                max_file_size=f"{self.options.max_upload_mb}mb",
                quiet=True,
                ssr_mode=False,
                footer_links=[],
                theme=theme,
                # with a key the page asks for it too (any user name): the page can run jobs as the API can
                auth=None if key is None else (lambda _user, password: hmac.compare_digest(password.encode(), key.encode())),
                # uploads checked and files served on the server, whatever the page's picker allows
                app_kwargs={"middleware": [Middleware(UploadGuard, upload_dir=gradio_dir)], "routes": list(routes or [])},
            )
        except OSError as exc:
            raise InputError(f"cannot listen on {self.options.host}:{self.options.port} ({exc})".replace("\n", " "), "pass another --port, or stop what uses it") from None
        return demo, url
