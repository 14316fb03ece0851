"""Seconds per denoising step and peak accelerator memory of full-size text-to-video
(v1.1.0 LatteT2V + CausalVideoVAE with random weights; T5 replaced by random 4096-d prompt
states, since it only runs once per prompt).

    python benchmarks/t2v.py --device cuda --dtype fp16                 # 65x512x512, 10 steps
    python benchmarks/t2v.py --device cuda --dtype fp16 --frames 221 --json
    python benchmarks/t2v.py --device cuda --dtype bf16 --cache teacache --compile
    python benchmarks/t2v.py --device cpu --tiny --steps 2             # smoke test on the tiny repo configs
    python benchmarks/t2v.py --device cuda --dtype bf16 --speed fast   # a whole video of a --speed profile

Prints a JSON record: seconds per step (after one warm-up step), decode seconds, and the peak
memory of the denoising and decoding phases (torch.cuda.max_memory_allocated). With --cache the
record adds the cache's counts (TeaCache uses the published v1.1.0 coefficients; on random
weights its skips say nothing about quality, only about what a skipped step saves).
With --speed the whole video of that profile of the released weights runs (its scheduler, steps,
cache, threshold and guidance interval, as `osp t2v sample --speed` resolves them), after a
short warm-up run, and the record adds the denoising and per-video seconds.
benchmarks/gpu_sampling.sh runs the whole GPU table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"


def _configs(tiny: bool, frames: int) -> tuple[dict, dict]:
    if tiny:
        repo = REFERENCE / "pipeline" / "tiny-osp-v1.1.0"
        return json.loads((repo / "9x32x32" / "config.json").read_text()), json.loads((repo / "vae" / "config.json").read_text())
    version = "65x512x512" if frames <= 65 else "221x512x512"
    return (
        json.loads((REFERENCE / f"t2v_v1.1.0_{version}_config.json").read_text()),
        json.loads((REFERENCE / "vae_v1.1.0_config.json").read_text()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=65)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="timed denoising steps (DDIM; PNDM costs the same per model call)")
    parser.add_argument("--tokens", type=int, default=120, help="prompt length in T5 tokens")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--no-tile", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="use the tiny reference repo configs (CPU smoke test)")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of indented JSON")
    parser.add_argument("--attention", default="auto", help="attention backend (auto, sdpa, math, flash, npu)")
    parser.add_argument("--cache", default="none", help="none, pab, teacache, fbcache, easycache or fastercache (magcache needs fitted ratios)")
    parser.add_argument("--cache-threshold", type=float, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    parser.add_argument("--speed", default=None, help="default, fast or fastest: a whole video of the released weights' profile (overrides --steps, --cache, --cache-threshold)")
    args = parser.parse_args()

    import torch

    from osp_core.device import resolve
    from osp_core.models.attention import resolve_attention_backend, set_attention_backend
    from osp_core.models.causal_vae import CausalVideoVAE
    from osp_core.models.latte_t2v import LatteT2V
    from osp_core.pipelines.caching import make_cache
    from osp_core.pipelines.denoising import StepProgress
    from osp_core.pipelines.repository import RELEASED_TEACACHE_COEFFICIENTS, RELEASED_TEACACHE_THRESHOLD
    from osp_core.jobs.sampling import compile_blocks
    from osp_core.pipelines.t2v import PromptEmbeddings, T2VPipeline, make_scheduler
    from osp_core.hub import DEFAULT_REPO
    from osp_core.pipelines.denoising import GuidanceInterval
    from osp_core.pipelines.repository import ModelRepository
    from osp_core.pipelines.t2v_inputs import fewest_steps, resolve_speed

    released = ModelRepository.resolve(DEFAULT_REPO).sampling  # known without the Hub
    # the profile as `osp t2v sample --speed` resolves it; without --speed: DDIM, --steps timed + 1 warm-up
    speed = resolve_speed(args.speed, released, "DDIM", None, args.cache, args.cache_threshold) if args.speed is None else resolve_speed(args.speed, released)
    steps = speed.steps if args.speed is not None else args.steps + 1

    device, dtype = resolve(args.device, args.dtype)
    attention = resolve_attention_backend(args.attention, device, dtype)
    size = 32 if args.tiny else args.size
    frames = 9 if args.tiny else args.frames
    transformer_config, vae_config = _configs(args.tiny, frames)
    torch.manual_seed(0)
    transformer = LatteT2V.from_config(transformer_config).to(device, dtype).eval()
    vae = CausalVideoVAE.from_config(vae_config).to(device, dtype).eval()
    if not args.no_tile:
        vae.enable_tiling()
    set_attention_backend(transformer, attention)
    set_attention_backend(vae, attention)
    if args.compile:
        compile_blocks(transformer)
    cache = make_cache(speed.cache, speed.cache_threshold, {"teacache_coefficients": RELEASED_TEACACHE_COEFFICIENTS, "teacache_threshold": RELEASED_TEACACHE_THRESHOLD})
    if cache is not None:
        cache.attach(transformer)
    interval = GuidanceInterval(*speed.guidance_interval) if speed.guidance_interval is not None else None
    pipe = T2VPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=make_scheduler(speed.scheduler))
    pipe.set_progress_bar_config(disable=True)

    channels = transformer.config.caption_channels
    states = torch.randn(1, args.tokens, channels, device=device, dtype=dtype)
    mask = torch.ones(1, args.tokens, dtype=torch.long, device=device)
    embeds = PromptEmbeddings(states, mask, torch.randn_like(states), mask.clone(), [""])

    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    step_times: list[float] = []
    last = [0.0]

    def on_step(step: int, total: int) -> None:
        sync()
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    def sample(num_steps: int) -> torch.Tensor:
        return pipe(
            prompt_embeds=embeds, num_frames=frames, height=size, width=size, num_inference_steps=num_steps,
            guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(0), output_type="latent",
            callbacks=[c for c in (cache, interval) if c is not None] + [StepProgress(on_step)],
        ).frames  # fmt: skip

    if args.speed is not None:  # kernels chosen and compiled before the timed video
        sample(max(2, fewest_steps(speed.scheduler)))
        step_times.clear()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    weights_gb = torch.cuda.memory_allocated() / 2**30 if cuda else None
    sync()
    last[0] = time.perf_counter()
    started = last[0]
    latents = sample(steps)
    sync()
    denoise_seconds = time.perf_counter() - started
    denoise_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    video = pipe.decode_latents(latents)
    sync()
    decode_seconds = time.perf_counter() - start
    decode_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    timed = step_times[1:] or step_times  # the first step includes warm-up
    record = {
        "device": torch.cuda.get_device_name() if cuda else str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "video": f"{frames}x{size}x{size}",
        "latents": list(latents.shape),
        "video_shape": list(video.shape),
        "cfg_batch": 2,
        "seconds_per_step": round(sum(timed) / len(timed), 4),
        "first_step_seconds": round(step_times[0], 4),
        "decode_seconds": round(decode_seconds, 3),
        "tiled_decode": not args.no_tile,
        "weights_gb": None if weights_gb is None else round(weights_gb, 2),
        "peak_denoise_gb": None if denoise_peak is None else round(denoise_peak, 2),
        "peak_decode_gb": None if decode_peak is None else round(decode_peak, 2),
        "transformer_params": sum(p.numel() for p in transformer.parameters()),
        "attention": attention,
        "compile": args.compile,
        "cache": cache.describe() if cache is not None else {"method": "none"},
        "speed": speed.speed if args.speed is not None else None,
        "scheduler": speed.scheduler,
        "steps": steps,
        "guidance_interval": list(speed.guidance_interval) if speed.guidance_interval is not None else None,
        "denoise_seconds": round(denoise_seconds, 3),
        "seconds_per_video": round(denoise_seconds + decode_seconds, 3),  # T5 left out: it runs once per prompt
    }
    print(json.dumps(record) if args.json else json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
