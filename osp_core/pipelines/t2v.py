"""Text-to-video: T5 prompt encoding -> LatteT2V denoising -> CausalVideoVAE decoding.

Behaves as the Open-Sora-Plan v1.1.0 sampler (`opensora/sample/pipeline_videogen.py`):
prompts are lower-cased and stripped, tokenized to `model_max_length` (300) tokens, the
prompt embedding is cut to its real token count and the negative embedding to the same
length, classifier-free guidance runs uncond first, the learned-variance channels are dropped
before the scheduler step, and decoding divides by the VAE scaling factor (0.18215).

Two deliberate differences, both invisible for one prompt in float32:
- latents and the scheduler math stay in float32 whatever the model dtype;
- several prompts (or videos per prompt) in one call are padded to the longest prompt and
  masked, so each video equals what a one-prompt call gives (the original instead zeroed the
  padding and attended to it when batching).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import schedulers as diffusers_schedulers
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..errors import HubUnavailableError, InputError, ModelLoadError
from ..hub import DEFAULT_REPO
from .denoising import DenoisingCallback, StepProgress, denoise, scheduler_step_kwargs, timesteps_from
from .repository import ModelRepository, check_transformer_folder
from .t2v_inputs import (
    DEFAULT_TEXT_ENCODER,
    T5Location,
    check_clean_caption_deps,
    check_max_steps,
    check_steps,
    check_video_size,
    fewest_steps,
    locate_t5,
    scheduler_name,
)

logger = logging.getLogger(__name__)


@dataclass
class T2VPipelineOutput(BaseOutput):
    """`frames`: uint8 (B, T, H, W, 3) for output_type "pt"; the final latents (B, 4, t, h, w) for "latent"."""

    frames: torch.Tensor


@dataclass
class PromptEmbeddings:
    """Encoded prompts for one call: (B, L, D) states and (B, L) masks (1 = keep), per item
    already cut to its prompt's token count; `negative` is None without guidance.
    `truncated[i]` is the text prompt i lost to the token limit ("" when none)."""

    prompt: torch.Tensor
    prompt_mask: torch.Tensor
    negative: torch.Tensor | None
    negative_mask: torch.Tensor | None
    truncated: list[str]

    def repeat(self, times: int) -> PromptEmbeddings:
        """Each item `times` times in a row (several videos per prompt)."""
        if times == 1:
            return self

        def rep(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.repeat_interleave(times, dim=0)

        return PromptEmbeddings(rep(self.prompt), rep(self.prompt_mask), rep(self.negative), rep(self.negative_mask), self.truncated)

    def select(self, rows: list[int]) -> PromptEmbeddings:
        """Items `rows` only (several prompts encoded at once, denoised in parts)."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows]

        return PromptEmbeddings(pick(self.prompt), pick(self.prompt_mask), pick(self.negative), pick(self.negative_mask), [self.truncated[k] for k in rows])

    def to(self, device: torch.device, dtype: torch.dtype) -> PromptEmbeddings:
        def move(t: torch.Tensor | None, as_dtype: torch.dtype | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=as_dtype or t.dtype)

        return PromptEmbeddings(move(self.prompt, dtype), move(self.prompt_mask, None), move(self.negative, dtype), move(self.negative_mask, None), self.truncated)


def make_scheduler(name: str | SchedulerMixin) -> SchedulerMixin:
    """A diffusers scheduler by the original's name (PNDM, DDIM, ...; case-insensitive, an optional
    "Scheduler" suffix), built with its default config as the original sampler did."""
    if isinstance(name, SchedulerMixin):
        return name
    return getattr(diffusers_schedulers, scheduler_name(name) + "Scheduler")()


class T2VPipeline(DiffusionPipeline):
    """Open-Sora-Plan v1.1.0 text-to-video sampling.

    Components: `tokenizer` and `text_encoder` (T5; optional once prompts are encoded),
    `vae` (CausalVideoVAE), `transformer` (LatteT2V), `scheduler` (any diffusers scheduler).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["tokenizer", "text_encoder"]

    def __init__(self, tokenizer: Any, text_encoder: Any, vae: Any, transformer: Any, scheduler: SchedulerMixin) -> None:
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        model: str | Path | ModelRepository = DEFAULT_REPO,
        version: str | None = None,
        text_encoder: str | Path | None = None,
        scheduler: str | SchedulerMixin = "PNDM",
        torch_dtype: torch.dtype | None = None,
        load_text_encoder: bool = True,
        transformer: str | Path | None = None,
    ) -> T2VPipeline:
        """Load from a repository laid out like `LanguageBind/Open-Sora-Plan-v1.1.0`.

        `model`: Hub repo id, local folder, builtin:NAME or a resolved `ModelRepository`; the
        VAE comes from `vae/`, the transformer from `version/` (None: the shortest version the
        repository has). The T5 encoder and tokenizer come from `text_encoder` (repo id or
        folder) when given, else from the repository's `text_encoder/` and `tokenizer/` when it
        has them, else from DeepFloyd/t5-v1_1-xxl. `transformer`, a LatteT2V folder (a training
        checkpoint's `model/` or `model_ema/`), replaces the repository's version folder.
        Components are loaded on the CPU; move or offload them after.
        """
        from ..models.causal_vae import CausalVideoVAE
        from ..models.latte_t2v import LatteT2V

        if isinstance(model, ModelRepository):
            repository = model if text_encoder is None else replace(model, text_encoder=str(text_encoder))
        else:
            repository = ModelRepository.resolve(str(model), text_encoder)
        scheduler_obj = make_scheduler(scheduler)
        kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        if transformer is not None:
            transformer_dir = check_transformer_folder(transformer)
            version = str(transformer_dir)
            root = repository.fetch_for_sampling(None, with_text_encoder=load_text_encoder)
        else:
            version = repository.pick_version(None) if version is None else version
            repository.check_version(version)
            root = repository.fetch_for_sampling(version, with_text_encoder=load_text_encoder)
            transformer_dir = root / version
        # find and check T5 (and load its small tokenizer) before gigabytes of transformer and VAE weights
        t5_location = replace(repository, root=root).t5_location() if load_text_encoder else None
        tokenizer = load_t5_tokenizer(t5_location) if t5_location is not None else None
        transformer_model = LatteT2V.from_pretrained(str(transformer_dir), **kwargs)
        vae = CausalVideoVAE.from_pretrained(str(root), subfolder="vae", **kwargs)
        encoder = load_t5_encoder(t5_location, torch_dtype) if t5_location is not None else None
        pipe = cls(tokenizer=tokenizer, text_encoder=encoder, vae=vae, transformer=transformer_model, scheduler=scheduler_obj)
        # provenance for sidecars and logs
        pipe.version = version
        if repository.text_encoder is not None:
            pipe.text_encoder_source = repository.text_encoder
        else:
            pipe.text_encoder_source = f"{repository.model}/text_encoder" if repository.has_text_encoder else DEFAULT_TEXT_ENCODER
        return pipe

    def free_text_encoder(self) -> None:
        """Drop T5 (the biggest component, needed only to encode prompts) to free its memory."""
        import gc

        self.register_modules(text_encoder=None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- prompts -----------------------------------------------------------------------------

    @staticmethod
    def preprocess(prompt: str, clean_caption: bool = False) -> str:
        """Lower-case and strip; with `clean_caption`, PixArt/DeepFloyd caption cleaning
        (needs beautifulsoup4 and ftfy)."""
        if not clean_caption:
            return prompt.lower().strip()
        check_clean_caption_deps()
        from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import PixArtAlphaPipeline

        # diffusers' cleaner only reads `bad_punct_regex` from its instance; run it twice as the original
        cleaner = PixArtAlphaPipeline.__new__(PixArtAlphaPipeline)
        return cleaner._clean_caption(cleaner._clean_caption(prompt))

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] = "",
        do_classifier_free_guidance: bool = True,
        clean_caption: bool = False,
        max_length: int | None = None,
        device: torch.device | None = None,
    ) -> PromptEmbeddings:
        """T5 states for `prompt` (and `negative_prompt` when guiding), cut as the original does.

        Each prompt's states are cut to its token count k (EOS included); the negative prompt is
        encoded at full length and cut to the same k. Items of a batch are padded to the longest
        k and masked.
        """
        if self.tokenizer is None or self.text_encoder is None:
            raise InputError("this pipeline has no text encoder loaded", "pass prompt embeddings, or load the pipeline with a text encoder")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise InputError(f"{len(negatives)} negative prompts for {len(prompts)} prompts", "give one negative prompt, or one per prompt")
        max_length = max_length or int(self.transformer.config.model_max_length)
        device = device or self.text_encoder.device

        prompts = [self.preprocess(p, clean_caption) for p in prompts]
        ids, mask = self._tokenize(prompts, max_length)
        truncated = self._truncated_parts(prompts, ids)
        for part in filter(None, truncated):
            logger.warning("prompt longer than %d tokens; this part was cut: %s", max_length, part)
        states = self.text_encoder(ids.to(device), attention_mask=mask.to(device))[0]
        keep = int(mask.sum(dim=1).max())
        prompt_states, prompt_mask = states[:, :keep], mask[:, :keep].to(device)

        negative_states = negative_mask = None
        if do_classifier_free_guidance:
            negatives = [self.preprocess(n, clean_caption) for n in negatives]
            neg_ids, neg_attention = self._tokenize(negatives, max_length)
            negative_states = self.text_encoder(neg_ids.to(device), attention_mask=neg_attention.to(device))[0][:, :keep]
            # the original attends to the negative's first k tokens, padding included
            negative_mask = prompt_mask.clone()
        return PromptEmbeddings(prompt_states, prompt_mask, negative_states, negative_mask, truncated)

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_attention_mask=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return tokens.input_ids, tokens.attention_mask

    def _truncated_parts(self, texts: list[str], ids: torch.Tensor) -> list[str]:
        """The text each prompt lost to truncation ("" when nothing was cut); the kept part
        ends with the EOS token, so the cut starts at the last kept position."""
        parts = []
        for text, kept in zip(texts, ids):
            full = self.tokenizer(text, add_special_tokens=True, return_tensors="pt").input_ids[0]
            cut = full[kept.shape[0] - 1 : -1] if full.shape[0] > kept.shape[0] else full[:0]
            parts.append(self.tokenizer.decode(cut, skip_special_tokens=True) if len(cut) else "")
        return parts

    # -- sampling ----------------------------------------------------------------------------

    def check_inputs(self, num_frames: int, height: int, width: int, num_inference_steps: int, guidance_scale: float) -> None:
        """Raise `InputError` naming the bad value."""
        temporal = getattr(self.vae, "temporal_compression", 4)
        spatial = getattr(self.vae, "spatial_compression", 8)
        check_video_size(num_frames, height, width, temporal, spatial * self.transformer.config.patch_size)
        if num_inference_steps < 1:
            raise InputError(f"num_inference_steps must be >= 1, got {num_inference_steps}", "use e.g. 50 or 150 steps")
        check_max_steps(num_inference_steps, "num_inference_steps")
        if guidance_scale < 0:
            raise InputError(f"guidance scale must be >= 0, got {guidance_scale}", "use e.g. 7.5 (1 turns guidance off)")
        if fewest_steps(self.scheduler) > 1:
            check_steps(type(self.scheduler).__name__.removesuffix("Scheduler"), num_inference_steps)

    @property
    def num_timesteps(self) -> int | None:
        """How many timesteps the last call ran (the transformer ran once on each), as
        diffusers pipelines keep it; None before the first call."""
        return getattr(self, "_num_timesteps", None)

    def _denoise_device(self) -> torch.device:
        # with model offload everything sits on the CPU between uses: ask the hooks
        if getattr(self, "_offload_device", None) is not None:
            return self._execution_device
        return self.transformer.device

    def prepare_latents(
        self,
        batch: int,
        num_frames: int,
        height: int,
        width: int,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gaussian latents (B, C, (T-1)/4+1, H/8, W/8) in float32, times the scheduler's init sigma."""
        temporal = getattr(self.vae, "temporal_compression", 4)
        spatial = getattr(self.vae, "spatial_compression", 8)
        shape = (batch, self.transformer.config.in_channels, (num_frames - 1) // temporal + 1, height // spatial, width // spatial)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise InputError(f"latents have shape {tuple(latents.shape)}, expected {shape}", "pass latents that match the frames, size and batch")
        else:
            latents = latents.to(device=device, dtype=torch.float32)
        return latents * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] = "",
        num_frames: int = 65,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 150,
        guidance_scale: float = 7.5,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: PromptEmbeddings | None = None,
        output_type: str = "pt",
        eta: float = 0.0,
        clean_caption: bool = False,
        enable_temporal_attentions: bool = True,
        callbacks: Sequence[DenoisingCallback] = (),
        transformer_forward: Callable[..., Any] | None = None,
        first_step: int = 0,
        return_dict: bool = True,
    ) -> T2VPipelineOutput | tuple[torch.Tensor]:
        """Generate videos for `prompt` (or for already encoded `prompt_embeds`).

        Returns `frames`: uint8 (B, T, H, W, 3) for output_type "pt", the final latents for
        "latent". `callbacks` hook into the denoising loop (`denoising.DenoisingCallback`:
        progress, caches, latents replaced between steps). `transformer_forward` runs the
        transformer in its place, called like `LatteT2V.forward` (`parallel.launch.parallelize_transformer`).
        `first_step` > 0 runs only steps `first_step`.. of the `num_inference_steps` schedule
        (`denoising.timesteps_from`): `latents` must then be noised to that step (editing).
        """
        if output_type not in ("pt", "latent"):
            raise InputError(f"unknown output_type '{output_type}'", "use 'pt' or 'latent'")
        self.check_inputs(num_frames, height, width, num_inference_steps, guidance_scale)
        do_cfg = guidance_scale > 1.0
        if prompt_embeds is None:
            if prompt is None or (not isinstance(prompt, str) and len(prompt) == 0):
                raise InputError("no prompt given", "pass a prompt or prompt embeddings")
            prompt_embeds = self.encode_prompt(prompt, negative_prompt, do_cfg, clean_caption)
        elif do_cfg and prompt_embeds.negative is None:
            raise InputError("guidance needs negative prompt embeddings", "encode with do_classifier_free_guidance=True, or use guidance_scale 1")

        device = self._denoise_device()
        embeds = prompt_embeds.repeat(num_videos_per_prompt).to(device, self.transformer.dtype)
        batch = embeds.prompt.shape[0]
        if do_cfg:
            states = torch.cat([embeds.negative, embeds.prompt])  # uncond first, as the original
            mask = torch.cat([embeds.negative_mask, embeds.prompt_mask])
        else:
            states, mask = embeds.prompt, embeds.prompt_mask
        # an all-ones mask changes nothing: skip it (the original passed none)
        mask = None if bool(mask.all()) else mask

        try:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            whole = len(self.scheduler.timesteps)  # before `timesteps_from` (PNDM's is rebuilt)
            timesteps = timesteps_from(self.scheduler, first_step)
        except ValueError as exc:  # e.g. PNDM below 4 steps
            ran = f"steps {first_step}.. of {num_inference_steps}" if first_step else f"{num_inference_steps} steps"
            raise InputError(f"{type(self.scheduler).__name__} cannot run {ran} ({exc})", "use more steps or another scheduler") from None
        latents = self.prepare_latents(batch, num_frames, height, width, device, generator, latents)
        latent_channels = self.transformer.config.in_channels
        learned_variance = self.transformer.config.out_channels // 2 == latent_channels

        transformer = transformer_forward or self.transformer

        def predict_noise(model_input: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            # a step without the unconditional half (`denoising.Unconditional`) runs the
            # conditional rows alone: the last ones, as the unconditional half comes first
            rows = model_input.shape[0]
            noise = transformer(
                model_input.to(self.transformer.dtype),
                timestep,
                states[-rows:],
                encoder_attention_mask=None if mask is None else mask[-rows:],
                enable_temporal_attentions=enable_temporal_attentions,
                return_dict=False,
            )[0]
            # the learned-variance channels are dropped before the scheduler step (and before
            # the cast to float32, which then converts only the channels the scheduler reads)
            return (noise[:, :latent_channels] if learned_variance else noise).float()

        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as bar:
            latents = denoise(
                predict_noise,
                self.scheduler,
                latents,
                guidance_scale=guidance_scale,
                step_kwargs=scheduler_step_kwargs(self.scheduler, generator, eta),
                callbacks=[*callbacks, StepProgress(lambda done, total: bar.update())],
                timesteps=timesteps,
                offset=whole - len(timesteps),
            )

        frames = latents if output_type == "latent" else self.decode_latents(latents)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return T2VPipelineOutput(frames=frames)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor | None] | None = None) -> torch.Tensor | None:
        """Latents -> uint8 (B, T, H, W, 3), as the original: ((x / 2 + 0.5).clamp(0, 1) * 255) truncated.

        `decode` replaces the VAE call on the unscaled latents (e.g. `parallel.vae.decode_over_ranks`);
        when it returns None (another process holds the video) so does this.
        """
        vae_device = self._execution_device if getattr(self, "_offload_device", None) is not None else self.vae.device
        scaled = (latents / self.vae.config.scaling_factor).to(device=vae_device, dtype=self.vae.dtype)
        video = self.vae.decode(scaled).sample if decode is None else decode(scaled)
        if video is None:
            return None
        video = video.float()
        video = ((video / 2.0 + 0.5).clamp(0, 1) * 255).to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu().contiguous()


def load_t5(source: str | Path | None, root: Path | None, torch_dtype: torch.dtype | None) -> tuple[Any, Any]:
    """(tokenizer, T5EncoderModel): from `source` when given, else the repository's
    `text_encoder/` + `tokenizer/` folders, else DeepFloyd/t5-v1_1-xxl (see `locate_t5`)."""
    location = locate_t5(source, root)
    return load_t5_tokenizer(location), load_t5_encoder(location, torch_dtype)


def load_t5_tokenizer(location: T5Location) -> Any:
    """The T5 tokenizer from a location found by `locate_t5` (one-line `ModelLoadError`s)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location.tokenizer, **({"subfolder": location.tokenizer_subfolder} if location.tokenizer_subfolder else {}))
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError... for bad files
        raise _t5_load_error(exc, "tokenizer", location) from None
    # transformers builds an empty T5 tokenizer from a folder without vocabulary files; it
    # would map every prompt to <unk>. T5's vocabulary covers plain lower-case English.
    probe = tokenizer("a photo of a cat", add_special_tokens=False).input_ids
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in probe:
        raise ModelLoadError(f"the T5 tokenizer from '{location.source}' has no vocabulary (no spiece.model or tokenizer.json)", "pass --text-encoder with a folder holding the T5 tokenizer files, or a tokenizer/ beside text_encoder/")
    return tokenizer


def load_t5_encoder(location: T5Location, torch_dtype: torch.dtype | None) -> Any:
    """The T5EncoderModel (eval mode) from a location found by `locate_t5` (one-line `ModelLoadError`s)."""
    from transformers import T5EncoderModel

    kwargs: dict[str, Any] = {"dtype": torch_dtype} if torch_dtype is not None else {}
    try:
        encoder = T5EncoderModel.from_pretrained(location.encoder, **({"subfolder": location.encoder_subfolder} if location.encoder_subfolder else {}), **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise _t5_load_error(exc, "encoder", location) from None
    encoder.eval()
    return encoder


def _t5_load_error(exc: Exception, part: str, location: T5Location) -> ModelLoadError:
    """One line for whatever transformers raised while loading T5."""
    text = str(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, OSError) and any(word in message.lower() for word in ("offline", "connect", "cache")):
        return HubUnavailableError(f"T5 text encoder '{location.source}' is not available offline: {message}", "pass --text-encoder DIR with a downloaded T5 encoder, or connect to the Hub")
    return ModelLoadError(f"cannot load the T5 {part} from '{location.source}': {message}", "pass --text-encoder with a T5 encoder folder or repo id")
