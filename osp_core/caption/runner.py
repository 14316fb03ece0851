"""`run_caption`: inputs -> clips -> filters -> captions -> journal -> annotation JSON.

Order of work per rank: list the media files (every rank the same sorted list) and take every
`world_size`-th one; probe them all (cheap, gives the clip list and the progress total); drop
clips on metadata; decode each video once for all its clips (motion score, then the captioner's
frames) in a background thread while the model captions the previous batch; write every result
to the journal as it comes. At the end rank 0 waits for the others and merges all journals.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from ..device import parse_dtype, select_device
from ..errors import InputError, OSPError
from ..io import ensure_writable_dir
from ..io.atomic import remove_empty_folders
from ..io.paths import folders_to_create
from ..io.probe import probe
from ..parallel.layout import ParallelLayout, process_group, rank_device
from . import defaults
from . import journal as jr
from .captioner import FRAMES_AS, CaptionModel, CaptionRequest
from .clips import Clip, split
from .decode import decode_clips
from .filters import FilterConfig, metadata_drop_reason, motion_drop_reason
from .language import is_english
from .motion import motion_score
from .sources import MediaItem, collect, default_root, relative_to_root
from .templates import FIELD_LIST_KEYS, PromptTemplate, load_template

# Ranks finish their shards at different times; the final barrier must outwait the slowest.
BARRIER_TIMEOUT = timedelta(days=7)
# Give up when this many batches in a row fail before any succeeded: the model itself is broken.
MAX_FAILED_BATCHES_AT_START = 2


@dataclass
class CaptionJob:
    """Everything one `osp caption` run needs; see the CLI help for each option."""

    inputs: list[Path]
    output: Path
    images: bool = False
    root: Path | None = None
    clip_frames: int | None = None
    clip_stride: int | None = None
    filters: FilterConfig = field(default_factory=FilterConfig)
    model: str = defaults.DEFAULT_CAPTION_MODEL
    device: str | None = None
    dtype: str | None = None
    num_frames: int = defaults.NUM_FRAMES
    batch_size: int = defaults.BATCH_SIZE
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    frame_size: int = defaults.FRAME_SIZE
    prompt: str | None = None
    frames_as: str = "auto"
    resume: bool = False
    overwrite: bool = False

    def validate(self) -> None:
        """`InputError` for option values that cannot work."""
        for name in ("num_frames", "batch_size", "max_new_tokens", "frame_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}", "pass a positive number")
        if self.clip_stride is not None and self.clip_frames is None:
            raise InputError("--clip-stride needs --clip-frames", "pass --clip-frames N to split videos into clips")
        if self.images and self.clip_frames is not None:
            raise InputError("--clip-frames splits videos, but --images captions images", "drop one of them")
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite exclude each other", "pass one of them")
        if self.frames_as not in FRAMES_AS:
            raise InputError(f"unknown --frames-as '{self.frames_as}'", "use auto, images or video")
        if self.output.suffix.lower() != ".json":
            raise InputError(f"output '{self.output}' is not a .json file", "name the annotation file like annotations.json")
        self.filters.validate()
        split(1, self.clip_frames, self.clip_stride)  # validates the clip options

    def settings(self, root: Path) -> dict[str, Any]:
        """The options that shape the results; a resume must use the same ones."""
        return {
            "images": self.images,
            "root": str(root),
            "clip_frames": self.clip_frames,
            "clip_stride": self.clip_stride,
            "filters": self.filters.as_dict(),
            "model": self.model,
            "num_frames": self.num_frames,
            "max_new_tokens": self.max_new_tokens,
            "frame_size": self.frame_size,
            "prompt": self.prompt,
        }


@dataclass
class CaptionSummary:
    """Results over the whole job (all runs and ranks): what the CLI prints and `--json` emits."""

    output: str
    root: str
    caption_model: str
    world_size: int
    clips: int = 0
    captioned: int = 0
    not_english: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)
    resumed: int = 0
    processed: int = 0
    seconds: float = 0.0
    is_main: bool = True

    @property
    def clips_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "root": self.root,
            "caption_model": self.caption_model,
            "world_size": self.world_size,
            "clips": self.clips,
            "captioned": self.captioned,
            "not_english": self.not_english,
            "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()),
            "failed": list(self.failed),
            "failed_total": len(self.failed),
            "resumed": self.resumed,
            "processed": self.processed,
            "seconds": round(self.seconds, 3),
            "clips_per_second": round(self.clips_per_second, 3),
        }


class ProgressHook(Protocol):
    """Progress callbacks (the CLI draws a bar); `phase` starts a stage of `total` steps."""

    def phase(self, name: str, total: int, completed: int = 0) -> None: ...

    def advance(self, status: str) -> None: ...


class _NoProgress:
    def phase(self, name: str, total: int, completed: int = 0) -> None:
        pass

    def advance(self, status: str) -> None:
        pass


def _barrier(layout: ParallelLayout) -> None:
    if layout.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _gather(layout: ParallelLayout, value: Any) -> list[Any]:
    """`value` of every rank, by rank."""
    if layout.world_size == 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * layout.world_size
    dist.all_gather_object(out, value)
    return out


def _prefetch(iterator: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run `iterator` in a thread, `depth` items ahead (decoding overlaps captioning)."""
    items: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(end)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            items.put(exc)

    thread = threading.Thread(target=produce, name="osp-caption-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # No decode thread may outlive the job: a daemon thread still inside PyAV when the
        # interpreter exits is killed mid-call.
        thread.join(timeout=10)


class _Run:
    """One rank's share of a job."""

    def __init__(self, job: CaptionJob, layout: ParallelLayout, progress: ProgressHook) -> None:
        self.job = job
        self.layout = layout
        self.progress = progress
        self.output = job.output.expanduser().absolute()
        self.journal_dir = jr.journal_dir(self.output)
        self.writer: jr.JournalWriter | None = None
        self.processed = 0
        self.resumed = 0
        self.batches_ok = 0
        self.batches_failed_in_a_row = 0
        self.start_over = True  # set by check_output: False when resuming an existing journal
        self.created_folders: list[Path] = []

    # ---- set-up -------------------------------------------------------------------------
    def check_output(self) -> None:
        """Refuse an output that cannot be written, or that exists without --resume/--overwrite.

        Removes nothing: old outputs go only in `clear_old_outputs`, once the whole run has
        been validated, so a typo in another option never costs the previous annotations.
        """
        if self.output.is_dir():
            raise InputError(f"output '{self.job.output}' is a folder", "pass a .json file path")
        if self.journal_dir.exists() and not self.journal_dir.is_dir():
            raise InputError(f"'{self.journal_dir}' (where the journal of '{self.job.output}' goes) is a file", "move that file away or pick another output name")
        self.created_folders = _prepare_output_folder(self.output.parent)
        exists = self.output.exists() or bool(jr.read_journal(self.journal_dir).records)
        if exists and not (self.job.resume or self.job.overwrite):
            raise InputError(f"output '{self.job.output}' already exists", "pass --resume to continue it or --overwrite to start over")
        # A journal without clip records (a run that stopped before its first clip) holds nothing to keep.
        self.start_over = self.job.overwrite or not exists

    def clear_old_outputs(self) -> None:
        """With --overwrite (or a journal holding no clips), rank 0 removes the old annotation
        file and journal, after every rank has validated its run and before any rank writes."""
        _barrier(self.layout)  # every rank got through validation (a failing rank never gets here)
        if self.start_over and self.layout.is_main:
            shutil.rmtree(self.journal_dir, ignore_errors=True)
            self.output.unlink(missing_ok=True)
        _barrier(self.layout)

    def remove_created_folders(self) -> None:
        """Undo `check_output`'s folder creation after a run refused during validation."""
        remove_empty_folders(self.created_folders)

    def templates(self) -> tuple[PromptTemplate, PromptTemplate | None]:
        """The prompt for every item, and (images, no --prompt) the OCR prompt for items with OCR text."""
        kind = "image" if self.job.images else "video"
        main = load_template(self.job.prompt or kind)
        if main.kind != kind:
            raise InputError(f"prompt template '{main.name}' is for {main.kind}s, but this run captions {kind}s", f"pick a kind: {kind} template")
        ocr = load_template("image_ocr") if self.job.images and self.job.prompt is None else None
        return main, ocr

    def check_fields(self, template: PromptTemplate, items: list[MediaItem]) -> None:
        """Refuse a template whose `{}` fields some inputs cannot fill, before the model loads
        (every such clip would fail). The fields come only from list-file entries."""
        for name in template.fields:
            lacking = [item for item in items if not dict(item.prompt_values).get(name)]
            if lacking:
                key = FIELD_LIST_KEYS[name]
                raise InputError(
                    f"prompt template '{template.name}' needs '{name}' text, but {len(lacking)} of {len(items)} inputs have none (first: '{lacking[0].path}')",
                    f'list the files in a .json/.jsonl list file with a "{key}" value per entry, or pick another --prompt',
                )

    # ---- records ------------------------------------------------------------------------
    def _record(self, clip: Clip, status: str, **fields: Any) -> None:
        assert self.writer is not None
        self.writer.record(clip.key, clip.path, status, **({} if clip.is_image else {"frame_idx": clip.frame_idx}), **fields)
        self.processed += 1
        self.progress.advance(status)

    def annotation(self, clip: Clip, caption: str, score: float | None, model_name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": clip.path, "cap": caption}
        if not clip.is_image:
            entry.update(
                frame_idx=clip.frame_idx,
                fps=round(clip.info.fps, 3),
                num_frames=clip.num_frames,
            )
        entry["resolution"] = {"height": clip.info.height, "width": clip.info.width}
        if not clip.is_image:
            entry["motion_score"] = None if score is None else round(score, 4)
        entry["caption_model"] = model_name
        entry["is_english"] = is_english(caption)
        return entry

    # ---- stages -------------------------------------------------------------------------
    def plan(self, items: list[MediaItem], root: Path, done: set[str]) -> tuple[list[tuple[MediaItem, list[Clip]]], list[dict[str, Any]]]:
        """Probe every item and split videos into clips: the clips left to decode, and the
        records decided on metadata alone (unreadable files, dropped clips) for the journal."""
        self.progress.phase("probing", len(items))
        planned: list[tuple[MediaItem, list[Clip]]] = []
        early: list[dict[str, Any]] = []
        total = 0
        for item in items:
            path = relative_to_root(item.path, root)
            self.progress.advance("probed")
            try:
                info = probe(item.path, image=self.job.images)
            except InputError as exc:  # unreadable: reported and skipped, never touched
                early.append(dict(key=path, path=path, status=jr.FAILED, reason=exc.message, scope="file"))
                total += 1
                continue
            ranges = [(0, 1)] if self.job.images else split(info.num_frames, self.job.clip_frames, self.job.clip_stride)
            clips = [Clip(item.path, path, s, e, info, self.job.images, item.prompt_values) for s, e in ranges]
            total += len(clips)
            todo = []
            for clip in clips:
                if clip.key in done:
                    self.resumed += 1
                    continue
                reason = metadata_drop_reason(clip, self.job.filters, self.job.clip_frames)
                if reason:
                    where = {} if clip.is_image else {"frame_idx": clip.frame_idx}
                    early.append(dict(key=clip.key, path=clip.path, status=jr.DROPPED, reason=reason, **where))
                else:
                    todo.append(clip)
            if todo:
                planned.append((item, todo))
        self.processed += len(early)
        self.progress.phase("captioning", total, completed=total - sum(len(c) for _, c in planned))
        return planned, early

    def frames(self, planned: list[tuple[MediaItem, list[Clip]]]) -> Iterator[tuple[Clip, Any, float | None]]:
        """(clip, frames or failure reason, motion score) for every planned clip, in decode order."""
        with_motion = not self.job.images and self.job.filters.min_motion > 0
        for item, clips in planned:
            for clip, result in decode_clips(item.path, clips, self.job.num_frames, self.job.frame_size, with_motion):
                if isinstance(result, str):
                    yield clip, result, None
                    continue
                score = motion_score(result.gray) if result.gray is not None else None
                yield clip, result.frames, score

    def caption_batch(self, batch: list[tuple[Clip, list, float | None]], captioner: CaptionModel, templates: tuple[PromptTemplate, PromptTemplate | None]) -> None:
        assert self.writer is not None
        requests, ready = [], []
        for clip, frames, score in batch:
            values = dict(clip.prompt_values)
            # v1.1.0: images with a rough caption and OCR text get the OCR prompt.
            use_ocr = templates[1] is not None and values.get("ocr") and values.get("caption")
            template = templates[1] if use_ocr else templates[0]
            try:
                requests.append(CaptionRequest(frames, template.render(values)))
                ready.append((clip, score))
            except InputError as exc:
                self._record(clip, jr.FAILED, reason=exc.message)
        if not requests:
            return
        try:
            captions = captioner.caption(requests)
            if len(captions) != len(requests):
                raise RuntimeError(f"got {len(captions)} captions for {len(requests)} clips")
        except Exception as exc:  # one bad batch (OOM, odd frames) must not end a long job
            self.batches_failed_in_a_row += 1
            reason = f"captioning failed: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
            for clip, _ in ready:
                self._record(clip, jr.FAILED, reason=reason)
            self.writer.sync()
            if self.batches_ok == 0 and self.batches_failed_in_a_row >= MAX_FAILED_BATCHES_AT_START:
                raise OSPError(f"the captioner fails on every batch ({reason})", "run with OSP_DEBUG=1 for the traceback, or check --model") from exc
            return
        self.batches_ok += 1
        self.batches_failed_in_a_row = 0
        for (clip, score), caption in zip(ready, captions, strict=True):
            if caption.strip():
                self._record(clip, jr.CAPTIONED, annotation=self.annotation(clip, caption.strip(), score, captioner.name))
            else:
                self._record(clip, jr.FAILED, reason="the model returned an empty caption")
        self.writer.sync()

    def caption_all(self, planned: list[tuple[MediaItem, list[Clip]]], captioner: CaptionModel, templates: tuple[PromptTemplate, PromptTemplate | None]) -> None:
        batch: list[tuple[Clip, list, float | None]] = []
        for clip, frames, score in _prefetch(self.frames(planned), depth=2 * self.job.batch_size):
            if isinstance(frames, str):
                self._record(clip, jr.FAILED, reason=frames)
                continue
            reason = motion_drop_reason(score, self.job.filters)
            if reason:
                self._record(clip, jr.DROPPED, reason=reason, motion_score=round(score, 4))
                continue
            batch.append((clip, frames, score))
            if len(batch) >= self.job.batch_size:
                self.caption_batch(batch, captioner, templates)
                batch = []
        if batch:
            self.caption_batch(batch, captioner, templates)


def _summary(state: jr.JournalState, output: Path, root: Path, model: str, world: int) -> CaptionSummary:
    summary = CaptionSummary(str(output), str(root), model, world)
    dropped: Counter[str] = Counter()
    for rec in state.records.values():
        summary.clips += 1
        if rec["status"] == jr.CAPTIONED:
            summary.captioned += 1
            summary.not_english += not rec["annotation"].get("is_english", True)
        elif rec["status"] == jr.DROPPED:
            dropped[rec.get("reason", "unknown")] += 1
        else:
            failure = {"path": rec["path"], "reason": rec.get("reason", "unknown")}
            if "frame_idx" in rec:
                failure["frame_idx"] = rec["frame_idx"]
            summary.failed.append(failure)
    summary.dropped = dict(sorted(dropped.items()))
    summary.failed.sort(key=lambda f: (f["path"], f.get("frame_idx", "")))
    return summary


def _ranks_joined(layout: ParallelLayout) -> contextlib.AbstractContextManager:
    """The process group for the block under torchrun (torch loads only then)."""
    if layout.world_size == 1:
        return contextlib.nullcontext()
    import torch

    return process_group(torch.device("cpu"), timeout=BARRIER_TIMEOUT)


def run_caption(job: CaptionJob, captioner: CaptionModel | None = None, progress: ProgressHook | None = None) -> CaptionSummary:
    """Caption `job.inputs` into `job.output`; under torchrun each rank takes its shard.

    `captioner` replaces the model named by `job.model` (tests pass their own). Returns the
    summary of the whole job on rank 0 (other ranks get `is_main=False`).
    """
    started = time.monotonic()
    job.validate()
    progress = progress or _NoProgress()
    layout = ParallelLayout.launched()
    run = _Run(job, layout, progress)
    # gloo even on GPUs: ranks only meet at the final barrier (no tensors are exchanged), and
    # gloo waits on the CPU without the NCCL watchdog
    with _ranks_joined(layout):
        # Validate everything (output, inputs, templates, model) before touching any output:
        # a refused run leaves the previous annotations and journal as they were.
        try:
            run.check_output()
            items = collect(job.inputs, job.images)
            root = job.root.expanduser().resolve() if job.root else default_root(job.inputs, items)
            if not root.is_dir():
                raise InputError(f"dataset root '{job.root}' is not a folder", "pass an existing folder with --root")
            for item in items:  # every path must be expressible relative to the root
                relative_to_root(item.path, root)
            settings = job.settings(root)
            state = jr.JournalState() if run.start_over else jr.read_journal(run.journal_dir)
            jr.check_settings(state, settings, job.output)
            templates = run.templates()
            run.check_fields(templates[0], items)
            shard = items[layout.rank :: layout.world_size]
            planned, early = run.plan(shard, root, state.done)
            if planned and captioner is None:
                captioner = _load_captioner(job, layout)
        except Exception:
            run.remove_created_folders()
            raise
        run.clear_old_outputs()
        run.writer = jr.JournalWriter(run.journal_dir, layout.rank)
        try:
            run.writer.header(settings, layout.world_size)
            for record in early:
                run.writer.record(**record)
            if planned:
                run.caption_all(planned, captioner, templates)
        finally:
            run.writer.close()
        counts = _gather(layout, (run.resumed, run.processed))  # also the barrier: every shard is done
        if not layout.is_main:
            # Leave with rank 0: a rank that tears down its gloo group and exits while rank 0 is
            # still connected can abort in its exit handlers (rarely, under load).
            _barrier(layout)
            return CaptionSummary(str(run.output), str(root), job.model, layout.world_size, is_main=False)
        final = jr.read_journal(run.journal_dir)
        jr.write_annotations(run.output, jr.annotations(final))
        _barrier(layout)
        summary = _summary(final, run.output, root, job.model, layout.world_size)
        summary.resumed = sum(c[0] for c in counts)
        summary.processed = sum(c[1] for c in counts)
        summary.seconds = time.monotonic() - started
        return summary


def _prepare_output_folder(folder: Path) -> list[Path]:
    """Create `folder` if needed and prove a file can be made in it, so an output path that
    cannot be written fails in one line before the model loads (not with an OSError at the
    first journal line). Returns the folders it created, deepest first."""
    missing = folders_to_create(folder)
    existing = missing[-1].parent if missing else folder
    if not existing.is_dir():  # e.g. `-o afile/ann.json` where afile is a file
        raise InputError(f"cannot create output folder '{folder}': '{existing}' is a file", "choose an output path whose folders are folders")
    try:
        ensure_writable_dir(folder)  # creates it and writes a probe file
    except InputError:
        remove_empty_folders(missing)
        raise
    return missing


def _load_captioner(job: CaptionJob, layout: ParallelLayout) -> CaptionModel:
    from .captioner import Captioner

    device = select_device(job.device)
    if layout.world_size > 1:
        device = rank_device(device, layout.local_rank)  # one accelerator per rank
    dtype = parse_dtype(job.dtype, device)
    frames_as = "images" if job.images else job.frames_as  # an image is one frame, never a video
    return Captioner.load(job.model, device, dtype, job.max_new_tokens, frames_as)
