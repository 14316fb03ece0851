"""The captioner: any transformers image-text-to-text (vision-language) model with a chat template.

The default, `Qwen/Qwen2.5-VL-3B-Instruct`, is a video-capable VLM that transformers runs
natively (no remote code). Models `AutoModelForImageTextToText` knows load the same way; the
Qwen2-VL and Qwen2.5-VL families are checked (tiny random configs, CPU, no torchvision), others
(LLaVA-OneVision, SmolVLM/Idefics3, Gemma 3, ...) go through the same processor/model classes.

Frames reach the model in one of two ways:
- as images: the K sampled frames in one multi-image prompt, through the processor's PIL image
  processor. This is the path without torchvision (transformers' video processors and fast image
  processors need it), so it is what runs on machines where torchvision cannot be installed.
- as a video: the frames as one video through the processor's video processor, for models that
  have one, when torchvision is installed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import InputError, ModelLoadError
from ..hub import resolve_model_dir
from .defaults import DEFAULT_CAPTION_MODEL, MAX_NEW_TOKENS

if TYPE_CHECKING:
    import torch

FRAMES_AS = ("auto", "images", "video")
logger = logging.getLogger(__name__)
_VLM_HINT = f"pass an image-text-to-text model such as {DEFAULT_CAPTION_MODEL} (a folder or a Hub repo id)"


@dataclass
class CaptionRequest:
    """One clip to caption: its sampled frames (uint8 (H, W, 3), in order) and the prompt text."""

    frames: list[np.ndarray]
    prompt: str


class CaptionModel(Protocol):
    """What the runner needs from a captioner (tests substitute their own)."""

    name: str

    def caption(self, requests: list[CaptionRequest]) -> list[str]: ...


def torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


def _load_config(root: Path, model: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(root)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(f"cannot load the config of '{model}': {first}", _VLM_HINT) from None


def is_vision_language_config(config) -> bool:
    """True for configs transformers maps to an image-text-to-text model."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    return type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING


def _image_only(processor_cls: type) -> type:
    """The model's own processor class without its video processor.

    transformers cannot build a video processor (not even an absent one) without torchvision,
    so a processor that declares one fails to load; this subclass leaves it out and keeps
    everything else (tokenizer, PIL image processor, chat template) as the model ships them.
    """

    def get_attributes(cls) -> list[str]:
        return [a for a in processor_cls.get_attributes() if "video" not in a]

    return type(processor_cls.__name__, (processor_cls,), {"get_attributes": classmethod(get_attributes), "__module__": __name__})


def _load_processor(root: Path, config, model: str):
    from transformers import AutoProcessor
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    try:
        if torchvision_available():
            return AutoProcessor.from_pretrained(root)
        processor_cls = PROCESSOR_MAPPING[type(config)] if type(config) in PROCESSOR_MAPPING else None
        if processor_cls is None:
            raise ModelLoadError(f"transformers has no processor class for '{model}' ({config.model_type})", _VLM_HINT)
        return _image_only(processor_cls).from_pretrained(root, backend="pil")
    except ModelLoadError:
        raise
    except (OSError, ValueError, TypeError, KeyError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(f"cannot load the processor of '{model}': {first}", "the model folder needs its tokenizer and preprocessor files") from None


class Captioner:
    """Captions clips with a transformers vision-language model (greedy decoding, batched)."""

    def __init__(self, model, processor, name: str, device: torch.device, dtype: torch.dtype, max_new_tokens: int = MAX_NEW_TOKENS, as_video: bool = False, video_fallback: bool = False) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.as_video = as_video
        self.video_fallback = as_video and video_fallback
        # Decoder-only generation appends after the prompt: pad on the left so batched prompts end together.
        self.processor.tokenizer.padding_side = "left"

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_CAPTION_MODEL,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        max_new_tokens: int = MAX_NEW_TOKENS,
        frames_as: str = "auto",
    ) -> Captioner:
        """Load `model` (Hub repo id or folder) in `dtype` (None: float32); `ModelLoadError` when it
        is not a usable VLM."""
        import torch
        from transformers import AutoModelForImageTextToText

        dtype = torch.float32 if dtype is None else dtype

        if frames_as not in FRAMES_AS:
            raise InputError(f"unknown --frames-as '{frames_as}'", "use auto, images or video")
        if frames_as == "video" and not torchvision_available():
            raise InputError("--frames-as video needs torchvision, which is not installed", "use --frames-as images (or auto)")
        root = resolve_model_dir(model)
        config = _load_config(root, model)
        if not is_vision_language_config(config):
            raise ModelLoadError(f"'{model}' is not a vision-language model (model type '{config.model_type}')", _VLM_HINT)
        processor = _load_processor(root, config, model)
        if not getattr(processor, "chat_template", None):
            raise ModelLoadError(f"'{model}' has no chat template", "use an instruction-tuned (chat) vision-language model")
        has_video = getattr(processor, "video_processor", None) is not None
        if frames_as == "video" and not has_video:
            raise InputError(f"'{model}' has no video processor", "use --frames-as images (or auto)")
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # our own progress bar is the only one on the console
        try:
            vlm = AutoModelForImageTextToText.from_pretrained(root, dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ModelLoadError(f"cannot load the weights of '{model}': {first}", "check the model folder (config.json and safetensors weights)") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        vlm.to(device).eval()
        as_video = has_video and frames_as != "images"
        return cls(vlm, processor, model, torch.device(device), dtype, max_new_tokens, as_video=as_video, video_fallback=frames_as == "auto")

    def prompt_text(self, num_frames: int, prompt: str, as_video: bool | None = None) -> str:
        """The chat-formatted prompt for one clip of `num_frames` frames."""
        as_video = self.as_video if as_video is None else as_video
        visual = [{"type": "video"}] if as_video else [{"type": "image"}] * num_frames
        messages = [{"role": "user", "content": [*visual, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        """One caption per request, in order (one batched `generate` call).

        In `auto` mode the video path is tried first; if it fails before it ever worked (a
        video processor that wants other inputs), the captioner falls back to images for good.
        """
        if self.as_video:
            try:
                captions = self._generate(requests, as_video=True)
            except Exception as exc:
                if not self.video_fallback:
                    raise
                logger.warning("video input failed (%s: %s); handing frames over as images", exc.__class__.__name__, exc)
                self.as_video = False
            else:
                self.video_fallback = False  # it works: later errors are real errors
                return captions
        return self._generate(requests, as_video=False)

    def _generate(self, requests: list[CaptionRequest], as_video: bool) -> list[str]:
        import torch

        with torch.inference_mode():
            return self._generate_batch(requests, as_video)

    def _generate_batch(self, requests: list[CaptionRequest], as_video: bool) -> list[str]:
        from PIL import Image

        texts = [self.prompt_text(len(r.frames), r.prompt, as_video) for r in requests]
        if as_video:
            # The frames are already sampled: the video processor must not sample again.
            visual = {"videos": [np.stack(r.frames) for r in requests], "do_sample_frames": False}
        else:
            visual = {"images": [[Image.fromarray(f) for f in r.frames] for r in requests]}
        inputs = self.processor(text=texts, padding=True, return_tensors="pt", **visual)
        inputs = inputs.to(self.device, dtype=self.dtype)
        tokenizer = self.processor.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        captions = [text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]
        if len(captions) != len(requests):
            raise RuntimeError(f"the model returned {len(captions)} captions for {len(requests)} clips")
        return captions
