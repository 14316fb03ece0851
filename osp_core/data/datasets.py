"""Training datasets over annotation entries: frame sampling, resize/crop, joint image draws,
and skip-and-count of samples that cannot be read.

Randomness (start frame, caption choice, joint images) comes from a generator seeded by
(seed, epoch, index), so a sample is the same whatever the worker count and after a resume.
A sample that cannot be read is replaced by the next readable one and reported in the item's
`skipped` list as (path, reason); user files are never modified. With an `is_cached` predicate,
clips whose latents a feature cache already holds are not decoded at all (`video` is None).
Bucketed data (`buckets.plan_clips`) gives each clip its own `ClipSpec`; a replacement is then
taken from the clip's own bucket, so a batch keeps one shape.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from ..errors import InputError
from ..io.video import read_video, resize_center_crop
from .annotations import Entry

MAX_CONSECUTIVE_SKIPS = 64


@dataclass(frozen=True)
class ClipSpec:
    """How a video sample is cut: `frames` frames every `stride` source frames, resized and
    center-cropped to (height, width)."""

    frames: int
    stride: int
    height: int
    width: int
    random_start: bool = True


def probe_num_frames(path: Path) -> int:
    """Frame count from the container metadata (0 when the container does not say)."""
    import av

    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            return int(streams[0].frames) if streams else 0
    except (av.FFmpegError, OSError, ValueError):
        return 0


def _shape(spec: ClipSpec) -> tuple[int, int, int]:
    return spec.frames, spec.height, spec.width


def _to_unit_range(frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float32 in [-1, 1]."""
    return frames.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _rng(seed: int, epoch: int, index: int, salt: str = "") -> random.Random:
    # a stable per-sample generator (Python's hash() of strings is salted per process, so avoid it)
    digest = hashlib.sha1(f"{seed}:{epoch}:{index}:{salt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def clip_key(path: Path, start: int, spec: ClipSpec) -> str:
    """A content key for a decoded clip: the file (size + mtime) and the exact window taken."""
    try:
        stat = path.stat()
        ident = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    except OSError:
        ident = [str(path), 0, 0]
    payload = json.dumps([*ident, start, spec.frames, spec.stride, spec.height, spec.width])
    return hashlib.sha1(payload.encode()).hexdigest()


class VideoClipDataset(Dataset):
    """Video (and optionally caption and joint-image) samples from annotation entries.

    Index with an int or with `(epoch, index)` (what `GlobalBatchSampler` yields). Items are
    dicts: `video` (3, T, H, W) in [-1, 1], `caption`, `key` (cache key of the clip), `index`
    and `start` (entry and first frame taken), `skipped` [(path, reason)], and with
    `use_image_num > 0` also `images` (3, N, H, W) and `image_captions`.

    `is_cached(key)` says whether a clip's latents are already cached: such a clip is not
    decoded and its `video` is None (decoding is most of a cached training step's data cost).
    Clips whose frames double as the joint images are always decoded.
    """

    def __init__(
        self,
        entries: Sequence[Entry],
        spec: ClipSpec,
        seed: int = 0,
        use_image_num: int = 0,
        image_entries: Sequence[Entry] | None = None,
        is_cached: Callable[[str], bool] | None = None,
        specs: Sequence[ClipSpec] | None = None,
    ) -> None:
        if not entries:
            raise InputError("the dataset is empty", "check --data")
        if specs is not None and len(specs) != len(entries):
            raise ValueError(f"{len(specs)} clip specs for {len(entries)} entries")
        self.entries = list(entries)
        self.spec = spec
        self.specs = list(specs) if specs is not None else None
        self.seed = seed
        self.use_image_num = use_image_num
        self.image_entries = list(image_entries or [])
        self.is_cached = is_cached
        shapes = [_shape(self.spec_of(i)) for i in range(len(self.entries))] if specs is not None else []
        ids = {shape: n for n, shape in enumerate(sorted(set(shapes), reverse=True))}
        self.groups: list[int] | None = [ids[s] for s in shapes] if len(ids) > 1 else None
        """The bucket of each clip when the clips have several shapes (what `GlobalBatchSampler`
        draws batches from), else None."""

    def __len__(self) -> int:
        return len(self.entries)

    def spec_of(self, index: int) -> ClipSpec:
        """How entry `index` is cut (its bucket's spec for bucketed data)."""
        return self.specs[index] if self.specs is not None else self.spec

    def _candidates(self, index: int) -> list[int]:
        """Entry `index`, then the entries that may replace it when it cannot be read: the next
        ones, in its own bucket when the clips have several shapes."""
        n = len(self.entries)
        ring = [(index + offset) % n for offset in range(n)]
        if self.groups is not None:
            ring = [i for i in ring if self.groups[i] == self.groups[index]]
        return ring[:MAX_CONSECUTIVE_SKIPS]

    # --- reading -----------------------------------------------------------------------------
    def _clip_window(self, entry: Entry, spec: ClipSpec, rng: random.Random) -> tuple[int, int | None]:
        """(start frame, end bound) of the clip to take, from the annotation's num_frames or
        else the container metadata."""
        span = (spec.frames - 1) * spec.stride + 1
        if entry.is_image:
            raise InputError(f"'{entry.path}' is an image, not a video", "put images in the image list (--image-data)")
        first, last = entry.start, entry.end
        total = entry.num_frames or probe_num_frames(entry.path)
        if last is None and total > 0:
            last = total
        elif last is not None and entry.num_frames:
            last = min(last, entry.num_frames)
        start = first
        if last is not None:
            room = last - first - span
            if room < 0:
                raise InputError(f"too short: {last - first} frames, {span} needed", "lower --frames/--stride or drop the clip")
            if spec.random_start and room > 0:
                start = first + rng.randint(0, room)
        return start, last

    def _decode_clip(self, entry: Entry, spec: ClipSpec, start: int, last: int | None) -> torch.Tensor:
        """Frames uint8 (T, H, W, 3) from `start`, after resize/crop."""
        video = read_video(entry.path, num_frames=spec.frames, stride=spec.stride, start=start, end=last)
        if video.num_frames < spec.frames:
            raise InputError(f"too short: {video.num_frames} of {spec.frames} frames after frame {start}", "lower --frames/--stride or drop the clip")
        return resize_center_crop(video.frames, (spec.height, spec.width))

    def read_clip(self, index: int, start: int) -> torch.Tensor:
        """The clip of entry `index` from frame `start`, (3, T, H, W) in [-1, 1]: for an item
        that came without its video and whose cached latents then turned out unreadable."""
        entry = self.entries[index]
        return _to_unit_range(self._decode_clip(entry, self.spec_of(index), start, entry.end))

    def _read_image(self, entry: Entry, spec: ClipSpec) -> torch.Tensor:
        image = read_video(entry.path, num_frames=1)
        return resize_center_crop(image.frames, (spec.height, spec.width))

    def _draw_images(self, rng: random.Random, spec: ClipSpec, clip: torch.Tensor, clip_id: str, caption: str, skipped: list) -> tuple[torch.Tensor, list[str], list[str]]:
        """`use_image_num` images (N, H, W, 3), their captions and cache keys."""
        n = self.use_image_num
        if not self.image_entries:
            # no image list: images are random frames of the video itself, with its caption
            picks = [rng.randrange(clip.shape[0]) for _ in range(n)]
            keys = [hashlib.sha1(f"{clip_id}:frame{p}".encode()).hexdigest() for p in picks]
            return clip[picks], [caption] * n, keys
        image_spec = ClipSpec(1, 1, spec.height, spec.width, False)
        images, captions, keys = [], [], []
        attempts = 0
        while len(images) < n:
            attempts += 1
            if attempts > n + MAX_CONSECUTIVE_SKIPS:
                raise InputError("no readable image in the image list", "check --image-data")
            entry = self.image_entries[rng.randrange(len(self.image_entries))]
            try:
                images.append(self._read_image(entry, spec))
            except Exception as exc:  # any unreadable file is skipped and counted, never fatal
                skipped.append((str(entry.path), _reason(exc)))
                continue
            captions.append(rng.choice(entry.captions))
            keys.append(clip_key(entry.path, 0, image_spec))
        return torch.cat(images, dim=0), captions, keys

    def _skips_decoding(self, key: str) -> bool:
        images_from_clip = self.use_image_num > 0 and not self.image_entries
        return self.is_cached is not None and not images_from_clip and self.is_cached(key)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        skipped: list[tuple[str, str]] = []
        for current in self._candidates(index):
            entry, spec = self.entries[current], self.spec_of(current)
            rng = _rng(self.seed, epoch, current)
            try:
                start, last = self._clip_window(entry, spec, rng)
                key = clip_key(entry.path, start, spec)
                # the cached latents were made from this exact window, so it was readable then
                frames = None if self._skips_decoding(key) else self._decode_clip(entry, spec, start, last)
            except Exception as exc:  # unreadable / too short: report and take the next sample
                skipped.append((str(entry.path), _reason(exc)))
                continue
            caption = rng.choice(entry.captions)
            out: dict[str, Any] = {
                "video": None if frames is None else _to_unit_range(frames),
                "caption": caption,
                "key": key,
                "index": current,
                "start": start,
                "skipped": skipped,
            }
            if self.use_image_num > 0:
                images, image_captions, image_keys = self._draw_images(rng, spec, frames, key, caption, skipped)
                out["images"] = _to_unit_range(images)
                out["image_captions"] = image_captions
                out["image_keys"] = image_keys
            return out
        raise InputError(
            f"{len(skipped)} samples in a row could not be read (last: {skipped[-1][0]}: {skipped[-1][1]})",
            "check the data list, the media root and --frames/--stride",
        )


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep captions/keys as lists and concatenate the skip reports.

    `video` is one (B, 3, T, H, W) tensor, or a list with None for the clips that were not
    decoded (their latents are cached)."""
    videos = [i["video"] for i in items]
    batch: dict[str, Any] = {
        "video": torch.stack(videos) if all(v is not None for v in videos) else videos,
        "caption": [i["caption"] for i in items],
        "key": [i["key"] for i in items],
        "index": [i["index"] for i in items],
        "start": [i["start"] for i in items],
        "skipped": [s for i in items for s in i["skipped"]],
    }
    if "images" in items[0]:
        batch["images"] = torch.stack([i["images"] for i in items])
        batch["image_captions"] = [i["image_captions"] for i in items]
        batch["image_keys"] = [i["image_keys"] for i in items]
    return batch


class GlobalBatchSampler(Sampler):
    """Endless (epoch, index) stream of one data-parallel rank, cut from one global stream.

    The global stream is the concatenation of seeded per-epoch orders (no padding), so global
    position p is sample `order(p // L)[p % L]` whatever the rank count (L: the epoch length).
    An optimizer step takes the next `batch_size x accumulation x ranks` positions; micro-batch
    m of rank r holds positions `step_start + (m x ranks + r) x batch_size + [0, batch_size)`.
    A run resumed on another rank count (same global batch) therefore sees the samples an
    uninterrupted run would have seen. `start` is the number of global positions already consumed.

    With `groups` (the bucket of each item), an epoch is a seeded shuffle of batch_size-long
    chunks, each from one bucket (a bucket's shuffled items, the last chunk filled up from its
    start): every micro-batch then holds one bucket, and the stream depends on the seed and
    batch_size only, so it stays the same across rank counts and resumes that keep batch_size.
    """

    def __init__(
        self, num_items: int, batch_size: int, accumulation: int = 1, num_replicas: int = 1, rank: int = 0, seed: int = 0, start: int = 0, shuffle: bool = True,
        groups: Sequence[int] | None = None,
    ) -> None:  # fmt: skip
        if num_items < 1:
            raise InputError("the dataset is empty", "check --data")
        if groups is not None and len(groups) != num_items:
            raise ValueError(f"{len(groups)} groups for {num_items} items")
        self.num_items, self.batch_size, self.accumulation = num_items, batch_size, accumulation
        self.num_replicas, self.rank, self.seed, self.start, self.shuffle = num_replicas, rank, seed, start, shuffle
        self.members: list[list[int]] | None = None
        self.epoch_length = num_items
        if groups is not None:
            self.members = [[i for i, g in enumerate(groups) if g == group] for group in sorted(set(groups))]
            self.epoch_length = sum(-(-len(m) // batch_size) * batch_size for m in self.members)
        self._cache: tuple[int, list[int]] | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.accumulation * self.num_replicas

    def _order(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            if self.members is not None:
                order = self._bucketed_order(generator)
            elif self.shuffle:
                order = torch.randperm(self.num_items, generator=generator).tolist()
            else:
                order = list(range(self.num_items))
            self._cache = (epoch, order)
        return self._cache[1]

    def _bucketed_order(self, generator: torch.Generator) -> list[int]:
        chunks: list[list[int]] = []
        size = self.batch_size
        for members in self.members or []:
            shuffled = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()] if self.shuffle else members
            filled = [shuffled[k % len(shuffled)] for k in range(-(-len(shuffled) // size) * size)]
            chunks.extend(filled[k : k + size] for k in range(0, len(filled), size))
        picks = torch.randperm(len(chunks), generator=generator).tolist() if self.shuffle else range(len(chunks))
        return [index for pick in picks for index in chunks[pick]]

    def item_at(self, position: int) -> tuple[int, int]:
        """(epoch, dataset index) at global position `position`."""
        epoch, offset = divmod(position, self.epoch_length)
        return epoch, self._order(epoch)[offset]

    def position(self, consumed: int) -> tuple[int, int]:
        """(epoch, index in epoch) after `consumed` global positions."""
        return divmod(consumed, self.epoch_length)

    def step_positions(self, step_start: int, micro: int) -> list[int]:
        """Global positions of this rank's micro-batch `micro` of the step starting at `step_start`."""
        first = step_start + (micro * self.num_replicas + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step_start = self.start
        while True:
            for micro in range(self.accumulation):
                for position in self.step_positions(step_start, micro):
                    yield self.item_at(position)
            step_start += self.global_batch
