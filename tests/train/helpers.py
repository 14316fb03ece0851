"""Tiny models and generated videos for the training tests (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_VAE = {
    "hidden_size": 32,
    "hidden_size_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "z_channels": 4,
    "embed_dim": 4,
}
TINY_T2V = {
    "num_layers": 1,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "patch_size": 2,
    "caption_channels": 16,
    "cross_attention_dim": 16,
    "in_channels": 4,
    "out_channels": 8,
    "sample_size": [2, 2],
    "video_length": 2,
    "attention_mode": "math",
    "model_max_length": 16,
}


def write_videos(root: Path, count: int = 4, frames: int = 12, size: tuple[int, int] = (40, 48), broken: bool = True) -> Path:
    """`count` moving-gradient mp4 clips (+ one corrupt file) and an annotation JSON; returns a
    data list file `ROOT,ANNOTATION` pointing at them."""
    from osp_core.io import write_video

    media = root / "videos"
    media.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    records = []
    h, w = size
    for i in range(count):
        colour = torch.rand(3, generator=gen) * 200 + 40
        x = torch.arange(w, dtype=torch.float32)
        clip = torch.empty(frames, h, w, 3)
        for t in range(frames):
            ramp = ((x + 3 * t + 11 * i) % w) / w
            clip[t] = (colour.view(1, 1, 3) * ramp.view(1, w, 1)).expand(h, w, 3)
        write_video(media / f"clip{i}.mp4", clip.to(torch.uint8), fps=8)
        records.append({"path": f"clip{i}.mp4", "cap": [f"a gradient moving right, clip {i}"], "frame_idx": f"0:{frames}"})
    if broken:
        (media / "broken.mp4").write_bytes(b"this is not a video")
        records.append({"path": "broken.mp4", "cap": "unreadable"})
    (root / "anno.json").write_text(json.dumps(records))
    data_list = root / "data.txt"
    data_list.write_text(f"{media},{root / 'anno.json'}\n")
    return data_list


def tiny_model_repo(root: Path) -> Path:
    """A model repository like the Hub one: vae/, tiny/ (transformer), text_encoder/, tokenizer/."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    from osp_core.models.causal_vae import CausalVideoVAE
    from osp_core.models.latte_t2v import LatteT2V

    torch.manual_seed(0)
    CausalVideoVAE(**TINY_VAE).save_pretrained(root / "vae")
    LatteT2V(**TINY_T2V).save_pretrained(root / "tiny")
    t5 = T5Config(vocab_size=384, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    T5EncoderModel(t5).save_pretrained(root / "text_encoder")
    ByT5Tokenizer().save_pretrained(root / "tokenizer")
    return root


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: float = 300, launcher: list[str] | None = None):
    """Run `python -m module ARGS` (or under `launcher`, e.g. torchrun) as a user would."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("OSP_DEBUG", None)
    command = [*(launcher or [sys.executable]), "-m", module, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def checkpoint_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint holds for the trained modules (model/, model_ema/, accelerate models)."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(checkpoint.rglob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            out[f"{file.relative_to(checkpoint)}:{key}"] = value
    return out


def sampler_stream(samplers: list, start: int = 0, steps: int = 4) -> tuple[list[list[tuple[int, int]]], list[list[tuple[int, int]]]]:
    """What the ranks' `GlobalBatchSampler`s (one per rank) yield for `steps` steps from global
    position `start`: per step, every rank's and micro-batch's samples in global-position order;
    and each micro-batch as one rank drew it."""
    iters = [iter(s) for s in samplers]
    out, micro_batches = [], []
    for step in range(steps):
        taken = {}
        for sampler, it in zip(samplers, iters):
            for micro in range(sampler.accumulation):
                positions = sampler.step_positions(start + step * sampler.global_batch, micro)
                batch = [next(it) for _ in positions]
                micro_batches.append(batch)
                taken.update(zip(positions, batch))
        out.append([taken[p] for p in sorted(taken)])
    return out, micro_batches
