"""Prompt templates for the captioner: YAML files in `presets/caption/`.

A template has a `name`, a `kind` (`video` or `image`), the `prompt` text and `fields`: the
names of the values that fill its `{}` placeholders, in order (`caption`: a rough caption,
`ocr`: text recognised in the image; both come from a list file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import InputError

KINDS = ("video", "image")
KNOWN_FIELDS = ("caption", "ocr")
FIELD_LIST_KEYS = {"caption": "cap", "ocr": "ocr"}  # the list-file key that supplies each field
_HINT_NAMES = "use a template name from presets/caption/ (video, image, image_ocr) or a path to a .yaml file"


def presets_dirs() -> list[Path]:
    """Where shipped templates live: inside the package when installed, else the checkout's presets/."""
    package = Path(__file__).resolve().parents[1]
    return [p for p in (package / "presets" / "caption", package.parent / "presets" / "caption") if p.is_dir()]


def available_templates() -> list[str]:
    return sorted({p.stem for d in presets_dirs() for p in d.glob("*.yaml")})


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt, with the names of the values that fill its `{}` placeholders."""

    name: str
    kind: str
    prompt: str
    fields: tuple[str, ...] = ()
    description: str = ""

    def render(self, values: dict[str, str | None]) -> str:
        """The prompt with its placeholders filled from `values`; `InputError` when one is missing."""
        missing = [f for f in self.fields if not values.get(f)]
        if missing:
            raise InputError(
                f"prompt template '{self.name}' needs {', '.join(missing)} text for this item",
                "give 'caption'/'ocr' per item in a .json/.jsonl list file, or pick another --prompt",
            )
        # Split on "{}" rather than str.format, so other braces in a prompt stay literal.
        pieces = self.prompt.split("{}")
        out = pieces[0]
        for field, piece in zip(self.fields, pieces[1:], strict=True):
            out += str(values[field]) + piece
        return out


def load_template(name_or_path: str) -> PromptTemplate:
    """A shipped template by name (`video`, `image`, `image_ocr`) or a YAML file by path."""
    looks_like_path = name_or_path.lower().endswith((".yaml", ".yml")) or "/" in name_or_path or "\\" in name_or_path
    if looks_like_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise InputError(f"prompt template '{name_or_path}' does not exist", _HINT_NAMES)
    else:
        found = [d / f"{name_or_path}.yaml" for d in presets_dirs() if (d / f"{name_or_path}.yaml").is_file()]
        if not found:
            known = ", ".join(available_templates()) or "none found"
            raise InputError(f"unknown prompt template '{name_or_path}' (known: {known})", _HINT_NAMES)
        path = found[0]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read prompt template '{path}': {exc.__class__.__name__}", "check the YAML syntax") from None
    return _parse(data, path)


def _parse(data: object, path: Path) -> PromptTemplate:
    if not isinstance(data, dict):
        raise InputError(f"prompt template '{path}' is not a mapping", "write name:, kind:, prompt: and fields: keys")
    unknown = set(data) - {"name", "kind", "prompt", "fields", "description"}
    if unknown:
        raise InputError(f"prompt template '{path}' has unknown keys: {', '.join(sorted(unknown))}", "allowed: name, kind, prompt, fields, description")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"prompt template '{path}' has no prompt text", "add a non-empty `prompt:`")
    kind = data.get("kind", "video")
    if kind not in KINDS:
        raise InputError(f"prompt template '{path}' has kind '{kind}'", "use kind: video or kind: image")
    fields = tuple(data.get("fields") or ())
    bad = [f for f in fields if f not in KNOWN_FIELDS]
    if bad:
        raise InputError(f"prompt template '{path}' uses unknown fields: {', '.join(map(str, bad))}", f"fields can be {', '.join(KNOWN_FIELDS)}")
    if prompt.count("{}") != len(fields):
        raise InputError(
            f"prompt template '{path}' has {prompt.count('{}')} '{{}}' placeholders but {len(fields)} fields",
            "list one field per '{}' in `fields:`",
        )
    return PromptTemplate(str(data.get("name") or path.stem), kind, prompt.strip(), fields, str(data.get("description") or ""))
