"""`osp t2v train`: the Latte text-to-video recipe of Open-Sora-Plan v1.1.0.

Each step: clips (and, in joint training, `use_image_num` images per clip) are encoded by the
frozen CausalVideoVAE (latents = posterior sample x scaling_factor; images as one-frame videos
appended after the video frames), captions by the frozen T5 (300 tokens with their mask; a
caption is dropped to "" with probability `text_dropout` for classifier-free guidance), and the
transformer is trained with the IDDPM hybrid loss at uniform timesteps (optionally with a share
drawn from a high-noise band and an x0-style weight: `diffusion.timestep_band_fraction`,
`diffusion.loss_weighting`). With `cache_dir`, the VAE posterior moments and the T5 states are
stored per sample and the encoders run once. Every random draw of a sample (posterior noise,
caption dropout, timestep, diffusion noise) comes from the seed and the sample's global position
(`randomness`), so the numbers do not depend on how many ranks computed them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, ModelLoadError
from .config import T2VTrainConfig
from .trainer import Built, Recipe


PRIOR_BATCH = 8
"""Captions the base samples at once for prior preservation."""


def _resolve_transformer_source(cfg: T2VTrainConfig) -> tuple[Path | None, Path | None]:
    """(folder with the transformer config.json to start from, model repository root)."""
    from ..hub import resolve_model_dir

    m = cfg.model
    if m.pretrained:
        local = Path(m.pretrained).expanduser()
        if (local / "config.json").is_file():
            return local, None
        root = resolve_model_dir(m.model, subfolders=[m.pretrained, "vae"])
        folder = root / m.pretrained
        if not (folder / "config.json").is_file():
            from ..pipelines.t2v_inputs import local_versions

            versions = local_versions(root)
            such = f"one of {', '.join(versions)}" if versions else "a version folder such as 65x512x512"
            raise ModelLoadError(f"no transformer '{m.pretrained}' in '{m.model}'", f"pass --pretrained with {such}, or a folder with config.json")
        return folder, root
    return None, None


def transformer_config(cfg: T2VTrainConfig) -> tuple[dict[str, Any], Path | None]:
    """The LatteT2V options to train (from --pretrained's config.json or model.config) and the
    folder of the pretrained weights (None for a fresh transformer); reads no weights."""
    from ..models.latte_t2v import LatteT2V

    folder, _ = _resolve_transformer_source(cfg)
    if folder is None:
        if not cfg.model.config:
            raise InputError("no transformer to train", "pass --pretrained VERSION|DIR, or set model.config to a LatteT2V config.json")
        path = Path(cfg.model.config).expanduser()
        if not path.is_file():
            raise InputError(f"transformer config '{path}' does not exist", "pass a LatteT2V config.json")
        config = json.loads(path.read_text())
        config = config.get("config", config)
    else:
        config = dict(LatteT2V.load_config(str(folder)))
    return LatteT2V.options_of(config), folder


def build_transformer(cfg: T2VTrainConfig, latent_frames: int, latent_size: tuple[int, int]):
    """A LatteT2V sized for the training clips, from pretrained weights (the temporal and spatial
    sizes are set to the data, as the original does when it moves a 65-frame model to 221
    frames) or from a config file."""

    from safetensors.torch import load_file

    from ..models.latte_t2v import LatteT2V

    config, folder = transformer_config(cfg)
    config["video_length"] = latent_frames
    config["sample_size"] = list(latent_size)
    model = LatteT2V.from_config(config)
    if folder is not None:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"no safetensors weights in '{folder}'", "pass a folder with diffusion_pytorch_model.safetensors")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(str(file)))
        own = model.state_dict()
        bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        missing = [k for k in own if k not in state]
        if bad or missing:
            raise ModelLoadError(
                f"weights in '{folder}' do not fit the transformer (mis-shaped {bad[:3]}, missing {missing[:3]})",
                "start from a checkpoint of the same architecture",
            )
        model.load_state_dict({k: v for k, v in state.items() if k in own})
    return model


def drop_words(captions: list[str], p: float, seed: int, positions: list[int], purpose: str) -> list[str]:
    """Each caption with each word left out with probability `p` (a caption keeps at least one
    word); the draws are the sample's own (its global position), as every other draw."""
    from .randomness import sample_generator

    out = []
    for caption, position in zip(captions, positions):
        words = caption.split()
        if len(words) < 2:  # nothing to leave out (also the empty caption)
            out.append(caption)
            continue
        keep = (torch.rand(len(words), generator=sample_generator(seed, position, purpose)) >= p).tolist()
        if not any(keep):  # every word drawn out: keep one, at random
            keep[int(torch.randint(len(words), (), generator=sample_generator(seed, position, purpose + "-keep")))] = True
        out.append(" ".join(w for w, k in zip(words, keep) if k))
    return out


def _caption(text: str) -> str:
    from ..pipelines.t2v import T2VPipeline

    return T2VPipeline.preprocess(text)


class T2VRecipe(Recipe):
    name = "t2v"
    config: T2VTrainConfig

    def check(self, accelerator) -> None:
        # the rules that need no layout: `plan.check_t2v_config`
        from ..data.annotations import load_entries

        d = self.config.data
        # the data lists are read now, so a wrong --data is one line before any model loads
        self.entries = load_entries(d.data, folder="captioned")
        self.image_entries = load_entries(d.image_data) if (d.image_data and d.use_image_num > 0) else None
        self.clip_plan = self._plan_clips() if (d.buckets or d.fps) else None
        layout = self.trainer.parallel.layout
        if layout.sp > 1:
            # each rank of a group needs at least one latent frame and one patch position
            shortest = min((bucket.frames for _, bucket in self.clip_plan.shapes), default=d.frames) if self.clip_plan else d.frames
            frames = (shortest - 1) // 4 + 1 + d.use_image_num
            if frames < layout.sp:
                raise InputError(
                    f"--sequence-parallel {layout.sp} splits {frames} latent frame(s) ({shortest} frames + {d.use_image_num} images): a rank would get none",
                    f"use --sequence-parallel {frames} or less, or longer clips",
                )
        self.lora_params = self._check_lora() if self.config.lora.rank is not None else None
        self._check_memory(accelerator.device)
        from .plan import sample_prompts

        self.prompts = sample_prompts(self.config.validation)  # a prompt file is read once, as the run starts
        self.preserve: list[str] = []
        self._prior: torch.Tensor | None = None  # the base's samples of `preserve`, drawn at the first step
        if self.config.lora.rank is not None and self.config.lora.preserve_captions:
            from .plan import preserve_captions

            self.preserve = preserve_captions(self.config, _resolve_transformer_source(self.config)[1])

    def _plan_clips(self):
        """Each clip's bucket and stride (`data.buckets`, `data.fps`), from the annotation or the
        files' headers, before any model loads; clips that fit none are left out, counted in
        the summary and named in one warning."""
        from ..data.buckets import plan_clips

        d = self.config.data
        config, _ = transformer_config(self.config)
        plan = plan_clips(self.entries, d.buckets, (d.frames, d.height, d.width), d.stride, 8 * int(config.get("patch_size", 2)), d.upscale, d.fps)
        if not plan.kept:
            path, reason = plan.left_out[0]
            fit = "a bucket" if d.buckets else f"{d.frames} frames"
            raise InputError(f"none of the {len(self.entries)} clips fits {fit} (e.g. {path}: {reason})", "lower --frames / --size / --stride, or use --buckets auto (with --upscale for clips smaller than its grid)")
        if plan.left_out:
            path, reason = plan.left_out[0]
            self.trainer.progress.skipped.update(dict(plan.left_out))  # counted in summary.json like unreadable samples
            self.trainer.warn(f"{len(plan.left_out)} of {len(self.entries)} clips are left out (first: {path}: {reason}); summary.json lists them")
        return plan

    def buckets(self) -> dict[str, int]:
        plan = getattr(self, "clip_plan", None)
        return plan.counts() if plan is not None and self.config.data.buckets else {}

    def _check_lora(self) -> int:
        """The LoRA options against the transformer built on the meta device (nothing loaded):
        a target pattern that matches no projection, or a rank above a projection's width, is
        one line before any weights load. Returns the adapters' parameter count."""
        from ..models.latte_t2v import LatteT2V
        from ..models.lora import check_rank, target_modules
        from ..pipelines.lora_inputs import TEXT_PATTERN, split_targets

        lora = self.config.lora
        transformer_targets, text = split_targets(lora.targets)
        modules = {}
        if transformer_targets:
            config, _ = transformer_config(self.config)
            with torch.device("meta"):
                model = LatteT2V.from_config(config)
            modules = target_modules(model, transformer_targets)
            check_rank(modules, lora.rank)
        if text:
            layout = self.trainer.parallel.layout
            if layout.sharded or layout.sp > 1:  # a layout a resumed checkpoint chose (`plan.check_lora_config` saw the options)
                raise InputError("--lora-targets text trains the text encoder's adapters under data parallelism only", "drop --strategy fsdp / --sequence-parallel (plain torchrun ranks work), or train transformer adapters only")
            from ..pipelines.repository import read_t5_config
            from transformers import T5Config, T5EncoderModel

            with torch.device("meta"):
                encoder = T5EncoderModel(T5Config(**read_t5_config(self._frozen_sources()[2])))
            text_modules = target_modules(encoder, TEXT_PATTERN)
            check_rank(text_modules, lora.rank)
            modules = {**modules, **{f"text_encoder.{name}": m for name, m in text_modules.items()}}
        return sum(lora.rank * (m.in_features + m.out_features) for m in modules.values())

    def model_files(self) -> Any:
        """A LoRA run checkpoints its adapter (`AdapterFiles`), not the frozen transformer."""
        if self.config.lora.rank is None:
            return None
        from .checkpoint import AdapterFiles

        return AdapterFiles(self.base_source(), lambda: (self.text_encoder, self.text_source()) if getattr(self, "text_params", None) else None)

    def base_source(self) -> str:
        """The transformer this run starts from, as an adapter names its base."""
        m = self.config.model
        return f"{m.model}:{m.pretrained}" if m.pretrained else (m.config or "a fresh transformer")

    def text_source(self) -> str:
        """The text encoder, as its adapter names its base: the --text-encoder given, else the
        model repository's (no local path)."""
        m = self.config.model
        return str(m.text_encoder) if m.text_encoder else f"{m.model}:text_encoder"

    def finished(self, checkpoint: Path) -> None:
        """A finished LoRA run leaves its adapter in OUTPUT/lora/ (replacing an older one whole)."""
        if self.config.lora.rank is None:
            return
        import shutil

        from ..io.atomic import atomic_dir

        with atomic_dir(Path(self.config.run.output_dir) / "lora") as tmp:
            for item in (checkpoint / "adapter").iterdir():
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)  # text_encoder/: the encoder's part

    def _frozen_dtypes(self) -> tuple[torch.dtype, torch.dtype]:
        """(VAE dtype, T5 dtype): the frozen encoders run in the mixed precision; T5 overflows in
        fp16, so it runs in bf16 under bf16 training, else in fp32."""
        frozen = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.config.run.mixed_precision, torch.float32)
        return frozen, torch.bfloat16 if frozen == torch.bfloat16 else torch.float32

    def _frozen_sources(self) -> tuple[str, Path, Any]:
        """(VAE source, VAE folder, T5 location), resolved once (configs only, no weights). The
        model repository's text_encoder/ is the default T5, as in sampling (the released
        repository has none: T5 then comes from DeepFloyd)."""
        if getattr(self, "_sources", None) is None:
            from ..hub import DEFAULT_REPO, resolve_model_dir
            from ..pipelines.t2v_inputs import locate_t5

            m = self.config.model
            repo_needed = not m.vae or (not m.text_encoder and m.model != DEFAULT_REPO)
            repo_root = resolve_model_dir(m.model, subfolders=["vae", "text_encoder", "tokenizer"]) if repo_needed else None
            vae_source = m.vae or m.model
            vae_root = repo_root if not m.vae else resolve_model_dir(vae_source, subfolders=["vae"])
            vae_dir = vae_root / "vae" if (vae_root / "vae" / "config.json").is_file() else vae_root
            self._sources = (vae_source, vae_dir, locate_t5(m.text_encoder or None, repo_root))
        return self._sources

    def _check_memory(self, device: torch.device) -> None:
        """Refuse a step that cannot fit `device` (`memory.check_t2v_train_memory`), from the
        models' configs alone: nothing is allocated or loaded."""
        import functools

        from ..memory import check_t2v_train_memory, t2v_train_memory
        from ..pipelines.lora_inputs import split_targets
        from ..pipelines.repository import model_sizes, read_config_json, read_t5_config

        cfg, layout = self.config, self.trainer.parallel.layout
        config, _ = transformer_config(cfg)
        _, vae_dir, t5 = self._frozen_sources()
        vae_config, t5_config = read_config_json(vae_dir), read_t5_config(t5)
        sizes = model_sizes(config, vae_config, t5_config)
        frozen_dtype, text_dtype = self._frozen_dtypes()
        estimate = functools.partial(
            t2v_train_memory,
            frames=cfg.data.frames,
            use_image_num=cfg.data.use_image_num,
            transformer_config=config,
            transformer_params=sizes["transformer"][0],
            num_blocks=sizes["transformer"][1],
            vae_config=vae_config,
            vae_params=sizes["vae"][0],
            text_encoder_params=sizes["text_encoder"][0],
            text_encoder_width=int(t5_config.get("d_model", 4096)),
            text_tokens=cfg.model.max_text_tokens,
            frozen_dtype=frozen_dtype,
            text_dtype=text_dtype,
            activation_dtype=frozen_dtype,
            shards=layout.world_size // max(1, cfg.parallel.replicate) if layout.mode == "fsdp" else 1,
            sequence_parallel=layout.sp,
            ema=cfg.run.ema,
            trained_params=self.lora_params,
            text_encoder_config=t5_config,
        )
        # captions through the encoder's adapters, with gradients: the batch's (a clip's and its
        # images'), and with preservation one preserve caption and one empty caption per clip
        rows_per_clip = (1 + cfg.data.use_image_num + (2 if cfg.lora.preserve_captions else 0)) if cfg.lora.rank is not None and split_targets(cfg.lora.targets)[1] else 0
        # --gradient-checkpointing is every block (the model's own switch under ddp)
        every = cfg.parallel.activation_checkpointing or (1 if cfg.run.gradient_checkpointing else 0)
        self.memory_estimate = check_t2v_train_memory(
            lambda h, w, b, k: estimate(height=h, width=w, batch_size=b, checkpoint_every=k, text_backward_rows=b * rows_per_clip), cfg.data.height, cfg.data.width, cfg.run.batch_size, every, device
        )

    # --- building ---------------------------------------------------------------------------
    def build(self, accelerator) -> Built:
        from diffusers.optimization import get_scheduler

        from ..models.causal_vae import CausalVideoVAE
        from ..pipelines.t2v import load_t5_encoder, load_t5_tokenizer
        from .diffusion import GaussianDiffusionObjective

        cfg = self.config
        device = accelerator.device
        frozen_dtype, text_dtype = self._frozen_dtypes()
        self.frozen_dtype = frozen_dtype

        vae_source, vae_dir, t5 = self._frozen_sources()
        self.vae = CausalVideoVAE.from_pretrained(str(vae_dir), torch_dtype=frozen_dtype).to(device).eval().requires_grad_(False)
        self.vae_id = f"{vae_source}:{vae_dir.name}"

        self.tokenizer, self.text_encoder = load_t5_tokenizer(t5), load_t5_encoder(t5, text_dtype)
        self.text_encoder.to(device).requires_grad_(False)
        self.t5_id = t5.source  # names the encoder in cache keys: the --text-encoder given, or the folder found

        lt, lh, lw = self.vae.latent_shape(cfg.data.frames, cfg.data.height, cfg.data.width)
        model = build_transformer(cfg, lt, (lh, lw))
        sp = self.trainer.parallel.layout.sp
        patches = (lh // model.config.patch_size) * (lw // model.config.patch_size)
        if patches < sp:
            raise InputError(f"--sequence-parallel {sp} splits {patches} patch position(s) per frame: a rank would get none", f"use --sequence-parallel {patches} or less, or a larger --size")
        if model.config.caption_channels != self.text_encoder.config.d_model:
            raise InputError(
                f"the transformer takes {model.config.caption_channels}-d captions, the text encoder gives {self.text_encoder.config.d_model}",
                "use the text encoder the transformer was trained with",
            )
        self.objective = GaussianDiffusionObjective(
            cfg.diffusion.num_train_timesteps, cfg.diffusion.beta_start, cfg.diffusion.beta_end, cfg.diffusion.learn_sigma,
            cfg.diffusion.timestep_band_fraction, tuple(cfg.diffusion.timestep_band),
            cfg.diffusion.loss_weighting, cfg.diffusion.max_loss_weight,
        )  # fmt: skip
        if cfg.diffusion.learn_sigma and model.config.out_channels != 2 * model.config.in_channels:
            raise InputError("learn_sigma needs a transformer with out_channels = 2 x in_channels", "set diffusion.learn_sigma false for this model")

        self.cache = None
        if cfg.data.cache_dir:
            from ..data.cache import FeatureCache

            self.cache = FeatureCache(cfg.data.cache_dir)

        self.text_params: list[torch.nn.Parameter] = []  # the text encoder's adapters (`--lora-targets text`)
        if cfg.lora.rank is not None:
            from ..models.lora import add_lora
            from ..pipelines.lora_inputs import TEXT_PATTERN, split_targets

            transformer_targets, text = split_targets(cfg.lora.targets)
            model.requires_grad_(False)  # the base frozen
            if transformer_targets:
                add_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, transformer_targets)
            if text:
                self.text_params = add_lora(self.text_encoder, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, TEXT_PATTERN)
                for p in self.text_params:
                    p.data = p.data.float()  # adapters train in fp32 whatever the frozen encoder's dtype
        model = self.trainer.parallelize(model)  # before the optimizer: FSDP2 replaces the parameters
        o = cfg.optim
        trained = [p for p in model.parameters() if p.requires_grad] + self.text_params  # a LoRA run: the adapters only
        optimizer = torch.optim.AdamW(trained, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        scheduler = get_scheduler(
            o.lr_scheduler,
            optimizer,
            num_warmup_steps=o.lr_warmup_steps * self.trainer.schedule_ticks_per_step,
            num_training_steps=cfg.run.max_steps * self.trainer.schedule_ticks_per_step,
        )
        return Built(model=model, optimizers=[optimizer], schedulers=[scheduler])

    def prepared(self, model, optimizers, schedulers, extra_models) -> None:
        self.model = model
        self.optimizer = optimizers[0]
        self.scheduler = schedulers[0]

    def dataset(self):
        from ..data.datasets import ClipSpec, VideoClipDataset

        d = self.config.data
        entries, images = self.entries, self.image_entries  # read by `check`
        spec = ClipSpec(d.frames, d.stride, d.height, d.width, d.random_start)
        specs = None
        if self.clip_plan is not None:  # planned by `check`: each clip its bucket and stride
            entries = [entries[i] for i in self.clip_plan.kept]
            specs = [ClipSpec(b.frames, stride, b.height, b.width, d.random_start) for stride, b in self.clip_plan.shapes]
        is_cached = None
        if self.cache is not None:
            from ..data.cache import HasEncoding

            is_cached = HasEncoding(self.cache.root, "vae", self.vae_id)
        self.clips = VideoClipDataset(
            entries, spec, seed=self.config.run.seed, use_image_num=d.use_image_num, image_entries=images, is_cached=is_cached, specs=specs
        )
        return self.clips

    # --- encoders (frozen, cached) ----------------------------------------------------------
    @torch.no_grad()
    def _latents(
        self, pixels: torch.Tensor | list[torch.Tensor | None], keys: list[str], draws: list[tuple[int, str]], reread: Callable[[int], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(B, 3, T, H, W) -> scaled latent samples (B, 4, t, h, w); moments cached by key.

        `pixels` may hold None for clips the dataset did not decode (cached); should such a
        cache entry be unreadable after all, `reread(i)` decodes clip i. Row i's posterior
        sample draws its noise from `draws[i]` = (global position, purpose).
        """
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        from ..data.cache import encoder_key

        device = self.trainer.accelerator.device
        moments: list[torch.Tensor | None] = [None] * len(keys)
        if self.cache is not None:
            for i, key in enumerate(keys):
                hit = self.cache.get("vae", encoder_key(key, self.vae_id))
                moments[i] = hit["moments"].to(device) if hit else None
        todo = [i for i, m in enumerate(moments) if m is None]
        if todo:
            rows = [pixels[i] if pixels[i] is not None else reread(i) for i in todo]
            fresh = self.vae.encode(torch.stack(rows).to(device, self.frozen_dtype)).latent_dist.parameters
            for j, i in enumerate(todo):
                moments[i] = fresh[j]
                if self.cache is not None:
                    self.cache.put("vae", encoder_key(keys[i], self.vae_id), {"moments": fresh[j]})
        from .randomness import sample_randn

        posterior = DiagonalGaussianDistribution(torch.stack([m.float() for m in moments]))
        noise = sample_randn(self.config.run.seed, draws, tuple(posterior.mean.shape[1:]), posterior.mean.device)
        return (posterior.mean + posterior.std * noise) * self.vae.config.scaling_factor

    def _text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 states (N, L, D) and mask (N, L) for `captions` (L = max_text_tokens): from the
        cache or the frozen encoder; with text encoder adapters, through them (with gradients,
        never cached)."""
        if self.text_params:
            return self._encode_text(captions)
        with torch.no_grad():
            return self._frozen_text(captions)

    def _run_encoder(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's states of `captions` (its dtype, padding as it comes out) and their mask."""
        device = self.trainer.accelerator.device
        tokens = self.tokenizer(
            captions, padding="max_length", max_length=self.config.model.max_text_tokens, truncation=True,
            return_attention_mask=True, add_special_tokens=True, return_tensors="pt",
        )  # fmt: skip
        mask = tokens.attention_mask.to(device)
        return self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0], mask

    def _encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 states and mask of `captions` as `_frozen_text` lays them out (padding zeroed), uncached."""
        states, mask = self._run_encoder(captions)
        return states.float() * mask[..., None], mask

    def _base_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoder's states of `captions` (text adapters off)."""
        from ..models.lora import adapters_off

        with torch.no_grad(), adapters_off(self.text_encoder):
            return self._encode_text(captions)

    def _frozen_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from ..data.cache import text_key

        device = self.trainer.accelerator.device
        length = self.config.model.max_text_tokens
        out_states: list[torch.Tensor | None] = [None] * len(captions)
        keys = [text_key(c, self.t5_id, length) for c in captions]
        if self.cache is not None:
            for i, key in enumerate(keys):
                hit = self.cache.get("t5", key)
                out_states[i] = hit["states"].to(device) if hit else None
        todo = [i for i, s in enumerate(out_states) if s is None]
        if todo:
            states, mask = self._run_encoder([captions[i] for i in todo])
            for j, i in enumerate(todo):
                kept = states[j, : int(mask[j].sum())]  # padding is masked out anyway: store the real tokens
                out_states[i] = kept
                if self.cache is not None:
                    self.cache.put("t5", keys[i], {"states": kept})
        dim = out_states[0].shape[-1]
        states = torch.zeros(len(captions), length, dim, device=device)
        mask = torch.zeros(len(captions), length, device=device, dtype=torch.long)
        for i, s in enumerate(out_states):
            states[i, : s.shape[0]] = s.float()
            mask[i, : s.shape[0]] = 1
        return states, mask

    # --- the step ---------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        from .randomness import batch_positions, sample_rand

        n = self.config.data.use_image_num
        positions = batch_positions(batch)
        latents = self._latents(batch["video"], batch["key"], [(p, "posterior") for p in positions], lambda i: self.clips.read_clip(batch["index"][i], batch["start"][i]))
        captions = [batch["caption"]] if n == 0 else [batch["caption"], *zip(*batch["image_captions"])]
        if n > 0:
            # each image is encoded as a one-frame video, then appended after the video frames
            images = batch["images"]  # (B, 3, n, H, W)
            b = images.shape[0]
            flat = images.permute(0, 2, 1, 3, 4).reshape(b * n, 3, 1, *images.shape[-2:])
            keys = [k for per_clip in batch["image_keys"] for k in per_clip]
            draws = [(p, f"image-posterior-{j}") for p in positions for j in range(n)]
            image_latents = self._latents(flat, keys, draws).reshape(b, n, *latents.shape[1:2], 1, *latents.shape[-2:])
            latents = torch.cat([latents, image_latents.squeeze(3).permute(0, 2, 1, 3, 4)], dim=2)
        # word dropout, then text dropout for classifier-free guidance (per-sample draws: the same
        # on any rank count)
        texts: list[list[str]] = [[_caption(c) for c in group] for group in captions]
        if self.config.diffusion.caption_word_dropout > 0:
            texts = [drop_words(group, self.config.diffusion.caption_word_dropout, self.config.run.seed, positions, f"caption-words-{g}") for g, group in enumerate(texts)]
        p = self.config.diffusion.text_dropout
        for g, group in enumerate(texts):
            drop = sample_rand(self.config.run.seed, positions, f"caption-dropout-{g}") < p
            for i in range(len(group)):
                if drop[i]:
                    group[i] = ""
        flat_texts = [t for group in texts for t in group]
        states, mask = self._text(flat_texts)
        groups = len(texts)
        b = latents.shape[0]
        states = states.view(groups, b, *states.shape[1:]).transpose(0, 1)
        mask = mask.view(groups, b, -1).transpose(0, 1)
        if n == 0:
            states, mask = states[:, 0], mask[:, 0]
        return latents, states, mask, n

    def _draws(self, batch: dict[str, Any], latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample timesteps and noise of the objective."""
        from .randomness import batch_positions, sample_generator, sample_randn

        seed, positions = self.config.run.seed, batch_positions(batch)
        t = torch.cat([self.objective.sample_timesteps(1, "cpu", sample_generator(seed, p, "timestep")) for p in positions]).to(latents.device)
        noise = sample_randn(seed, [(p, "noise") for p in positions], tuple(latents.shape[1:]), latents.device)
        return t, noise

    def _diffusion_step(
        self, batch: dict[str, Any], latents: torch.Tensor, model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], extra: Callable[[], torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """One micro-batch inside `accelerator.accumulate`: the objective at this batch's draws (plus
        `extra()`, a term of the recipe's own, reported as "extra"), its backward, and the
        optimizer and schedule steps (gradients clipped when they sync). Returns the terms."""
        acc, clip = self.trainer.accelerator, self.config.optim.max_grad_norm
        t, noise = self._draws(batch, latents)
        terms = self.objective.training_losses(model_fn, latents, t=t, noise=noise)
        loss = terms["loss"].mean()
        if extra is not None:
            terms["extra"] = extra()
            loss = loss + terms["extra"]
        self.trainer.backward(loss)
        if acc.sync_gradients and self.text_params and acc.num_processes > 1:
            self._sync_text_gradients()
        if acc.sync_gradients and clip > 0:
            acc.clip_grad_norm_(self._clipped_parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return terms

    def _sync_text_gradients(self) -> None:
        """Average the text encoder adapters' gradients over the ranks, as DDP does the
        transformer's (the encoder is not wrapped: its frozen weights stay out of checkpoints)."""
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.text_params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.trainer.accelerator.num_processes
        offset = 0
        for p, g in zip(self.text_params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
            offset += g.numel()

    def _preservation(self, batch: dict[str, Any], latents: torch.Tensor, images: int) -> torch.Tensor:
        """Prior preservation (`lora.preserve_captions`): each sample draws one of the captions
        and a fresh timestep and noise; the adapters' predictions for that caption and for the
        empty one are pulled to the frozen base's (adapters off) on the same noisy latents, which are the base's own
        sample of that caption (`_prior_latents`; with `preserve_sample_steps` 0, the sample's
        clip). The target is the base's output, not a clip's noise, so the term is zero exactly
        when the adapters change nothing for these captions. Weighted by `preserve_weight`.
        With text encoder adapters the prediction reads the adapted states (its gradient reaches
        the encoder's adapters through them) and the target the frozen encoder's: what is held is
        the video those captions make, not their states."""
        from ..models.lora import adapters_off
        from .randomness import batch_positions, sample_generator, sample_rand, sample_randn

        seed, positions = self.config.run.seed, batch_positions(batch)
        picks = [min(int(u * len(self.preserve)), len(self.preserve) - 1) for u in sample_rand(seed, positions, "preserve-caption").tolist()]
        # each caption with the empty one beside it: guidance extrapolates from the unconditional
        # prediction, so an adapter that moved it would move every guided video
        captions = [self.preserve[k] for k in picks] + [""] * len(picks)
        states, mask = self._text(captions)
        base_states = self._base_text(captions)[0] if self.text_params else states  # the target: the base as a whole
        prior = self._prior_latents()
        clean = latents[:, :, : latents.shape[2] - images] if prior is None else prior[picks].to(latents.device)  # clips: without joint images
        t = torch.cat([self.objective.sample_timesteps(1, "cpu", sample_generator(seed, p, "preserve-timestep")) for p in positions]).to(clean.device)
        noise = sample_randn(seed, [(p, "preserve-noise") for p in positions], tuple(clean.shape[1:]), clean.device)
        x_t = self.objective.q_sample(clean, t, noise).repeat(2, 1, 1, 1, 1)
        t = t.repeat(2)
        with torch.no_grad(), adapters_off(self.model):
            target = self.model(x_t, t, encoder_hidden_states=base_states, encoder_attention_mask=mask, return_dict=False)[0]
        prediction = self.model(x_t, t, encoder_hidden_states=states, encoder_attention_mask=mask, return_dict=False)[0]
        channels = clean.shape[1]  # the noise channels: sampling drops the learned variance
        return self.config.lora.preserve_weight * torch.nn.functional.mse_loss(prediction[:, :channels].float(), target[:, :channels].float())

    @torch.no_grad()
    def _prior_latents(self) -> torch.Tensor | None:
        """The frozen base's own sample of each preserve caption (N, C, f, h, w), drawn the first
        time they are needed (every rank alike: caption k's noise comes from the run's seed and
        k), with the adapters off, so a resumed run draws the same ones; None when
        `preserve_sample_steps` is 0."""
        steps = self.config.lora.preserve_sample_steps
        if steps == 0:
            return None
        if self._prior is None:
            from ..models.lora import adapters_off
            from ..pipelines.t2v import T2VPipeline, make_scheduler

            from .wrapping import diffusers_part

            cfg = self.config
            model = self.trainer.accelerator.unwrap_model(self.model)
            was_training = model.training
            model.eval()

            def forward(x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, encoder_attention_mask: Any = None, **_: Any) -> Any:
                # through the training wrapper (sharded, sequence-parallel): every rank runs it
                return self.model(x, t, encoder_hidden_states=states, encoder_attention_mask=encoder_attention_mask, return_dict=False)

            pipe = T2VPipeline(self.tokenizer, self.text_encoder, self.vae, diffusers_part(model)[0], make_scheduler("DPMSolverMultistep"))
            pipe.set_progress_bar_config(disable=True)
            rows = []
            try:
                with adapters_off(self.model), adapters_off(self.text_encoder):
                    for start in range(0, len(self.preserve), PRIOR_BATCH):
                        captions = self.preserve[start : start + PRIOR_BATCH]
                        generators = [torch.Generator("cpu").manual_seed(cfg.run.seed * 1_000_003 + start + k) for k in range(len(captions))]
                        rows.append(
                            pipe(
                                captions, num_frames=cfg.data.frames, height=cfg.data.height, width=cfg.data.width, num_inference_steps=steps,
                                guidance_scale=cfg.validation.guidance_scale, generator=generators, output_type="latent", transformer_forward=forward,
                            ).frames.float().cpu()
                        )  # fmt: skip
            finally:
                model.train(was_training)
            self._prior = torch.cat(rows)
        return self._prior

    def _clipped_parameters(self) -> Iterable[torch.nn.Parameter]:
        """The parameters whose gradient norm --max-grad-norm clips."""
        return [*self.model.parameters(), *self.text_params]

    def train_step(self, micro_batches: list[dict[str, Any]], step: int) -> dict[str, float]:
        acc = self.trainer.accelerator
        self.model.train()
        totals = {"loss": 0.0, "mse": 0.0, "vb": 0.0}
        for batch in micro_batches:
            latents, states, mask, n = self._inputs(batch)
            with acc.accumulate(self.model):

                def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                    return self.model(x_t, t, encoder_hidden_states=states, encoder_attention_mask=mask, use_image_num=n, return_dict=False)[0]

                preserve = (lambda: self._preservation(batch, latents, n)) if self.preserve else None
                terms = self._diffusion_step(batch, latents, model_fn, preserve)
            for key in totals:
                totals[key] += float(terms[key].detach().mean()) / len(micro_batches)
            if preserve is not None:
                totals["preserve"] = totals.get("preserve", 0.0) + float(terms["extra"].detach()) / len(micro_batches)
        logs = {"loss": totals["loss"], "diffusion/mse": totals["mse"], "diffusion/vb": totals["vb"], "lr": self.scheduler.get_last_lr()[0]}
        if "preserve" in totals:
            logs["lora/preserve"] = totals["preserve"]
        if self.cache is not None:
            logs["cache/hits"] = float(self.cache.hits)
            logs["cache/misses"] = float(self.cache.misses)
        return logs

    # --- validation -------------------------------------------------------------------------
    def validation_every(self) -> int:
        return self.config.validation.every

    @torch.no_grad()
    def validate(self, step: int, out_dir: Path) -> dict[str, Any]:
        """Sample the run's prompts (`plan.sample_prompts`) with the fixed seeds (EMA weights when
        EMA is on; a LoRA run's adapters as they are now) to `out_dir`/NN.mp4, with samples.json
        naming each file's prompt and seed; the folder appears whole (written under a temporary
        name, then renamed). Returns the files and their frames (for TensorBoard)."""
        from ..io.atomic import atomic_dir
        from ..io.jsonfile import write_json
        from ..io.video import write_video
        from ..pipelines.t2v import T2VPipeline, make_scheduler

        cfg, acc = self.config, self.trainer.accelerator
        model = acc.unwrap_model(self.model)
        if self.trainer.validation_weights is not None:
            # a sharded (or sequence-parallel) model: sample with a one-device copy of the gathered weights
            model = type(self.trainer.inner).from_config(self.trainer.inner.config)
            lora = cfg.lora
            if lora.rank is not None:
                from ..models.lora import add_lora
                from ..pipelines.lora_inputs import split_targets

                with torch.random.fork_rng():  # the adapters' initial draw is overwritten: it must not move the run's RNG
                    add_lora(model, lora.rank, lora.alpha, lora.dropout, split_targets(lora.targets)[0])  # the gathered weights' names
            model.to(acc.device).load_state_dict(self.trainer.validation_weights)
        ema = None if self.trainer.sharded_ema else self.trainer.ema  # a sharded average is in the gathered weights already
        if ema is not None:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
        was_training = model.training
        model.eval()
        v = cfg.validation
        try:
            pipe = T2VPipeline(self.tokenizer, self.text_encoder, self.vae, model, make_scheduler("PNDM"))
            names, frames, records = [], [], []
            with atomic_dir(out_dir) as tmp:
                for index, prompt in enumerate(self.prompts):
                    generator = torch.Generator(device="cpu").manual_seed(v.seed + index)
                    out = pipe(
                        prompt, num_frames=cfg.data.frames, height=cfg.data.height, width=cfg.data.width,
                        num_inference_steps=v.steps, guidance_scale=v.guidance_scale, generator=generator,
                    )  # fmt: skip
                    name = f"{index:02d}.mp4"
                    write_video(tmp / name, out.frames[0], fps=cfg.data.fps or 8.0)
                    names.append(name)
                    frames.append(out.frames[0].cpu())
                    records.append({"file": name, "prompt": prompt, "seed": v.seed + index})
                write_json(tmp / "samples.json", {"step": step, "steps": v.steps, "guidance_scale": v.guidance_scale, "samples": records})
        finally:
            model.train(was_training)
            if ema is not None:
                ema.restore(model.parameters())
        return {"samples": [str(out_dir / name) for name in names], "frames": frames, "prompts": list(self.prompts)}
