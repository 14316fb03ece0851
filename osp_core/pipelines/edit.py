"""Video editing on tensors: the blend engine's step hook (`RegionBlend`), the latent picture of
an edit (`prepare_latents`, the motion guide, noise moved along the tracks), the denoising of
an edit (`edit_latents`), the control engine's transformer stand-in and the paste-back outside
the region. `jobs.edit` reads the files and runs these.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .denoising import DenoisingCallback, DenoisingStep
from .edit_inputs import (
    edit_steps,
    feather_width,
    feathered,
    latent_mask,
    region_displacement,
    shift,
    steps_after_cut,
)


@dataclass
class EditInputs:
    """The checked inputs in pixels: source frames (T, H, W, 3) uint8, the region (T, H, W)
    {0, 1}, the edited first frame (H, W, 3) or None, tracks (T, 2) each (x, y) and where
    they came from (track, track-file, keep-motion, whole-frame); `whole_frame`: a remix (the
    region is every pixel, nothing is held)."""

    frames: torch.Tensor
    fps: float
    mask: torch.Tensor
    first_frame: torch.Tensor | None
    tracks: list[torch.Tensor]
    track_source: str
    whole_frame: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return int(self.frames.shape[0]), int(self.frames.shape[1]), int(self.frames.shape[2])

    @cached_property
    def pixel_displacement(self) -> torch.Tensor:
        """(T, 2) how the region's content moves, in pixels (dx, dy): the tracks' mean motion
        (`region_displacement`), zeros without tracks."""
        return region_displacement(self.tracks, self.mask[0]) if self.tracks else torch.zeros(len(self.frames), 2)

    def reference_first_frame(self) -> torch.Tensor:
        """Frame 0 as it should look: the edited frame inside the region, the source outside."""
        if self.first_frame is None:
            return self.frames[0]
        inside = self.mask[0, ..., None].bool()
        return torch.where(inside, self.first_frame, self.frames[0])




class RegionBlend(DenoisingCallback):
    """The blend engine's step hook. Before every step the known latents (outside the region,
    and the whole first latent frame) are replaced by `known` noised to that step; with
    `from_init` (--strength below 1: the run starts at the cut) the first step starts from
    `init` noised likewise; after the last step the known latents are put back clean, so they
    decode as the source does."""

    def __init__(self, known: torch.Tensor, keep: torch.Tensor, init: torch.Tensor, noise: torch.Tensor, from_init: bool) -> None:
        self.known, self.keep, self.init, self.noise, self.from_init = known, keep, init, noise, from_init

    def _noised(self, x: torch.Tensor, step: DenoisingStep) -> torch.Tensor:
        t = step.timestep if torch.is_tensor(step.timestep) else torch.tensor(step.timestep)
        return step.scheduler.add_noise(x, self.noise.to(x.device), t.reshape(1).to(x.device))

    def on_step_begin(self, step: DenoisingStep, latents: torch.Tensor) -> torch.Tensor:
        if self.from_init and step.is_first:
            latents = self._noised(self.init.to(latents.device), step)
        keep = self.keep.to(latents.device)
        return keep * self._noised(self.known.to(latents.device), step) + (1 - keep) * latents

    def on_step_end(self, step: DenoisingStep, latents: torch.Tensor) -> torch.Tensor | None:
        if not step.is_last:
            return None
        keep = self.keep.to(latents.device)
        return keep * self.known.to(latents.device) + (1 - keep) * latents


@dataclass
class EditLatents:
    """The latent-space picture of an edit (scaled latents, (1, C, t, h, w))."""

    source: torch.Tensor  # the source video
    known: torch.Tensor  # the source with the first latent frame as the edited first frame
    keep: torch.Tensor  # (1, 1, t, h, w): 1 where the latents are known
    region: torch.Tensor  # (t, h, w): 1 inside the region
    displacement: torch.Tensor  # (t, 2) how the region's content moves, in latent cells (dx, dy)
    guide: torch.Tensor | None = None  # `motion_guide` encoded: where --strength < 1 starts
    whole_frame: bool = False  # a remix: nothing held, the source is the start, plain noise


def prepare_latents(vae: Any, inputs: EditInputs, guide: bool = False) -> EditLatents:
    """Encode the source and the reference first frame; the latent region and motion; with
    `guide`, the motion guide too (one more encode, only needed for --strength < 1). A
    whole-frame edit holds nothing (keep is all zeros, not even the first latent frame) and
    starts from the source latents themselves (SDEdit over the clip): no second encode."""
    from ..io import to_model_input
    from .video_vae import encode

    scale = float(vae.config.scaling_factor)
    source = encode(vae, to_model_input(inputs.frames)) * scale
    if inputs.whole_frame:
        t, h, w = source.shape[2:]
        return EditLatents(source, source, torch.zeros(1, 1, t, h, w, dtype=source.dtype), torch.ones(t, h, w), torch.zeros(t, 2), source, whole_frame=True)
    known = source.clone()
    if inputs.first_frame is not None:
        # the video with its first frame edited, encoded whole as the source was (the encoder's
        # first latent frame is not quite the first frame encoded alone)
        reference = inputs.frames.clone()
        reference[0] = inputs.reference_first_frame()
        known[:, :, :1] = encode(vae, to_model_input(reference))[:, :, :1] * scale
    temporal, spatial = vae.temporal_compression, vae.spatial_compression
    region = latent_mask(inputs.mask, temporal, spatial)
    keep = (1 - region)[None, None].clone()
    keep[:, :, 0] = 1.0  # the first latent frame is held as the (edited) first frame
    pixel = inputs.pixel_displacement
    # latent frame i stands for pixel frames 4i-3 .. 4i: their mean motion
    per_latent = [pixel[:1].mean(dim=0)] + [pixel[max(1, 4 * i - 3) : 4 * i + 1].mean(dim=0) for i in range(1, source.shape[2])]
    displacement = torch.stack(per_latent) / spatial
    guided = encode(vae, to_model_input(motion_guide(inputs))) * scale if guide else None
    return EditLatents(source, known, keep, region, displacement, guided)


def motion_guide(inputs: EditInputs) -> torch.Tensor:
    """(T, H, W, 3) uint8: the source, with the region of every frame showing the reference
    first frame's region moved along the tracks (sub-pixel, in pixels: the latent grid is too
    coarse to move content by less than a cell); what the move uncovers takes the region's
    median colour. A guide for `--strength` below 1, not a result: the denoiser redraws it."""
    first = inputs.reference_first_frame().permute(2, 0, 1).float()  # (3, H, W)
    mask0 = inputs.mask[0].float()
    inside0 = mask0.bool()
    fill = first[:, inside0].median(dim=1).values[:, None, None] if bool(inside0.any()) else torch.zeros(3, 1, 1)
    frames = []
    for dx, dy in inputs.pixel_displacement.tolist():
        moved, coverage = shift(first * mask0, dx, dy), shift(mask0, dx, dy)
        frames.append(moved + (1 - coverage) * fill)
    guide = torch.stack(frames).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return torch.where(inputs.mask[..., None].bool(), guide, inputs.frames)


def noise_along(noise: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, t, h, w): `noise` rolled by each latent frame's displacement,
    rounded to whole cells (noise keeps unit variance only when copied cell for cell)."""
    return torch.stack([torch.roll(noise, shifts=(round(dy), round(dx)), dims=(-2, -1)) for dx, dy in displacement.tolist()], dim=2)


def blend_start_latents(latents: EditLatents, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(initial latents, noise): the motion guide inside the region (the source elsewhere),
    and noise whose region part moves along the path (content that follows its noise follows
    the path). A whole-frame edit starts from the source under plain noise, drawn as
    text-to-video draws it."""
    base = torch.randn(latents.source.shape, generator=generator)
    if latents.whole_frame:
        return latents.source, base
    region = latents.region[None, None].to(latents.source.dtype)
    init = latents.source if latents.guide is None else region * latents.guide + (1 - region) * latents.source
    moving = noise_along(base[:, :, 0], latents.displacement)
    noise = region * moving + (1 - region) * base
    noise[:, :, 0] = base[:, :, 0]
    return init, noise


def edit_latents(
    pipe: Any,
    latents: EditLatents,
    prompt_embeds: Any,
    steps: int,
    guidance: float,
    strength: float,
    generator: torch.Generator,
    callbacks: list[DenoisingCallback] | None = None,
    transformer_forward: Any = None,
) -> torch.Tensor:
    """Denoise an edit with `pipe` (a T2VPipeline, models placed): the final scaled latents.
    Below strength 1 only the last `steps_after_cut` steps run, from the motion guide noised
    to the first of them. `transformer_forward` replaces the transformer call (the control
    engine)."""
    first = steps - edit_steps(steps, strength, pipe.scheduler)
    if first > 0 and latents.guide is None:
        raise ValueError("strength < 1 starts from the motion guide: prepare_latents(..., guide=True)")
    init, noise = blend_start_latents(latents, generator)
    blend = RegionBlend(latents.known, latents.keep, init, noise, from_init=first > 0)
    _, _, t, h, w = latents.source.shape
    vae = pipe.vae
    return pipe(
        prompt_embeds=prompt_embeds,
        num_frames=(t - 1) * vae.temporal_compression + 1,
        height=h * vae.spatial_compression,
        width=w * vae.spatial_compression,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=noise,
        output_type="latent",
        enable_temporal_attentions=t > 1,
        callbacks=[blend, *(callbacks or [])],
        transformer_forward=transformer_forward,
        first_step=first,
    ).frames


def control_conditions(latents: EditLatents, inputs: EditInputs, temporal: int = 4, spatial: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The control module's (content, motion, region) for one edit, batch 1: the known latents
    with the region blanked (the first latent frame is the edited one), the tracks' motion maps
    and the latent region."""
    from ..models.edit_control import motion_maps

    content = latents.known * latents.keep
    count, height, width = inputs.shape
    tracks = torch.stack(inputs.tracks) if inputs.tracks else torch.zeros(0, count, 2)
    motion = motion_maps(tracks.float(), height, width, temporal, spatial)[None]
    return content, motion, latents.region[None, None].to(content.dtype)


def control_forward(transformer: Any, module: Any, latents: EditLatents, inputs: EditInputs) -> Any:
    """A stand-in for `transformer` (called like `LatteT2V.forward`) that adds `module`'s control."""
    device = transformer.device
    content, motion, region = (x.to(device) for x in control_conditions(latents, inputs, 4, int(module.config.spatial_compression)))

    def forward(hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None, enable_temporal_attentions: bool = True, return_dict: bool = False) -> tuple[torch.Tensor]:
        return (module(transformer, hidden_states, timestep, encoder_hidden_states, content, motion, region, encoder_attention_mask, enable_temporal_attentions),)

    return forward


def load_control_module(folder: Path, transformer: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """The EditControl in `folder` (a diffusers-style folder), checked against `transformer`."""
    from ..models.edit_control import EditControl

    try:
        module = EditControl.from_pretrained(str(folder), torch_dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many kinds for bad folders
        raise ModelLoadError(f"cannot load the edit control module from '{folder}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", "pass a folder written by `osp edit train`") from None
    width = module.config.num_attention_heads * module.config.attention_head_dim
    expected = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    if width != expected or module.config.num_layers > transformer.config.num_layers:
        raise ModelLoadError(f"the edit control module in '{folder}' was made for another transformer (width {width}, {module.config.num_layers} pairs)", "train one for this model with `osp edit train`")
    return module.to(device).eval()


def paste_outside(decoded: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3): `decoded` inside the feathered region, `source` exactly outside."""
    soft = feathered(mask, feather_width(*mask.shape[1:]))[..., None]
    mixed = soft * decoded.float() + (1 - soft) * source.float()
    return mixed.round().clamp(0, 255).to(torch.uint8)
