"""On-disk cache of frozen-encoder outputs (VAE latent moments, T5 states), one safetensors file
per sample, content-addressed: the key names the exact clip (file, size, mtime, window, size)
or caption and the encoder that produced it, so a changed file or encoder never hits a stale entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..io.atomic import ensure_writable_dir, save_safetensors


def text_key(caption: str, encoder_id: str, max_tokens: int) -> str:
    return hashlib.sha1(f"{encoder_id}\0{max_tokens}\0{caption}".encode()).hexdigest()


def encoder_key(sample_key: str, encoder_id: str) -> str:
    return hashlib.sha1(f"{encoder_id}\0{sample_key}".encode()).hexdigest()


def _entry_path(root: Path, kind: str, key: str) -> Path:
    return root / kind / key[:2] / f"{key}.safetensors"


class FeatureCache:
    """`get`/`put` of small tensor dicts under `root/<kind>/<key[:2]>/<key>.safetensors`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()  # a preset's ~/.cache/osp/...
        ensure_writable_dir(self.root)
        self.hits = 0
        self.misses = 0

    def _path(self, kind: str, key: str) -> Path:
        return _entry_path(self.root, kind, key)

    def get(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        path = self._path(kind, key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            tensors = load_file(str(path))
        except Exception:  # a truncated file from a killed run: recompute (the put replaces it)
            self.misses += 1
            return None
        self.hits += 1
        return tensors

    def put(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(path, tensors)  # atomic: concurrent ranks writing the same key is harmless


@dataclass(frozen=True)
class HasEncoding:
    """Whether the cache under `root` holds `encoder_id`'s `kind` output for a sample key: the
    dataset's `is_cached` (a plain picklable object, so DataLoader workers can take it)."""

    root: Path
    kind: str
    encoder_id: str

    def __call__(self, sample_key: str) -> bool:
        return _entry_path(self.root, self.kind, encoder_key(sample_key, self.encoder_id)).is_file()
