"""How much memory a job needs, from its shapes, before any weights are loaded.

The estimates follow docs/speed-and-memory.md ("Memory: what fits in 24 GB and 80 GB") and the measurements
in benchmarks/README.md: a VAE pass holds a few activations of its widest stage at full
resolution (encode ~4, decode ~7.5 of them, measured on the full-size v1.1.0 VAE), tiling caps
their extent at one tile, and text-to-video sampling runs in phases that never overlap (T5,
then denoising with 2 x num_videos samples under guidance, then VAE decoding). They are
estimates, meant to refuse what cannot fit (a 100000x100000 frame) with the size that would,
not to predict the last megabyte. `available_memory` reads what the device has free (RAM
from /proc/meminfo or sysconf on CPU, `mem_get_info` on CUDA / NPU), and `oom_as_error` turns
an allocation failure that still happens into one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InsufficientMemoryError

if TYPE_CHECKING:  # torch loads inside the functions: VAEShape and the estimates serve torch-free plans
    import torch

# Activations of a VAE pass, in units of one tensor of the widest (first) stage at full size:
# hidden_size x mult[0] channels x T x H x W. Measured with benchmarks/vae.py on the v1.1.0 VAE
# in fp32 (encode 2186 MB at 17x256x256 -> 3.8; decode 4070 MB -> 7.1), rounded up.
VAE_ENCODE_ACTIVATIONS = 4.0
VAE_DECODE_ACTIVATIONS = 7.5
# Frames as they pass through a command, per pixel of a (T, H, W, 3) video: uint8 frames (1 B),
# float copies for resizing or [-1, 1] conversion and the model's output (4 B each, ~3 of them).
VIDEO_IO_BYTES_PER_VALUE = 13
# Transformer activations per block in flight, in hidden states (B x tokens x width): the
# feed-forward inner state (4), attention q/k/v/out (4), the residual and norm outputs (2).
TRANSFORMER_ACTIVATIONS = 10
# Values a T5 encoder layer keeps for backward per token when gradients flow through it (LoRA on
# the text encoder), counted with saved_tensors_hooks on transformers' T5 (tests/test_memory.py):
# 4 of d_model (norms, residuals), 5 of the attention's inner width (q, k, v, the attended
# output), 7 of d_ff for a gated feed-forward (its tanh GELU saves its intermediates) or 2
# ungated, and a row of scores per head (counted whole here, an upper bound).
T5_TRAIN_ACTIVATIONS = {"d_model": 4, "inner": 5, "d_ff_gated": 7, "d_ff": 2}
DEFAULT_TILE = (65, 256)  # CausalVideoVAE.enable_tiling's defaults: frames, pixels


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a job needs at its peak, and what they are made of."""

    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())


@dataclass(frozen=True)
class T2VMemoryEstimate:
    """The phases of `osp t2v sample`, which never overlap; the peak is the largest."""

    text_encoder: MemoryEstimate
    denoise: MemoryEstimate
    decode: MemoryEstimate

    @property
    def phases(self) -> dict[str, MemoryEstimate]:
        return {"text encoding": self.text_encoder, "denoising": self.denoise, "VAE decoding": self.decode}

    @property
    def peak(self) -> int:
        return max(phase.total for phase in self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda name: self.phases[name].total)


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KB', 3.2e10 -> '32.0 GB' (powers of 1000, as the tables of docs/speed-and-memory.md)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(count) < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def dtype_bytes(dtype: torch.dtype | str) -> int:
    """Bytes per element of `dtype` (a torch dtype or its name, e.g. "bfloat16")."""
    import torch

    return torch.empty((), dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype).element_size()


# --- model facts from files, without loading weights -------------------------------------------


def safetensors_numel(folder: str | Path, exclude_prefixes: tuple[str, ...] = ()) -> int:
    """Parameters stored in the .safetensors files of `folder`, read from their headers only.
    Tensors whose name starts with one of `exclude_prefixes` (e.g. a VAE checkpoint's
    training-loss weights, 'loss.') are not counted."""
    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, info in header.items():
            if name == "__metadata__" or name.startswith(exclude_prefixes):
                continue
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            total += count
    return total


@dataclass(frozen=True)
class VAEShape:
    """What a VAE's memory depends on, read from its config.json."""

    widest_channels: int
    temporal_compression: int
    spatial_compression: int
    latent_channels: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VAEShape:
        mult = list(config.get("hidden_size_mult", (1, 2, 4, 4)))
        hidden = int(config.get("hidden_size", 128))
        spatial = sum(1 for s in config.get("encoder_spatial_downsample", ("Downsample",) * 3) if s)
        temporal = sum(1 for s in config.get("encoder_temporal_downsample", ("", "x", "x")) if s)
        return cls(hidden * int(mult[0]), 2**temporal, 2**spatial, int(config.get("embed_dim", 4)))


# --- estimates -----------------------------------------------------------------------------


def vae_memory(
    config: Mapping[str, Any],
    op: str,
    frames: int,
    height: int,
    width: int,
    *,
    num_params: int,
    dtype: torch.dtype | str = "float32",
    tiled: bool = True,
    tile: tuple[int, int] = DEFAULT_TILE,
    batch: int = 1,
) -> MemoryEstimate:
    """Peak bytes of `op` ('encode', 'decode' or 'recon') of `batch` videos of `frames` x
    `height` x `width` pixels with the VAE of `config` (its config.json) holding `num_params`
    parameters in `dtype`. With `tiled`, activations cover at most one tile (`tile` = frames,
    pixels; tiles are used only when the video exceeds one, as CausalVideoVAE does)."""
    if op not in ("encode", "decode", "recon"):
        raise ValueError(f"op must be encode, decode or recon, got {op!r}")
    shape = VAEShape.from_config(config)
    size = dtype_bytes(dtype)
    t, h, w = frames, height, width
    if tiled:
        t, h, w = min(t, tile[0]), min(h, tile[1]), min(w, tile[1])
    one = batch * shape.widest_channels * t * h * w * size  # one activation of the widest stage
    video = batch * 3 * frames * height * width * VIDEO_IO_BYTES_PER_VALUE
    parts = {"weights": num_params * size}
    if op == "encode":
        parts["activations"] = int(VAE_ENCODE_ACTIVATIONS * one)
    else:  # decode, and recon's decode half, which runs while the input frames are still held
        parts["activations"] = int(VAE_DECODE_ACTIVATIONS * one)
    parts["frames"] = video if op != "recon" else video + batch * 3 * frames * height * width * 5
    return MemoryEstimate(parts)


def t2v_sample_memory(
    *,
    frames: int,
    height: int,
    width: int,
    num_videos: int = 1,
    guidance: bool = True,
    transformer_config: Mapping[str, Any],
    transformer_params: int,
    vae_config: Mapping[str, Any],
    vae_params: int,
    text_encoder_params: int,
    text_encoder_width: int = 4096,
    text_tokens: int = 300,
    dtype: torch.dtype | str = "bfloat16",
    tiled: bool = True,
    offload: bool = False,
) -> T2VMemoryEstimate:
    """Memory of each phase of text-to-video sampling (`osp t2v sample`) of `num_videos` videos
    of `frames` x `height` x `width` for one prompt.

    - text encoding: T5 weights and one prompt's states (the prompt and the negative prompt);
    - denoising: transformer (+ VAE unless `offload`) weights, and activations of a batch of
      2 x `num_videos` samples under classifier-free guidance (`guidance`), num_videos without;
      tokens = latent frames x (latent h / patch) x (latent w / patch) per sample; an
      `attention_mode` of "math" also holds the attention score matrices;
    - VAE decoding: the `num_videos` videos in one batch (transformer weights still on the
      device unless `offload`).
    With `offload` each phase holds only its own model's weights.
    """
    size = dtype_bytes(dtype)
    vae = VAEShape.from_config(vae_config)
    cfg = transformer_config
    patch = int(cfg.get("patch_size", 2))
    heads, head_dim = int(cfg.get("num_attention_heads", 16)), int(cfg.get("attention_head_dim", 72))
    latent_frames = (frames - 1) // vae.temporal_compression + 1
    latent_h, latent_w = height // vae.spatial_compression, width // vae.spatial_compression
    per_frame = (latent_h // patch) * (latent_w // patch)
    batch = num_videos * (2 if guidance else 1)
    hidden = batch * latent_frames * per_frame * heads * head_dim * size
    denoise = {
        "transformer weights": transformer_params * size,
        "activations": TRANSFORMER_ACTIVATIONS * hidden,
        # latents, noise prediction and the scheduler's history (PNDM keeps 4), in float32
        "latents": 8 * batch * vae.latent_channels * latent_frames * latent_h * latent_w * 4,
        "prompt states": batch * text_tokens * int(cfg.get("caption_channels", text_encoder_width)) * 4,
    }
    if cfg.get("attention_mode") == "math":  # no fused kernel: the score matrices exist
        denoise["attention scores"] = 2 * batch * heads * (latent_frames * per_frame**2 + per_frame * latent_frames**2) * size
    if not offload:
        denoise["VAE weights"] = vae_params * size
    decode = dict(vae_memory(vae_config, "decode", frames, height, width, num_params=vae_params, dtype=dtype, tiled=tiled, batch=num_videos).parts)
    decode["VAE weights"] = decode.pop("weights")
    if not offload:
        decode["transformer weights"] = transformer_params * size
    text = {
        "text encoder weights": text_encoder_params * size,
        # prompt + negative prompt through the widest layer (feed-forward ~2.5 x width), a few at once
        "activations": 2 * text_tokens * int(2.5 * text_encoder_width) * size * 4,
    }
    return T2VMemoryEstimate(MemoryEstimate(text), MemoryEstimate(denoise), MemoryEstimate(decode))


def t2v_train_memory(
    *,
    frames: int,
    height: int,
    width: int,
    batch_size: int,
    use_image_num: int = 0,
    transformer_config: Mapping[str, Any],
    transformer_params: int,
    num_blocks: int,
    vae_config: Mapping[str, Any],
    vae_params: int,
    text_encoder_params: int,
    text_encoder_width: int = 4096,
    text_tokens: int = 300,
    frozen_dtype: torch.dtype | str = "float32",
    text_dtype: torch.dtype | str = "float32",
    activation_dtype: torch.dtype | str = "float32",
    checkpoint_every: int = 0,
    shards: int = 1,
    sequence_parallel: int = 1,
    ema: bool = False,
    trained_params: int | None = None,
    text_encoder_config: Mapping[str, Any] | None = None,
    text_backward_rows: int = 0,
) -> MemoryEstimate:
    """Peak bytes on one rank of a `osp t2v train` step with `batch_size` clips of `frames` x
    `height` x `width` (plus `use_image_num` images each).

    - the transformer in fp32 with the gradients and two AdamW states (and an EMA copy) of its
      `trained_params` (None: all of them; a LoRA run: its adapters'), split over `shards`
      ranks under FSDP;
    - the frozen VAE (`frozen_dtype`) and T5 (`text_dtype`) weights;
    - activations: the larger of the VAE encoding the batch (no grad, untiled, as training runs
      it) and the transformer's activations kept for backward, `TRANSFORMER_ACTIVATIONS` hidden
      states per block over the sample's tokens (split over `sequence_parallel` ranks); with
      `checkpoint_every` = k > 0 every k-th block keeps only its input and one block is
      recomputed at a time;
    - with `text_backward_rows` > 0 (adapters on the text encoder), what the encoder's forward
      over that many captions keeps for backward (`text_encoder_train_activations` of
      `text_encoder_config`), held at the same time as the transformer's.
    """
    vae = VAEShape.from_config(vae_config)
    cfg = transformer_config
    patch = int(cfg.get("patch_size", 2))
    heads, head_dim = int(cfg.get("num_attention_heads", 16)), int(cfg.get("attention_head_dim", 72))
    latent_frames = (frames - 1) // vae.temporal_compression + 1 + use_image_num
    latent_h, latent_w = height // vae.spatial_compression, width // vae.spatial_compression
    per_frame = (latent_h // patch) * (latent_w // patch)
    tokens = -(-latent_frames * per_frame // sequence_parallel)
    hidden = batch_size * tokens * heads * head_dim * dtype_bytes(activation_dtype)
    if checkpoint_every > 0:
        kept = -(-num_blocks // checkpoint_every)  # checkpointed blocks: their input only
        stored = kept * hidden + (num_blocks - kept) * TRANSFORMER_ACTIVATIONS * hidden + TRANSFORMER_ACTIVATIONS * hidden
    else:
        stored = num_blocks * TRANSFORMER_ACTIVATIONS * hidden
    encode = vae_memory(vae_config, "encode", frames, height, width, num_params=vae_params, dtype=frozen_dtype, tiled=False, batch=batch_size)
    weights = -(-transformer_params * 4 // shards)  # fp32 master weights, also under mixed precision
    trained = weights if trained_params is None else -(-trained_params * 4 // shards)
    parts = {
        "transformer weights": weights,
        "gradients": trained,
        "optimizer states": 2 * trained,
        "VAE weights": vae_params * dtype_bytes(frozen_dtype),
        "text encoder weights": text_encoder_params * dtype_bytes(text_dtype),
        "activations": max(stored, encode.parts["activations"]),
        "frames": encode.parts["frames"] * (1 + use_image_num),
        "prompt states": batch_size * (1 + use_image_num) * text_tokens * int(cfg.get("caption_channels", text_encoder_width)) * 4,
    }
    if ema:
        parts["EMA weights"] = trained
    if text_backward_rows > 0:
        parts["text encoder activations"] = text_encoder_train_activations(text_encoder_config or {}, text_backward_rows, text_tokens, text_dtype)
    if cfg.get("attention_mode") == "math":  # no fused kernel: the score matrices are kept for backward
        parts["attention scores"] = 2 * num_blocks * batch_size * heads * (latent_frames * per_frame**2 + per_frame * latent_frames**2) * dtype_bytes(activation_dtype) // sequence_parallel
    return MemoryEstimate(parts)


def text_encoder_train_activations(t5_config: Mapping[str, Any], rows: int, tokens: int, dtype: torch.dtype | str) -> int:
    """Bytes a T5 encoder's forward keeps for backward over `rows` captions of `tokens` tokens
    (`T5_TRAIN_ACTIVATIONS`): what training its adapters adds to a step."""
    d_model, heads = int(t5_config.get("d_model", 4096)), int(t5_config.get("num_heads", 64))
    inner = heads * int(t5_config.get("d_kv", 64))
    gated = str(t5_config.get("feed_forward_proj", "relu")).startswith("gated")
    a = T5_TRAIN_ACTIVATIONS
    per_token = a["d_model"] * d_model + a["inner"] * inner + a["d_ff_gated" if gated else "d_ff"] * int(t5_config.get("d_ff", 10240)) + heads * tokens
    return rows * int(t5_config.get("num_layers", 24)) * tokens * per_token * dtype_bytes(dtype)


# --- what the device has ---------------------------------------------------------------------


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other Unixes: free pages (a lower bound: the page cache is not counted)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(device: torch.device | str) -> int | None:
    """Bytes `device` can still allocate: free GPU / NPU memory, or the RAM available to new
    allocations on CPU (and MPS, which shares it). None when it cannot be told."""
    import torch

    device = torch.device(device)
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "npu":
            return int(torch.npu.mem_get_info(device)[0])  # type: ignore[attr-defined]
    except (RuntimeError, AttributeError):
        return None
    return _meminfo_available()


# --- refusing what cannot fit ----------------------------------------------------------------


def largest_fitting_size(needed: Callable[[int, int], int], height: int, width: int, budget: int, multiple: int = 8, resize: str = "both") -> tuple[int, int] | None:
    """The largest (h, w), multiples of `multiple`, no larger than `height` x `width`, for which
    `needed(h, w)` <= `budget`; None when not even the smallest does. `resize` says which sides
    may change: "height" or "width" (the user chose that one; the other stays, unless not even
    the smallest of the one fits), else "both" with the aspect ratio of `height` x `width`
    (the shorter side rounded to the nearest multiple, so the ratio survives rounding)."""

    def floor(value: float) -> int:
        return max(multiple, int(value) // multiple * multiple)

    def at(scale: float) -> tuple[int, int]:
        if resize == "height":
            return floor(height * scale), width
        if resize == "width":
            return height, floor(width * scale)
        long_side = floor(max(height, width) * scale)
        short_side = min(min(height, width), max(multiple, round(long_side * min(height, width) / max(height, width) / multiple) * multiple))
        return (long_side, short_side) if height >= width else (short_side, long_side)

    if needed(*at(0.0)) > budget:
        return None if resize == "both" else largest_fitting_size(needed, height, width, budget, multiple)
    low, high = 0.0, 1.0
    for _ in range(40):  # bisection on the scale: sizes are monotone in it
        mid = (low + high) / 2
        if needed(*at(mid)) <= budget:
            low = mid
        else:
            high = mid
    return at(low)


def most_fitting_frames(needed: Callable[[int], int], frames: int, budget: int, step: int = 4) -> int | None:
    """The largest frame count 1 + `step` k below `frames` for which `needed(count)` <= `budget`
    (bisection: memory grows with frames); None when not even one frame fits."""
    if needed(1) > budget:
        return None
    low, high = 0, max(0, (frames - 2) // step)  # counts below `frames`
    while low < high:
        mid = (low + high + 1) // 2
        if needed(1 + step * mid) <= budget:
            low = mid
        else:
            high = mid - 1
    return 1 + step * low


def check_fits(needed: int, device: torch.device | str, what: str, hint: str) -> None:
    """Raise `InsufficientMemoryError` ("`what` needs about X, DEVICE has Y available (`hint`)")
    when `needed` bytes exceed what `device` has free; nothing when that cannot be told."""
    import torch

    free = available_memory(device)
    if free is not None and needed > free:
        raise InsufficientMemoryError(f"{what} needs about {format_bytes(needed)} of memory, {torch.device(device)} has {format_bytes(free)} available", hint)


def check_vae_memory(
    config: Mapping[str, Any],
    op: str,
    frames: int,
    height: int,
    width: int,
    *,
    num_params: int,
    device: torch.device | str,
    dtype: torch.dtype,
    tiled: bool,
    resizable: bool,
) -> MemoryEstimate:
    """Refuse (InsufficientMemoryError) an encode / decode / recon that cannot fit `device`,
    naming what would: the largest --size of this aspect ratio when the size can change
    (`resizable`), tiling when it is off and would fit, else the most frames at this size.
    Returns the estimate when it fits."""
    import torch

    estimate = vae_memory(config, op, frames, height, width, num_params=num_params, dtype=dtype, tiled=tiled)
    free = available_memory(device)
    if free is None or estimate.total <= free:
        return estimate
    what = {"encode": "encoding", "decode": "decoding", "recon": "the round trip of"}[op] + f" {frames} frames of {height}x{width}"
    if not tiled and vae_memory(config, op, frames, height, width, num_params=num_params, dtype=dtype, tiled=True).total <= free:
        hint = "leave out --no-tile: tiles fit"
    elif resizable and (fit := largest_fitting_size(lambda h, w: vae_memory(config, op, frames, h, w, num_params=num_params, dtype=dtype, tiled=tiled).total, height, width, free)):
        hint = f"use --size {fit[0]}x{fit[1]} or smaller, or fewer --frames"
    else:
        step = VAEShape.from_config(config).temporal_compression
        most = most_fitting_frames(lambda t: vae_memory(config, op, t, height, width, num_params=num_params, dtype=dtype, tiled=tiled).total, frames, free, step) if frames > 1 else None
        hint = f"at {height}x{width} this device fits at most {most} frames" if most is not None else "the model alone does not fit: use a device with more memory"
    raise InsufficientMemoryError(f"{what} needs about {format_bytes(estimate.total)} of memory, {torch.device(device)} has {format_bytes(free)} available", hint)


def check_t2v_sample_memory(
    estimate_for: Callable[[int, int, int, int], T2VMemoryEstimate],
    frames: int,
    height: int,
    width: int,
    num_videos: int,
    device: torch.device | str,
    given: Collection[str] = (),
) -> T2VMemoryEstimate:
    """Refuse sampling that cannot fit `device`. `estimate_for(frames, height, width,
    num_videos)` gives the estimate (e.g. a `functools.partial` of `t2v_sample_memory`). The
    hint names what would fit: fewer --num-videos first (they share one batch), else for one
    video what the user chose (`given`: of "frames", "height", "width"; the rest are the
    model's defaults), the most --frames (4k+1) or the largest --height/--width (multiples of
    16; a side left alone stays, two sides keep their aspect ratio); when the user chose both
    or neither, whichever keeps more of what was asked. Returns the estimate when it fits."""
    import torch

    estimate = estimate_for(frames, height, width, num_videos)
    free = available_memory(device)
    if free is None or estimate.peak <= free:
        return estimate
    what = f"sampling {num_videos} video(s) of {frames}x{height}x{width} ({estimate.peak_phase})"
    sides = {"height", "width"} & set(given)
    resize = sides.pop() if len(sides) == 1 else "both"
    videos = next((n for n in range(num_videos - 1, 0, -1) if estimate_for(frames, height, width, n).peak <= free), None)
    size = largest_fitting_size(lambda h, w: estimate_for(frames, h, w, 1).peak, height, width, free, multiple=16, resize=resize)
    fewer = most_fitting_frames(lambda t: estimate_for(t, height, width, 1).peak, frames, free) if frames > 1 else None
    if size is not None and fewer is not None and ("frames" in given) != bool({"height", "width"} & set(given)):
        size, fewer = (None, fewer) if "frames" in given else (size, None)
    one_video = " and --num-videos 1" if num_videos > 1 else ""
    if videos is not None:
        hint = f"use --num-videos {videos} or fewer"
    elif size is not None and (fewer is None or size[0] * size[1] / (height * width) >= fewer / frames):
        changed = [f"--{side} {value}" for side, value, asked in (("height", size[0], height), ("width", size[1], width)) if value != asked]
        hint = f"use {' '.join(changed)} or smaller{one_video}"
    elif fewer is not None:
        hint = f"use --frames {fewer} or fewer{one_video}"
    else:
        hint = "the models alone do not fit: try --offload or a device with more memory"
    raise InsufficientMemoryError(f"{what} needs about {format_bytes(estimate.peak)} of memory, {torch.device(device)} has {format_bytes(free)} available", hint)


def check_t2v_train_memory(estimate_for: Callable[[int, int, int, int], MemoryEstimate], height: int, width: int, batch_size: int, checkpoint_every: int, device: torch.device | str) -> MemoryEstimate:
    """Refuse a training run whose step cannot fit `device`, before any weights load.
    `estimate_for(height, width, batch_size, checkpoint_every)` gives the estimate (e.g. a
    `functools.partial` of `t2v_train_memory`). The hint names what would fit, in this order: a
    smaller --batch-size, activation checkpointing on every block, the largest --size (multiples
    of 16) of this aspect ratio at batch size 1 with checkpointing. Returns the estimate when it fits."""
    import torch

    estimate = estimate_for(height, width, batch_size, checkpoint_every)
    free = available_memory(device)
    if free is None or estimate.total <= free:
        return estimate
    what = f"training on {batch_size} sample(s) of {height}x{width} per step"
    batches = next((n for n in range(batch_size - 1, 0, -1) if estimate_for(height, width, n, checkpoint_every).total <= free), None)
    checkpointing = "" if checkpoint_every == 1 else " --set parallel.activation_checkpointing=1"
    if batches is not None:
        hint = f"use --batch-size {batches} or less"
    elif checkpoint_every != 1 and estimate_for(height, width, batch_size, 1).total <= free:
        hint = f"pass{checkpointing} (recompute every block's activations in backward)"
    elif fit := largest_fitting_size(lambda h, w: estimate_for(h, w, 1, 1).total, height, width, free, multiple=16):
        hint = f"use --size {fit[0]}x{fit[1]} or smaller" + (" and --batch-size 1" if batch_size > 1 else "") + (f" with{checkpointing}" if checkpointing else "")
    else:
        hint = "the model and its optimizer states alone do not fit: use --strategy fsdp over more ranks, or a device with more memory"
    raise InsufficientMemoryError(f"{what} needs about {format_bytes(estimate.total)} of memory, {torch.device(device)} has {format_bytes(free)} available", hint)


_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


@contextlib.contextmanager
def oom_as_error(what: str, hint: str) -> Iterator[None]:
    """An allocation failure inside the block (CUDA / NPU out of memory, a CPU allocation
    refused) becomes one `InsufficientMemoryError` line naming `what` ran out and `hint`."""
    try:
        yield
    except MemoryError:
        raise InsufficientMemoryError(f"out of memory while {what}", hint) from None
    except RuntimeError as exc:  # torch.OutOfMemoryError derives from RuntimeError
        import torch

        if isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or any(word in str(exc).lower() for word in _OOM_WORDS):
            raise InsufficientMemoryError(f"out of memory while {what}", hint) from None
        raise
