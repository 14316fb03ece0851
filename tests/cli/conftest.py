"""Fixtures the command-line tests share with the tests of the code behind each command: the
edit inputs, the caption clips and the tiny vision-language model."""

from tests.clips import clips_dir, inputs  # noqa: F401 - fixtures
from tests.tiny_vlm import text_only_model, tiny_vlm  # noqa: F401
