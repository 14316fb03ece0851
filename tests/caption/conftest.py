"""Fixtures for the caption tests: generated clips and the tiny vision-language model, each built
once per test session (shared with `tests/cli/test_caption_cli.py`)."""

from tests.clips import clips_dir  # noqa: F401 - fixtures
from tests.tiny_vlm import text_only_model, tiny_vlm  # noqa: F401
