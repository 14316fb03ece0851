"""Video <-> latents with the CausalVideoVAE: loading, frame selection, latent files.

Latent files are safetensors with one tensor `latents` (B, C, t, h, w), unscaled, and the
metadata needed to decode them (fps, frames, size, scaling factor, model) in the header.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io import Video, read_video, resize_center_crop
from ..models.causal_vae import CausalVideoVAE
from .vae_inputs import check_clip_size, find_vae, read_vae_config, valid_frame_counts, wanted_frames



def load_vae(model: str | Path, device: torch.device, dtype: torch.dtype) -> CausalVideoVAE:
    """The VAE from a model repository (its `vae/` folder), a VAE folder, a Hub id or builtin:NAME."""
    vae = CausalVideoVAE.from_pretrained(str(find_vae(model)), torch_dtype=dtype)
    return vae.to(device).eval()


def load_clip(path: str | Path, frames: str | int | None, stride: int, size: tuple[int, int] | None, compression: tuple[int, int] = (4, 8)) -> Video:
    """Read a clip for the VAE: `frames` is a count, 'auto' (the longest 4k+1 prefix) or None
    (all frames, which must then be 4k+1); `size` resizes + center-crops."""
    t_comp, s_comp = compression
    want = wanted_frames(frames, t_comp)
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
    check_clip_size(video.size, size, s_comp)
    if size is not None:
        video = Video(resize_center_crop(video.frames, size), video.fps)
    return video


def _check_memory(folder: Path, config: dict[str, Any], op: str, shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype, tile: bool | None, resizable: bool) -> None:
    from ..memory import check_vae_memory, safetensors_numel

    params = safetensors_numel(folder, exclude_prefixes=("loss.",))  # training-loss weights are not loaded
    check_vae_memory(config, op, *shape, num_params=params, device=device, dtype=dtype, tiled=tile is not False, resizable=resizable)


def check_clip_fits(folder: Path, op: str, shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype, tile: bool | None) -> None:
    """Refuse, before the weights load and before the clip is read, an `op` ('encode' or
    'recon') of a clip of `shape` (`vae_inputs.check_clip`) that cannot fit `device`
    (`osp_core.memory`); the error names the --size that would."""
    _check_memory(folder, read_vae_config(folder), op, shape, device, dtype, tile, resizable=True)


def check_latent_shape(latents: torch.Tensor, channels: int) -> None:
    """Raise `InputError` unless `latents` is (B, `channels`, t, h, w)."""
    if latents.ndim != 5 or latents.shape[1] != channels:
        raise InputError(f"latents have shape {tuple(latents.shape)}, this VAE decodes (B, {channels}, t, h, w)", "pass latents written by `osp vae encode` for this model")


def check_latents_fit(folder: Path, latents: torch.Tensor, device: torch.device, dtype: torch.dtype, tile: bool | None) -> tuple[int, int, int]:
    """Refuse, before the weights load, decoding `latents` when the video cannot fit `device`;
    returns the video's (frames, height, width)."""
    from ..memory import VAEShape

    config = read_vae_config(folder)
    check_latent_shape(latents, VAEShape.from_config(config).latent_channels)
    shape = decoded_shape(latents, config)
    _check_memory(folder, config, "decode", shape, device, dtype, tile, resizable=False)
    return shape


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
    check_latent_shape(latents, vae.config.embed_dim)
    param = next(vae.parameters())
    return vae.decode(latents.to(param.device, param.dtype), progress=progress).sample.float().clamp(-1, 1).cpu()


@dataclass
class Reconstruction:
    """A clip's round trip: the decoded frames (T, H, W, 3) uint8 and how close they are."""

    frames: torch.Tensor
    psnr: float
    ssim: float
    seconds: float


def reconstruct(vae: CausalVideoVAE, clip: Video, progress: Callable[[int, int], None] | None = None) -> Reconstruction:
    """Encode `clip` (posterior mean) and decode it; PSNR and SSIM against the input.
    `progress(done, total)` after every tile (encode and decode tiles together)."""
    import time

    from ..io import from_model_output, to_model_input
    from ..metrics import psnr, ssim

    x = to_model_input(clip.frames)
    latent_shape = (1, vae.config.embed_dim, *vae.latent_shape(*x.shape[2:]))
    total = vae.num_tiles(x.shape, latent=False) + vae.num_tiles(latent_shape, latent=True)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    start = time.perf_counter()
    decoded = decode(vae, encode(vae, x, progress=tick), progress=tick)
    seconds = time.perf_counter() - start
    frames = from_model_output(decoded[0])
    return Reconstruction(frames, psnr(clip.frames, frames), ssim(clip.frames, frames), seconds)


def decoded_shape(latents: torch.Tensor, config: dict[str, Any]) -> tuple[int, int, int]:
    """(frames, height, width) of the video that (B, C, t, h, w) `latents` decode to."""
    from ..memory import VAEShape

    shape = VAEShape.from_config(config)
    t, h, w = latents.shape[-3:]
    return (t - 1) * shape.temporal_compression + 1, h * shape.spatial_compression, w * shape.spatial_compression
