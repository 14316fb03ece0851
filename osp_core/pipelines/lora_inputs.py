"""LoRA settings and adapter files checked before torch is imported: the training options
(rank, alpha, dropout, which projections), `PATH[:SCALE]` specs, and adapter folders in the
PEFT format (`adapter_config.json` + `adapter_model.safetensors`), read as far as plain Python
can: the config's JSON and the safetensors header (its JSON and the data size it promises).

The tensors themselves are read and fitted to a transformer by `osp_core.models.lora`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, ModelLoadError
from ..hub import BUILTIN_PREFIX, BUILTIN_ROOT

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
"""How PEFT's `PeftModel.save_pretrained` names the tensors of an adapter file."""
BASE_KEY = "osp_base"
"""Safetensors metadata: the base transformer an adapter was trained on (source and probe)."""

_PROJECTIONS = {
    "attention": r"attn1\.(to_q|to_k|to_v|to_out\.0)",
    "cross": r"attn2\.(to_q|to_k|to_v|to_out\.0)",
    "ff": r"ff\.net\.(0\.proj|2)",
}
TARGET_SETS = {
    "spatial": rf"transformer_blocks\.\d+\.({_PROJECTIONS['attention']}|{_PROJECTIONS['ff']})",
    "temporal": rf"temporal_transformer_blocks\.\d+\.({_PROJECTIONS['attention']}|{_PROJECTIONS['ff']})",
    "cross": rf"transformer_blocks\.\d+\.{_PROJECTIONS['cross']}",
}
"""Named sets of LatteT2V projections (regular expressions over whole module names); `all` is
their union."""
TEXT_TARGETS = "text"
"""The `--lora-targets` name of the T5 text encoder's projections (`TEXT_PATTERN`): beside the
transformer's sets (`cross,text`) or alone (`text`: the transformer stays as it is)."""
TEXT_PATTERN = r"encoder\.block\.\d+\.layer\.\d+\.(SelfAttention\.(q|k|v|o)|DenseReluDense\.(wi|wi_0|wi_1|wo))"
"""The T5 encoder's attention and feed-forward projections (T5 v1.0 `wi` and v1.1 `wi_0`/`wi_1`)."""
TEXT_FOLDER = "text_encoder"
"""Where an adapter folder keeps its text encoder part (PEFT's format, as the transformer's part)."""


def split_targets(targets: str) -> tuple[str, bool]:
    """(the transformer's `--lora-targets`, '' for none; whether the text encoder gets
    adapters): `text` may stand in a comma list of named sets; a regex is the transformer's."""
    names = [part.strip() for part in targets.split(",")]
    if TEXT_TARGETS not in names or not all(name in (*TARGET_SETS, "all", TEXT_TARGETS) for name in names):
        return targets, False
    return ",".join(name for name in names if name != TEXT_TARGETS), True


def target_pattern(targets: str) -> str:
    """The regular expression (matched against whole module names, as PEFT's `target_modules`
    string) of `--lora-targets`: a named set, a comma list of them, or a regex of one's own."""
    names = [part.strip() for part in targets.split(",")]
    if all(name in (*TARGET_SETS, "all") for name in names):
        chosen = list(TARGET_SETS) if "all" in names else [n for n in TARGET_SETS if n in names]
        return "|".join(f"({TARGET_SETS[name]})" for name in chosen)
    try:
        re.compile(targets)
    except re.error as exc:
        raise InputError(f"--lora-targets '{targets}' is neither spatial, temporal, cross, all, text nor a valid regular expression ({exc})", "pass e.g. --lora-targets spatial,cross") from None
    return targets


def check_lora_options(rank: int | None, alpha: float | None, dropout: float, targets: str) -> None:
    """One-line `InputError` for LoRA training options that cannot work (the rank against the
    projections' widths and the pattern against the module names need the model: `models.lora`)."""
    if rank is None:
        return
    if rank < 1:
        raise InputError(f"--lora rank must be >= 1, got {rank}", "pass e.g. --lora 16")
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise InputError(f"--lora-alpha must be a number > 0, got {alpha}", "pass e.g. --lora-alpha 16 (default: the rank)")
    if not 0.0 <= dropout < 1.0:
        raise InputError(f"--lora-dropout must be in [0, 1), got {dropout}", "pass e.g. --lora-dropout 0.05")
    if not targets.strip():
        raise InputError("--lora-targets is empty", "pass spatial, temporal, cross, all, text or a regular expression")
    transformer, _ = split_targets(targets)
    if transformer:
        target_pattern(transformer)


@dataclass
class AdapterSpec:
    """An adapter folder and the scale it is applied with; `sha256` of its weights file and
    its `config` once checked (`check_adapter`)."""

    path: Path
    scale: float = 1.0
    sha256: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    transformer: bool = True
    """Whether the folder holds a transformer part (its own adapter_model.safetensors)."""
    text_encoder: bool = False
    """Whether it holds a text encoder part (`text_encoder/`)."""

    def describe(self) -> dict[str, Any]:
        """What a sidecar records of the adapter."""
        parts = {"parts": [name for name, held in (("transformer", self.transformer), (TEXT_FOLDER, self.text_encoder)) if held]} if self.text_encoder else {}
        return {"path": str(self.path), "sha256": self.sha256, "scale": self.scale, **parts}


def parse_adapter_spec(spec: str | Path | tuple[str | Path, float] | AdapterSpec) -> AdapterSpec:
    """`PATH[:SCALE]` (or a (path, scale) pair) as an `AdapterSpec`; a suffix after the last ':'
    is the scale when it reads as a number; `builtin:shapes/lora/orange` is a folder shipped in
    the package (as `--model builtin:shapes`). A scale that is not finite is one `InputError`."""
    if isinstance(spec, AdapterSpec):
        path, scale = spec.path, spec.scale
    elif isinstance(spec, tuple):
        path, scale = Path(spec[0]), spec[1]
    else:
        head, sep, tail = str(spec).rpartition(":")
        number = _number(tail) if sep and head else None
        path, scale = (Path(head), number) if number is not None else (Path(str(spec)), 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise InputError(f"--lora scale of '{path}' must be a finite number, got {scale!r}", "write PATH:SCALE, e.g. run/lora:0.8")
    if str(path).startswith(BUILTIN_PREFIX):
        path = BUILTIN_ROOT / str(path)[len(BUILTIN_PREFIX) :]
    return AdapterSpec(path.expanduser(), float(scale))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The header of a safetensors file (tensor names, dtypes, shapes, offsets; `__metadata__`),
    checked against the file's size; one `ModelLoadError` naming the file and what is wrong."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", raw)
            if length > 100 * 2**20:
                raise ValueError(f"header length {length} is not plausible")
            header = json.loads(handle.read(length).decode("utf-8"))
        size = path.stat().st_size
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"adapter file '{path}' is unreadable: {exc}", "it is truncated or corrupt: write it again (osp t2v train --lora)") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"adapter file '{path}' is unreadable: its header is not a mapping", "it is corrupt: write it again")
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + length + end != size:
        raise ModelLoadError(f"adapter file '{path}' is unreadable: {size} bytes, its header promises {8 + length + end}", "it is truncated or corrupt: write it again")
    return header


def check_adapter(spec: AdapterSpec) -> AdapterSpec:
    """`spec` with its config read and its weights hashed, after checking the folder holds an
    adapter in the PEFT format: the transformer's part in the folder itself and/or the text
    encoder's in `text_encoder/`. A missing path, a missing file, unreadable JSON, a config that
    is not LoRA, or a truncated weights file is one line naming the path."""
    folder = spec.path
    if not folder.exists():
        raise InputError(f"LoRA adapter '{folder}' does not exist", f"pass a folder with {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}, e.g. a training run's lora/")
    if folder.is_file():
        folder = folder.parent if folder.name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) else folder
    parts = [part for part in (folder, folder / TEXT_FOLDER) if (part / ADAPTER_CONFIG).exists() or (part / ADAPTER_WEIGHTS).exists()]
    configs = [_check_part(spec.path, part) for part in parts or [folder]]
    digest = hashlib.sha256()  # both parts' weights, the transformer's first
    for part in parts:
        with (part / ADAPTER_WEIGHTS).open("rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
    return AdapterSpec(folder.absolute(), spec.scale, digest.hexdigest(), configs[0], transformer=folder in parts, text_encoder=folder / TEXT_FOLDER in parts)


def _check_part(given: Path, part: Path) -> dict[str, Any]:
    """The LoRA config of one part of an adapter folder, its files checked (`check_adapter`)."""
    config_file, weights = part / ADAPTER_CONFIG, part / ADAPTER_WEIGHTS
    for needed in (config_file, weights):
        if not needed.is_file():
            where = f"'{given}'" if part == given or part.name != TEXT_FOLDER else f"'{given}' ({TEXT_FOLDER}/)"
            raise InputError(f"LoRA adapter {where} has no {needed.name}", f"pass a folder with {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}, e.g. a training run's lora/")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"adapter config '{config_file}' is unreadable ({type(exc).__name__})", "it is corrupt: write it again") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA" or not isinstance(config.get("r"), int):
        raise ModelLoadError(f"adapter config '{config_file}' is not a PEFT LoRA config (peft_type LORA with a rank r)", "pass an adapter written by osp t2v train --lora or PEFT")
    header = read_safetensors_header(weights)
    if not any(".lora_A." in key for key in header):
        raise ModelLoadError(f"adapter file '{weights}' holds no LoRA tensors (lora_A / lora_B)", "pass an adapter written by osp t2v train --lora or PEFT")
    return config


def check_adapters(specs: list[Any] | None) -> list[AdapterSpec]:
    """Every `--lora` spec parsed and its folder checked (`check_adapter`)."""
    return [check_adapter(parse_adapter_spec(spec)) for spec in specs or []]
