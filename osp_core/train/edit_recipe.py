"""`osp edit train`: ReVideo's control module (`models.edit_control.EditControl`) trained beside
a frozen LatteT2V, self-supervised on ordinary videos.

The text-to-video recipe supplies the data, the frozen VAE and T5 (and their cache) and the
IDDPM objective; this recipe freezes its transformer and trains the control module. Each
clip is its own target: a region is drawn (an annotated object's path plus a margin, in the
shapes world; a random box elsewhere), blanked from the content condition except in the first
latent frame, and the tracks come from the clip (the annotated centres; else Lucas-Kanade
inside the region). Stages (`edit.stage`): 1 motion only; 2 content and motion, each dropped
now and then (decoupled); 3 only the control blocks' temporal attention trains.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError, ModelLoadError
from .config import EditTrainConfig
from .plan import EDIT_DDP_ONLY
from .t2v_recipe import T2VRecipe
from .trainer import Built
from .wrapping import TrainingForward


def _control_step(control: Any, transformer: Any, x_t: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, content: torch.Tensor, motion: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    return control(transformer, x_t, t, states, content, motion, region, encoder_attention_mask=mask)


def stage_parameters(control: Any, stage: int) -> list[torch.nn.Parameter]:
    """What trains in `stage`: everything in stages 1 and 2, the temporal self-attention of
    the control blocks in stage 3 (the rest is frozen)."""
    if stage in (1, 2):
        chosen = list(control.parameters())
    else:
        chosen = [p for block in control.temporal_transformer_blocks for p in block.attn1.parameters()]
    keep = {id(p) for p in chosen}
    for p in control.parameters():
        p.requires_grad_(id(p) in keep)
    return chosen


class EditRecipe(T2VRecipe):
    name = "edit"
    config: EditTrainConfig

    def check(self, accelerator) -> None:
        # the rules that need no layout: `plan.check_edit_config`
        super().check(accelerator)
        layout = self.trainer.parallel.layout
        if layout.mode != "ddp" or layout.sp > 1:
            raise InputError(*EDIT_DDP_ONLY)

    def _check_memory(self, device) -> None:
        """Not the text-to-video estimate: here the transformer is frozen (no gradients or AdamW
        states) and a small control module trains; counting it as trained would refuse runs
        that fit."""

    def build(self, accelerator) -> Built:
        from diffusers.optimization import get_scheduler

        from ..models.edit_control import EditControl

        built = super().build(accelerator)  # frozen VAE and T5, the objective, the transformer
        e, o, cfg = self.config.edit, self.config.optim, self.config
        self.transformer = built.model.to(accelerator.device).eval().requires_grad_(False)
        if e.pretrained:
            try:
                control = EditControl.from_pretrained(e.pretrained)
            except Exception as exc:  # noqa: BLE001 - diffusers raises many kinds for bad folders
                raise ModelLoadError(f"cannot load the edit control module '{e.pretrained}': {type(exc).__name__}", "pass a model/ folder written by `osp edit train`") from None
        else:
            control = EditControl.from_transformer(self.transformer, e.num_layers, e.fusion_channels, self.vae.spatial_compression)
        if cfg.run.gradient_checkpointing:
            self.transformer.gradient_checkpointing = True
        params = stage_parameters(control, e.stage)
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.lr_warmup_steps * accelerator.num_processes, num_training_steps=cfg.run.max_steps * accelerator.num_processes)
        return Built(model=TrainingForward(control, _control_step), optimizers=[optimizer], schedulers=[scheduler])

    def validation_every(self) -> int:
        return 0

    # --- conditions -------------------------------------------------------------------------
    def _rng(self, batch: dict[str, Any], i: int, step: int) -> np.random.Generator:
        # the draw depends on the step and the clip only: a resumed run draws the same regions
        return np.random.default_rng([self.config.run.seed, step, int(batch["index"][i])])

    def _object_index(self, batch: dict[str, Any], i: int, rng: np.random.Generator) -> int:
        """Which annotated object of clip i is edited (the first draw of the clip's rng)."""
        entry = self.clips.entries[int(batch["index"][i])]
        return int(np.random.default_rng(rng.bit_generator.seed_seq).integers(len(entry.objects)))

    def _object_captions(self, batch: dict[str, Any], step: int) -> None:
        """A clip with annotated objects is captioned by its edited object alone, as an edit's
        prompt describes what the region shows."""
        for i in range(len(batch["caption"])):
            entry = self.clips.entries[int(batch["index"][i])]
            if entry.objects:
                obj = entry.objects[self._object_index(batch, i, self._rng(batch, i, step))]
                batch["caption"][i] = f"a {obj['color']} {obj['shape']} moving {obj['direction']}"

    def _region_and_tracks(self, batch: dict[str, Any], i: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pixel region (T, H, W) and tracks (T, 2) of clip i of the batch."""
        from ..pipelines.edit_inputs import box_mask
        from ..pipelines.tracking import track_region

        d, e = self.config.data, self.config.edit
        frames, height, width = d.frames, d.height, d.width
        entry = self.clips.entries[int(batch["index"][i])]
        start = int(batch["start"][i])
        if entry.objects:
            obj = entry.objects[self._object_index(batch, i, rng)]
            rows = [start + k * d.stride for k in range(frames)]
            boxes = np.asarray(obj["boxes"], dtype=np.float64)[rows]
            centres = torch.tensor(np.asarray(obj["centers"], dtype=np.float64)[rows], dtype=torch.float32)
            # annotations are in the clip's own pixels; the data are read at its size (shapes: 64x64)
            m = e.region_margin
            box = (max(0, int(np.floor(boxes[:, 0].min())) - m), max(0, int(np.floor(boxes[:, 1].min())) - m), min(width, int(np.ceil(boxes[:, 2].max())) + m), min(height, int(np.ceil(boxes[:, 3].max())) + m))
            return box_mask(box, frames, height, width), [centres.clamp(min=0).minimum(torch.tensor([width - 1.0, height - 1.0]))]
        video = batch["video"][i]  # None when the clip's latents came from the cache
        if video is None:
            raise InputError(f"'{entry.path}' has no annotated objects and its frames were not decoded (cached)", "leave out --cache-dir for data without object annotations")
        side = rng.uniform(*e.region_scale, size=2)
        bw, bh = max(8, int(side[0] * width)), max(8, int(side[1] * height))
        x0, y0 = int(rng.integers(0, width - bw + 1)), int(rng.integers(0, height - bh + 1))
        mask = box_mask((x0, y0, x0 + bw, y0 + bh), frames, height, width)
        pixels = ((video.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0)
        return mask, track_region(pixels, mask[0])

    def _conditions(self, batch: dict[str, Any], latents: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(content, motion, region) for the batch, as `pipelines.edit.control_conditions`
        makes them at inference."""
        from ..models.edit_control import motion_maps
        from ..pipelines.edit_inputs import latent_mask

        e = self.config.edit
        temporal, spatial = self.vae.temporal_compression, self.vae.spatial_compression
        contents, motions, regions = [], [], []
        for i in range(latents.shape[0]):
            rng = self._rng(batch, i, step)
            mask, tracks = self._region_and_tracks(batch, i, rng)
            region = latent_mask(mask, temporal, spatial).to(latents.device)
            keep = (1 - region)[None].clone()
            keep[:, 0] = 1.0
            content = latents[i] * keep
            track_tensor = torch.stack(tracks) if tracks else torch.zeros(0, mask.shape[0], 2)
            motion = motion_maps(track_tensor, mask.shape[1], mask.shape[2], temporal, spatial).to(latents.device)
            if e.stage == 1:
                content = torch.zeros_like(content)
            elif e.stage == 2:
                drop = rng.random(2) < e.condition_dropout
                content = content * float(not drop[0])
                motion = motion * float(not drop[1])
            contents.append(content)
            motions.append(motion)
            regions.append(region[None])
        return torch.stack(contents), torch.stack(motions), torch.stack(regions)

    # --- the step ---------------------------------------------------------------------------
    def _clipped_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train_step(self, micro_batches: list[dict[str, Any]], step: int) -> dict[str, float]:
        acc = self.trainer.accelerator
        self.model.train()
        totals = {"loss": 0.0, "mse": 0.0, "vb": 0.0}
        for batch in micro_batches:
            self._object_captions(batch, step)
            latents, states, mask, _ = self._inputs(batch)
            content, motion, region = self._conditions(batch, latents, step)
            with acc.accumulate(self.model):

                def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                    return self.model(self.transformer, x_t, t, states, mask, content, motion, region)

                terms = self._diffusion_step(batch, latents, model_fn)
            for key in totals:
                totals[key] += float(terms[key].detach().mean()) / len(micro_batches)
        return {"loss": totals["loss"], "diffusion/mse": totals["mse"], "diffusion/vb": totals["vb"], "lr": self.scheduler.get_last_lr()[0]}
