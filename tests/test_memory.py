"""Memory estimates from shapes (osp_core.memory): against the measurements in benchmarks/README.md
and docs/speed-and-memory.md's denoising figures, and the refusals that name what would fit."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest
import torch

from osp_core import memory
from osp_core.errors import InsufficientMemoryError
from osp_core.memory import t2v_sample_memory, vae_memory

GB = 1e9
MB = 1e6


@pytest.fixture(scope="module")
def vae_config(reference_dir):
    return json.loads((reference_dir / "vae_v1.1.0_config.json").read_text())


@pytest.fixture(scope="module")
def t2v_config(reference_dir):
    return json.loads((reference_dir / "t2v_v1.1.0_65x512x512_config.json").read_text())


def test_vae_activations_follow_the_benchmark(vae_config):
    """benchmarks/README.md (fp32, 256x256, untiled): activations 2186 MB to encode 17 frames,
    8282 MB for 65; 4070 MB to decode 17, 14753 MB for 65. Estimates stay within -10%/+25%."""
    for op, frames, measured in (("encode", 17, 2186), ("encode", 65, 8282), ("decode", 17, 4070), ("decode", 65, 14753)):
        estimate = vae_memory(vae_config, op, frames, 256, 256, num_params=0, tiled=False).parts["activations"]
        assert 0.9 * measured * MB <= estimate <= 1.25 * measured * MB, (op, frames, estimate / MB)
    # tiles cap the activations: 221 frames at 512x512 need what one 65x256x256 tile needs
    long = vae_memory(vae_config, "decode", 221, 512, 512, num_params=0, tiled=True, dtype=torch.bfloat16)
    tile = vae_memory(vae_config, "decode", 65, 256, 256, num_params=0, tiled=True, dtype=torch.bfloat16)
    assert long.parts["activations"] == tile.parts["activations"]
    assert vae_memory(vae_config, "decode", 221, 512, 512, num_params=0, tiled=False, dtype=torch.bfloat16).parts["activations"] > 8 * long.parts["activations"]
    assert vae_memory(vae_config, "encode", 17, 64, 64, num_params=10**6).parts["weights"] == 4 * 10**6


def test_t2v_estimate_phases_and_batch(t2v_config, vae_config):
    """docs/speed-and-memory.md: 65x512x512 is 17,408 tokens per video, 34,816 with guidance; one hidden state
    (width 1152, bf16) is 80 MB; weights are T5 9.5 GB, LatteT2V 2.1 GB, VAE 0.5 GB."""
    estimate = functools.partial(
        t2v_sample_memory, frames=65, height=512, width=512, transformer_config=t2v_config, transformer_params=1_060_000_000,
        vae_config=vae_config, vae_params=250_000_000, text_encoder_params=4_760_000_000, dtype=torch.bfloat16,
    )  # fmt: skip
    default = estimate()
    hidden = 34_816 * 1152 * 2
    assert hidden == pytest.approx(80 * MB, rel=0.01)
    assert default.denoise.parts["activations"] == memory.TRANSFORMER_ACTIVATIONS * hidden
    assert default.denoise.parts["transformer weights"] == pytest.approx(2.12 * GB) and default.denoise.parts["VAE weights"] == pytest.approx(0.5 * GB)
    assert default.text_encoder.total == pytest.approx(9.5 * GB, rel=0.02)
    assert default.peak == max(default.text_encoder.total, default.denoise.total, default.decode.total) < 24 * GB  # docs/speed-and-memory.md: defaults fit 24 GB
    assert 2.6 * GB < default.denoise.total < 5 * GB  # docs/speed-and-memory.md: 2.6 GB of weights + 1 to 2 GB
    # guidance doubles the denoising batch; more videos scale it; offload keeps one model per phase
    assert estimate(guidance=False).denoise.parts["activations"] == default.denoise.parts["activations"] // 2
    assert estimate(num_videos=3).denoise.parts["activations"] == 3 * default.denoise.parts["activations"]
    assert estimate(num_videos=3).decode.parts["activations"] == 3 * default.decode.parts["activations"]
    offloaded = estimate(offload=True)
    assert "VAE weights" not in offloaded.denoise.parts and "transformer weights" not in offloaded.decode.parts
    assert estimate(tiled=False).decode.total > default.decode.total
    assert estimate(frames=221).denoise.parts["activations"] == pytest.approx(default.denoise.parts["activations"] * 56 / 17)
    # a tiny model with math attention also holds the score matrices
    math_cfg = {**t2v_config, "attention_mode": "math"}
    assert "attention scores" in estimate(transformer_config=math_cfg).denoise.parts


def t2v_estimate(t2v_config, vae_config):
    """estimate_for(frames, height, width, num_videos) of the released model in bf16."""
    return lambda f, h, w, n: t2v_sample_memory(
        frames=f, height=h, width=w, num_videos=n, transformer_config=t2v_config, transformer_params=1_060_000_000,
        vae_config=vae_config, vae_params=250_000_000, text_encoder_params=4_760_000_000, dtype=torch.bfloat16,
    )  # fmt: skip


def test_refusal_hints_change_what_the_user_asked_for(t2v_config, vae_config, monkeypatch):
    """--frames 100001 was told "the models alone do not fit: try --offload"; --height 100000
    (width left alone) was told to halve the width as well."""
    monkeypatch.setattr(memory, "available_memory", lambda device: 12 * GB)
    estimate_for = t2v_estimate(t2v_config, vae_config)
    with pytest.raises(InsufficientMemoryError, match=r"use --frames (\d+) or fewer\)$") as info:
        memory.check_t2v_sample_memory(estimate_for, 100_001, 512, 512, 1, "cuda", given=["frames"])
    frames = int(info.value.hint.split()[2])
    assert (frames - 1) % 4 == 0 and estimate_for(frames, 512, 512, 1).peak <= 12 * GB < estimate_for(frames + 4, 512, 512, 1).peak
    with pytest.raises(InsufficientMemoryError, match=r"use --height (\d+) or smaller\)$") as info:
        memory.check_t2v_sample_memory(estimate_for, 65, 100_000, 512, 1, "cuda", given=["height"])
    height = int(info.value.hint.split()[2])
    assert height % 16 == 0 and estimate_for(65, height, 512, 1).peak <= 12 * GB < estimate_for(65, height + 16, 512, 1).peak
    # with both sides to change, the short side is the multiple of 16 nearest the aspect ratio's
    # (it was floored: 74992x32 for 100000x64, a width of 48 in the ratio asked for)
    h, w = memory.largest_fitting_size(lambda h, w: estimate_for(65, h, w, 1).peak, 100_000, 64, 12 * GB, multiple=16)
    assert abs(w - h * 64 / 100_000) <= 8, (h, w)


def test_refusals_name_what_would_fit(t2v_config, vae_config, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 12 * GB)
    estimate_for = t2v_estimate(t2v_config, vae_config)
    assert memory.check_t2v_sample_memory(estimate_for, 65, 512, 512, 1, "cuda").peak < 12 * GB
    with pytest.raises(InsufficientMemoryError, match=r"--num-videos \d") as info:
        memory.check_t2v_sample_memory(estimate_for, 65, 512, 512, 16, "cuda")
    assert info.value.exit_code == 2
    with pytest.raises(InsufficientMemoryError, match=r"--height (\d+) --width (\d+)") as info:
        memory.check_t2v_sample_memory(estimate_for, 65, 4096, 2048, 1, "cuda", given=["height", "width"])
    h, w = map(int, info.value.hint.split("--height ")[1].replace("--width ", "").split()[:2])
    assert h % 16 == 0 and w % 16 == 0 and abs(h / w - 2) < 0.05  # the aspect ratio asked for
    assert estimate_for(65, h, w, 1).peak <= 12 * GB < estimate_for(65, int(h * 1.1), int(w * 1.1), 1).peak  # the largest that fits
    with pytest.raises(InsufficientMemoryError, match="leave out --no-tile"):
        memory.check_vae_memory(vae_config, "decode", 65, 512, 512, num_params=250_000_000, device="cuda", dtype=torch.bfloat16, tiled=False, resizable=False)
    with pytest.raises(InsufficientMemoryError, match="at most \\d+ frames"):
        memory.check_vae_memory(vae_config, "decode", 513, 2048, 2048, num_params=250_000_000, device="cuda", dtype=torch.float32, tiled=True, resizable=False)


def test_available_memory_on_cpu_and_oom_as_one_line():
    free = memory.available_memory("cpu")
    if sys.platform == "linux":  # MemAvailable of /proc/meminfo: what the refusals compare against
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
        assert isinstance(free, int) and abs(free - available) < 0.1 * available
    else:
        assert free is None or free > 0
    for message in ("CUDA out of memory. Tried to allocate 20.00 GiB", "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 120000000000 bytes"):
        with pytest.raises(InsufficientMemoryError, match="out of memory while decoding") as info:
            with memory.oom_as_error("decoding 65x512x512", "use tiling"):
                raise RuntimeError(message)
        assert "\n" not in str(info.value) and info.value.exit_code == 2
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with memory.oom_as_error("decoding", "hint"):
            raise RuntimeError("shape mismatch")


def test_training_estimate_counts_optimizer_states_activations_and_checkpointing(t2v_config, vae_config):
    """A step of `osp t2v train` at 65x512x512 (bf16): fp32 weights, gradients and two AdamW
    states of the transformer; activations of every block kept for backward, fewer with
    activation checkpointing; the untiled VAE encode when it is larger."""
    blocks = 2 * int(t2v_config["num_layers"])  # a spatial and a temporal block per layer
    estimate = functools.partial(
        memory.t2v_train_memory, frames=65, height=512, width=512, batch_size=1, transformer_config=t2v_config, transformer_params=1_060_000_000,
        num_blocks=blocks, vae_config=vae_config, vae_params=250_000_000, text_encoder_params=4_760_000_000,
        frozen_dtype=torch.bfloat16, text_dtype=torch.bfloat16, activation_dtype=torch.bfloat16,
    )  # fmt: skip
    default = estimate()
    assert default.parts["transformer weights"] == default.parts["gradients"] == 4 * 1_060_000_000
    assert default.parts["optimizer states"] == 8 * 1_060_000_000
    assert default.parts["text encoder weights"] == pytest.approx(9.5 * GB, rel=0.01) and default.parts["VAE weights"] == 500_000_000
    hidden = 17_408 * 1152 * 2  # one sample's tokens (docs/speed-and-memory.md: 17,408 at 65x512x512) x width, bf16
    assert default.parts["activations"] == blocks * memory.TRANSFORMER_ACTIVATIONS * hidden
    encode = vae_memory(vae_config, "encode", 65, 512, 512, num_params=0, dtype=torch.bfloat16, tiled=False).parts["activations"]
    # checkpointing every block keeps each block's input and one recomputed block; then the VAE encode is the larger
    assert estimate(checkpoint_every=1).parts["activations"] == max(encode, (blocks + memory.TRANSFORMER_ACTIVATIONS) * hidden)
    assert estimate(checkpoint_every=1).total < estimate(checkpoint_every=4).total < default.total
    assert estimate(batch_size=2).parts["activations"] == 2 * default.parts["activations"]
    assert estimate(use_image_num=4).parts["activations"] == pytest.approx(default.parts["activations"] * 21 / 17)
    assert estimate(sequence_parallel=2).parts["activations"] == max(encode, default.parts["activations"] // 2)  # every rank encodes its clip
    sharded = estimate(shards=4)
    assert sharded.parts["optimizer states"] == default.parts["optimizer states"] // 4 and sharded.parts["VAE weights"] == default.parts["VAE weights"]
    assert estimate(ema=True).total == default.total + 4 * 1_060_000_000
    assert estimate(height=100_000, width=100_000).total > 1e14  # the size: far beyond any device


def test_training_refusals_name_what_would_fit(t2v_config, vae_config, monkeypatch):
    blocks = 2 * int(t2v_config["num_layers"])

    def estimate_for(h: int, w: int, batch: int, every: int) -> memory.MemoryEstimate:
        return memory.t2v_train_memory(
            frames=65, height=h, width=w, batch_size=batch, transformer_config=t2v_config, transformer_params=1_060_000_000, num_blocks=blocks,
            vae_config=vae_config, vae_params=250_000_000, text_encoder_params=4_760_000_000, frozen_dtype=torch.bfloat16,
            text_dtype=torch.bfloat16, activation_dtype=torch.bfloat16, checkpoint_every=every,
        )  # fmt: skip

    def refusal(budget: float, h: int, w: int, batch: int, every: int) -> InsufficientMemoryError:
        monkeypatch.setattr(memory, "available_memory", lambda device: int(budget))
        with pytest.raises(InsufficientMemoryError) as info:
            memory.check_t2v_train_memory(estimate_for, h, w, batch, every, "cuda")
        assert info.value.exit_code == 2 and f"{h}x{w}" in info.value.message
        return info.value

    one = estimate_for(512, 512, 1, 0).total
    monkeypatch.setattr(memory, "available_memory", lambda device: one)
    assert memory.check_t2v_train_memory(estimate_for, 512, 512, 1, 0, "cuda").total == one  # fits exactly: no refusal
    assert "--batch-size 1 or less" in refusal(one, 512, 512, 3, 0).hint
    checkpointed = estimate_for(512, 512, 1, 1).total
    assert "--set parallel.activation_checkpointing=1" in refusal(checkpointed, 512, 512, 1, 0).hint
    hint = refusal(checkpointed, 1024, 2048, 2, 1).hint
    h, w = map(int, hint.split("--size ")[1].split()[0].split("x"))
    assert h % 16 == 0 and w % 16 == 0 and abs(w / h - 2) < 0.05 and "--batch-size 1" in hint and "activation_checkpointing" not in hint
    assert estimate_for(h, w, 1, 1).total <= checkpointed < estimate_for(int(h * 1.1), int(w * 1.1), 1, 1).total
    assert "--strategy fsdp" in refusal(20 * GB, 512, 512, 1, 0).hint  # weights and optimizer states alone are 26 GB


@pytest.mark.parametrize("feed_forward", ["gated-gelu", "relu"])
def test_text_encoder_training_activations_follow_what_t5_saves(feed_forward):
    """What a T5 encoder with LoRA adapters (the frozen weights excluded) keeps for backward,
    counted with saved_tensors_hooks, against `text_encoder_train_activations`: the estimate
    covers it and stays within +35% (the score rows are counted whole)."""
    from transformers import T5Config, T5EncoderModel

    from osp_core.models.lora import add_lora
    from osp_core.pipelines.lora_inputs import TEXT_PATTERN

    config = T5Config(d_model=256, d_ff=704, num_heads=4, d_kv=48, num_layers=2, feed_forward_proj=feed_forward, vocab_size=300)
    encoder = T5EncoderModel(config).eval().requires_grad_(False)
    add_lora(encoder, 4, 4, 0.0, TEXT_PATTERN)
    weights = {p.data_ptr() for p in encoder.parameters()}
    saved: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in weights:  # a tensor saved twice counts once
            saved[(t.data_ptr(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    rows, tokens = 3, 64
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        encoder(torch.randint(0, 300, (rows, tokens)), attention_mask=torch.ones(rows, tokens, dtype=torch.long))
    measured = sum(saved.values())
    estimate = memory.text_encoder_train_activations(config.to_dict(), rows, tokens, torch.float32)
    assert measured <= estimate <= 1.35 * measured, (estimate, measured)


def test_training_estimate_counts_text_encoder_activations(t2v_config, vae_config):
    """LoRA on T5-XXL at 300 tokens in bf16: about 1.8 GB a caption, held beside the transformer's."""
    t5_xxl = {"d_model": 4096, "d_ff": 10240, "num_heads": 64, "d_kv": 64, "num_layers": 24, "feed_forward_proj": "gated-gelu"}
    estimate = functools.partial(
        memory.t2v_train_memory, frames=65, height=512, width=512, batch_size=1, transformer_config=t2v_config, transformer_params=1_060_000_000,
        num_blocks=56, vae_config=vae_config, vae_params=250_000_000, text_encoder_params=4_760_000_000, text_dtype=torch.bfloat16,
        trained_params=30_000_000, text_encoder_config=t5_xxl,
    )  # fmt: skip
    assert "text encoder activations" not in estimate().parts
    three = estimate(text_backward_rows=3)  # a clip's caption, a preserve caption, the empty caption
    assert 1.7 * GB <= three.parts["text encoder activations"] / 3 <= 2.0 * GB
    assert three.total == estimate().total + three.parts["text encoder activations"]
