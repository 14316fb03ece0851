"""Video <-> latents with the CausalVideoVAE: loading, frame selection, latent files.

Latent files are safetensors with one tensor `latents` (B, C, t, h, w), unscaled, and the
metadata needed to decode them (fps, frames, size, scaling factor, model) in the header.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import InputError, ModelLoadError
from ..hub import resolve_model_dir
from ..io import Video, json_dumps, read_video, resize_center_crop, save_safetensors
from ..models.causal_vae import CausalVideoVAE

LATENTS_KEY = "latents"


def load_vae(model: str, device: torch.device, dtype: torch.dtype) -> CausalVideoVAE:
    """The VAE from a model repository (its `vae/` folder), a VAE folder, a Hub id or builtin:NAME."""
    root = resolve_model_dir(model, subfolders=["vae"])
    if (root / "vae" / "config.json").is_file():
        vae = CausalVideoVAE.from_pretrained(str(root), subfolder="vae", torch_dtype=dtype)
    elif (root / "config.json").is_file():
        vae = CausalVideoVAE.from_pretrained(str(root), torch_dtype=dtype)
    else:
        raise ModelLoadError(f"no VAE config in '{model}' (looked for vae/config.json and config.json)", "pass a model repository folder or a VAE folder")
    return vae.to(device).eval()


def valid_frame_counts(count: int, compression: int = 4) -> tuple[int, int]:
    """The nearest frame counts of the form compression*k + 1 below and above `count`."""
    lower = max(1, (count - 1) // compression * compression + 1)
    return lower, lower + compression


def load_clip(path: str | Path, frames: str | int | None, stride: int, size: tuple[int, int] | None, compression: tuple[int, int] = (4, 8)) -> Video:
    """Read a clip for the VAE: `frames` is a count, 'auto' (the longest 4k+1 prefix) or None
    (all frames, which must then be 4k+1); `size` resizes + center-crops."""
    t_comp, s_comp = compression
    want: int | None = None
    if frames not in (None, "auto"):
        try:
            want = int(frames)
        except (TypeError, ValueError):
            raise InputError(f"--frames must be a number or 'auto', got '{frames}'", "e.g. --frames 17 or --frames auto") from None
        if want < 1 or (want - 1) % t_comp:
            lo, hi = valid_frame_counts(want, t_comp)
            raise InputError(f"frame count {want} is not {t_comp}k+1", f"use {lo} or {hi}, or --frames auto")
    video = read_video(path, num_frames=want, stride=stride)
    count = video.num_frames
    if want is not None and count < want:
        raise InputError(f"'{path}' has only {count} frames at stride {stride}, {want} requested", "lower --frames or --stride, or use --frames auto")
    if frames == "auto":
        count = valid_frame_counts(count, t_comp)[0] if (count - 1) % t_comp else count
        video = Video(video.frames[:count], video.fps)
    elif (count - 1) % t_comp:
        lo, hi = valid_frame_counts(count, t_comp)
        raise InputError(f"'{path}' has {count} frames, not {t_comp}k+1", f"pass --frames auto to use {lo}, or --frames {lo}")
    if size is not None:
        if size[0] % s_comp or size[1] % s_comp:
            raise InputError(f"size {size[0]}x{size[1]} is not a multiple of {s_comp}", f"use e.g. {size[0] // s_comp * s_comp or s_comp}x{size[1] // s_comp * s_comp or s_comp}")
        video = Video(resize_center_crop(video.frames, size), video.fps)
    else:
        h, w = video.size
        if h % s_comp or w % s_comp:
            raise InputError(f"frame size {h}x{w} is not a multiple of {s_comp}", f"pass --size {max(s_comp, h // s_comp * s_comp)}x{max(s_comp, w // s_comp * s_comp)}")
    return video


def configure_tiling(vae: CausalVideoVAE, tile: bool | None) -> None:
    """None (auto) and True: tiles whenever the input exceeds the tile; False: never."""
    if tile is False:
        vae.disable_tiling()
    else:
        vae.enable_tiling()


@torch.inference_mode()
def encode(vae: CausalVideoVAE, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None, progress: Callable[[], None] | None = None) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> unscaled latents (posterior mean, or a sample)."""
    vae.check_video(video)
    param = next(vae.parameters())
    posterior = vae.encode(video.to(param.device, param.dtype), progress=progress).latent_dist
    return (posterior.sample(generator=generator) if sample else posterior.mode()).float().cpu()


@torch.inference_mode()
def decode(vae: CausalVideoVAE, latents: torch.Tensor, progress: Callable[[], None] | None = None) -> torch.Tensor:
    """Unscaled latents -> (B, 3, T, H, W) float32 in [-1, 1] on the CPU."""
    channels = vae.config.embed_dim
    if latents.ndim != 5 or latents.shape[1] != channels:
        raise InputError(f"latents have shape {tuple(latents.shape)}, this VAE decodes (B, {channels}, t, h, w)", "pass latents written by `osp vae encode` for this model")
    param = next(vae.parameters())
    return vae.decode(latents.to(param.device, param.dtype), progress=progress).sample.float().clamp(-1, 1).cpu()


@dataclass
class LatentFile:
    latents: torch.Tensor
    metadata: dict[str, str]


def save_latents(path: str | Path, latents: torch.Tensor, metadata: dict[str, object]) -> Path:
    """Write latents with string metadata in the safetensors header, atomically."""
    path = Path(path)
    header = {k: v if isinstance(v, str) else json_dumps(v) for k, v in metadata.items()}
    return save_safetensors(path, {LATENTS_KEY: latents}, header)


def load_latents(path: str | Path) -> LatentFile:
    """Read a latent file written by `save_latents` (one-line errors for anything else)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"latent file '{path}' does not exist", "check the path")
    try:
        with safe_open(str(path), framework="pt") as handle:
            if LATENTS_KEY not in handle.keys():
                raise InputError(f"'{path}' holds no '{LATENTS_KEY}' tensor", "pass a file written by `osp vae encode`")
            return LatentFile(handle.get_tensor(LATENTS_KEY).float(), dict(handle.metadata() or {}))
    except InputError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise InputError(f"cannot read '{path}' as safetensors ({type(exc).__name__})", "pass a file written by `osp vae encode`") from None
