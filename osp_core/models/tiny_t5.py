"""A tiny frozen T5 text encoder with a byte-level tokenizer, built from a seed.

The built-in "shapes" model conditions on text the way Open-Sora-Plan v1.1.0 does (a frozen
T5 encoder, 300 tokens with a mask), only small: a randomly initialised `T5EncoderModel`
(never trained; the transformer learns to read its states) and the ByT5 tokenizer, which
maps UTF-8 bytes to ids and needs no vocabulary file. The same seed and config always give
bit-identical weights, so `make builtin` reproduces the shipped encoder exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io import atomic_dir

# ByT5: 3 special tokens (pad, eos, unk) + 256 byte values + 125 sentinel ids
BYT5_VOCAB_SIZE = 384


@dataclass(frozen=True)
class TinyT5Config:
    """Width and depth of the tiny encoder (T5 v1.1 style: gated GELU, no dropout)."""

    d_model: int = 64
    d_ff: int = 128
    d_kv: int = 16
    num_heads: int = 4
    num_layers: int = 2
    seed: int = 0
    # 0: purely random weights. > 0: each head's relative-position bias is this value at one
    # fixed offset (-1, +1, -2, +2, ...) and 0 elsewhere, so heads read neighbouring bytes and
    # a byte's state depends on its word. With random biases (0) attention is nearly uniform:
    # the same byte gets nearly the same state in every word (mean cosine 0.97 between the
    # occurrences in the shapes captions); at 8 that cosine is 0.44.
    local_attention_bias: float = 0.0


def t5_config(spec: TinyT5Config) -> Any:
    """The transformers `T5Config` of `spec` (encoder only, byte vocabulary)."""
    from transformers import T5Config

    return T5Config(
        vocab_size=BYT5_VOCAB_SIZE,
        d_model=spec.d_model,
        d_ff=spec.d_ff,
        d_kv=spec.d_kv,
        num_heads=spec.num_heads,
        num_layers=spec.num_layers,
        num_decoder_layers=spec.num_layers,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )


def build_tiny_t5(spec: TinyT5Config = TinyT5Config()) -> tuple[Any, Any]:
    """(ByT5Tokenizer, T5EncoderModel in eval mode, fp32) with weights drawn from `spec.seed`."""
    from transformers import ByT5Tokenizer, T5EncoderModel

    for name in ("d_model", "d_ff", "d_kv", "num_heads", "num_layers"):
        if getattr(spec, name) < 1:
            raise InputError(f"tiny T5 {name} must be >= 1, got {getattr(spec, name)}", "use a positive width/depth")
    if spec.local_attention_bias < 0:
        raise InputError(f"tiny T5 local_attention_bias must be >= 0, got {spec.local_attention_bias}", "use 0 (random) or e.g. 8")
    # initialise under a private RNG state: the same seed gives the same weights whatever ran before
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        encoder = T5EncoderModel(t5_config(spec))
    if spec.local_attention_bias:
        _set_local_heads(encoder, spec.local_attention_bias)
    encoder.eval().requires_grad_(False)
    return ByT5Tokenizer(), encoder


def _set_local_heads(encoder: Any, strength: float) -> None:
    """Head h attends to the byte at offset (-1, +1, -2, +2, ...)[h]: its relative-position
    bias (shared by all layers, stored in the first) is `strength` there and 0 elsewhere."""
    from transformers.models.t5.modeling_t5 import T5Attention

    config = encoder.config
    attention = encoder.encoder.block[0].layer[0].SelfAttention
    table = torch.zeros_like(attention.relative_attention_bias.weight)  # (buckets, heads)
    for head in range(config.num_heads):
        offset = (head // 2 + 1) * (-1 if head % 2 == 0 else 1)
        bucket = T5Attention._relative_position_bucket(
            torch.tensor(offset), bidirectional=True, num_buckets=config.relative_attention_num_buckets, max_distance=config.relative_attention_max_distance
        )  # fmt: skip
        table[int(bucket), head] = strength
    with torch.no_grad():
        attention.relative_attention_bias.weight.copy_(table)


def save_tiny_t5(out_dir: str | Path, spec: TinyT5Config = TinyT5Config(), overwrite: bool = False) -> Path:
    """Write `text_encoder/` (config.json + model.safetensors) and `tokenizer/` into `out_dir`
    (a model repository); each folder is written to a temporary name and renamed when complete."""
    out = Path(out_dir)
    targets = [out / "text_encoder", out / "tokenizer"]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise InputError(f"'{existing[0]}' already exists", "pass overwrite=True (or --overwrite) or another folder")
    tokenizer, encoder = build_tiny_t5(spec)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "text_encoder") as tmp:
        encoder.save_pretrained(str(tmp), safe_serialization=True)
        # record how it was made, so a reader can rebuild it
        (tmp / "tiny_t5.json").write_text(_json(asdict(spec)))
    with atomic_dir(out / "tokenizer") as tmp:
        tokenizer.save_pretrained(str(tmp))
    return out


def _json(data: dict) -> str:
    from ..io import json_dumps

    return json_dumps(data, indent=2) + "\n"
