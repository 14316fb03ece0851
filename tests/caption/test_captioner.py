"""The transformers captioner on a tiny random Qwen2-VL, frames handed over as a multi-image prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from osp_core.caption.captioner import Captioner, CaptionRequest, torchvision_available
from osp_core.errors import InputError, ModelLoadError


@pytest.fixture(scope="module")
def captioner(tiny_vlm):
    return Captioner.load(str(tiny_vlm), "cpu", torch.float32, max_new_tokens=6, frames_as="images")


def _frames(seed: int, count: int = 4, size=(48, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(count)]


def test_prompt_holds_one_image_per_frame(captioner):
    text = captioner.prompt_text(4, "Describe the clip.")
    assert text.count("<|image_pad|>") == 4 and "Describe the clip." in text
    assert text.rstrip().endswith("assistant")


def test_batched_captions_match_single_ones(captioner):
    a, b = CaptionRequest(_frames(0), "Describe."), CaptionRequest(_frames(1), "Describe.")
    batch = captioner.caption([a, b])
    assert len(batch) == 2 and all(isinstance(c, str) and c for c in batch)
    assert batch == [captioner.caption([a])[0], captioner.caption([b])[0]]
    # the frames matter: the same prompt with other frames gives another caption
    other = captioner.caption([CaptionRequest(_frames(7, size=(64, 48)), "Describe.")])[0]
    assert len(set(batch + [other])) > 1


def test_batches_with_different_prompt_lengths_are_left_padded(captioner):
    short = CaptionRequest(_frames(2, count=1), "Describe.")
    long = CaptionRequest(_frames(3, count=3), "Describe the scene, the motion and the camera.")
    assert captioner.caption([short, long]) == [captioner.caption([short])[0], captioner.caption([long])[0]]


class _VideoRefusingProcessor:
    """The tiny processor, but its video path raises like a video processor that wants other inputs."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, *args, **kwargs):
        if "videos" in kwargs:
            raise ValueError("video metadata is required")
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_auto_mode_falls_back_to_images_when_the_video_path_fails(captioner):
    request = CaptionRequest(_frames(4), "Describe.")
    expected = captioner.caption([request])
    processor = _VideoRefusingProcessor(captioner.processor)
    auto = Captioner(captioner.model, processor, "tiny", torch.device("cpu"), torch.float32, 6, as_video=True, video_fallback=True)
    assert auto.caption([request]) == expected and not auto.as_video
    strict = Captioner(captioner.model, processor, "tiny", torch.device("cpu"), torch.float32, 6, as_video=True)
    with pytest.raises(ValueError, match="metadata"):
        strict.caption([request])


def test_a_text_only_model_is_refused(text_only_model):
    with pytest.raises(ModelLoadError, match="not a vision-language model"):
        Captioner.load(str(text_only_model), "cpu", torch.float32)


def test_missing_model_folder_is_refused(tmp_path):
    with pytest.raises(ModelLoadError):
        Captioner.load(str(tmp_path / "nope"), "cpu", torch.float32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config"):
        Captioner.load(str(tmp_path / "empty"), "cpu", torch.float32)


@pytest.mark.skipif(torchvision_available(), reason="checks the message shown without torchvision")
def test_video_path_needs_torchvision(tiny_vlm):
    with pytest.raises(InputError, match="torchvision"):
        Captioner.load(str(tiny_vlm), "cpu", torch.float32, frames_as="video")
