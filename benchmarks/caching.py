"""Sampling caches (none / pab / teacache / fbcache / magcache / easycache / fastercache) and
dtypes, measured on the same machine in one run.

  python benchmarks/caching.py shapes [--out DIR] [--chunks 5] [--captions 60] [--dtypes fp32 bf16]
                                     [--caches none pab teacache:0.05 teacache:0.1 teacache:0.2]
      (any `--cache` value, with ":THRESHOLD" for the threshold caches: fbcache:0.05, easycache:0.05,
      magcache:0.06 once builtin:shapes has its ratios, fastercache)
      builtin:shapes, the 60 captions of its world with seeds 0-59, 150 PNDM steps, guidance
      7.5 (what `osp t2v sample --model builtin:shapes` does): seconds per video, transformer
      evaluations, `osp eval shapes` accuracy and PSNR of each setting's videos against the
      uncached float32 ones. The captions are split into chunks and the settings alternate
      chunk by chunk, so load on the machine falls on all of them alike.
  python benchmarks/caching.py wide [--layers 2] [--frames 56] [--size 16] [--steps 20] [--thresholds 0.1]
      the full-width LatteT2V (width 1152, 16 heads, T5-XXL caption width) with random weights,
      221-frame-shaped latents (56 latent frames), for speed only: seconds per denoising run and
      transformer evaluations per cache (TeaCache with coefficients fitted to these weights in
      one untimed run first).

Prints a markdown table and writes JSON next to the videos.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

DEFAULT_CACHES = ("none", "pab", "teacache:0.05", "teacache:0.1", "teacache:0.2")


def settings_from(dtypes: list[str], caches: list[str]) -> list[tuple[str, str, str, float | None]]:
    """(name, dtype, cache, threshold) for each dtype x cache ("teacache:0.1" sets a threshold);
    "none DTYPE" is each dtype's reference."""
    settings = []
    for dtype in dtypes:
        for spec in ("none", *[c for c in caches if c != "none"]):
            cache, _, threshold = spec.partition(":")
            name = f"{cache} {threshold} {dtype}" if threshold else f"{cache} {dtype}"
            settings.append((name, dtype, cache, float(threshold) if threshold else None))
    return settings


def shapes(args: argparse.Namespace) -> None:
    from osp_core.data.shapes import all_captions, parse_caption
    from osp_core.eval.shapes import accuracy, measure
    from osp_core.io import read_video
    from osp_core.metrics import psnr
    from osp_core.jobs.sampling import run_sampling
    from osp_core.jobs.sampling_plan import SamplingJob

    captions = all_captions()[: args.captions]
    chunk = -(-len(captions) // args.chunks)
    settings = settings_from(args.dtypes, args.caches)
    results = {name: {"seconds": 0.0, "videos": [], "evaluations": 0} for name, *_ in settings}
    rounds = [(r, start) for r in range(args.seeds) for start in range(0, len(captions), chunk)]
    for r, start in rounds:
        for name, dtype, cache, threshold in settings:
            job = SamplingJob(
                prompts=captions[start : start + chunk],
                model="builtin:shapes",
                # caption k gets seed k (as the build's evaluation), then k + 60, k + 120, ...
                seed=start + r * len(all_captions()),
                output_dir=args.out / name.replace(" ", "-"),
                overwrite=True,
                dtype=None if dtype == "default" else dtype,
                cache=cache,
                cache_threshold=threshold,
            )
            summary = run_sampling(job)
            for video in summary.videos:
                results[name]["seconds"] += video["seconds"]["denoise"] + video["seconds"]["decode"]
                results[name]["evaluations"] += video["settings"]["cache"].get("transformer_evaluations", 0) or 0
                results[name]["videos"].append(video)
            print(f"{name}: seed round {r + 1}/{args.seeds}, {start + len(job.prompts)}/{len(captions)}", flush=True)

    # each setting's videos against the uncached ones of its dtype (and bf16's against fp32's)
    references = {dtype: f"none {dtype}" for _, dtype, _, _ in settings}
    base = {name: {(v["prompt"], v["seed"]): read_video(v["video"]).frames for v in results[name]["videos"]} for name in references.values() if name in results}
    rows = []
    for name, dtype, cache, threshold in settings:
        videos = results[name]["videos"]
        reference = references[dtype] if name != references[dtype] else ("none fp32" if dtype != "fp32" else None)
        graded, psnrs = [], []
        for video in videos:
            frames = read_video(video["video"]).frames
            row = measure(frames).to_dict()
            row["expected_color"], row["expected_shape"], row["expected_direction"] = parse_caption(video["prompt"])
            graded.append(row)
            if reference in base:
                psnrs.append(psnr(base[reference][(video["prompt"], video["seed"])], frames))
        evaluations = results[name]["evaluations"] / len(videos) if cache != "none" else None
        rows.append(
            {
                "setting": name,
                "seconds_per_video": results[name]["seconds"] / len(videos),
                "transformer_evaluations": evaluations,
                "color": accuracy(graded, "color"),
                "shape": accuracy(graded, "shape"),
                "direction": accuracy(graded, "direction"),
                "psnr_reference": reference,
                "psnr": sum(psnrs) / len(psnrs) if psnrs else None,
            }
        )
    seconds = {r["setting"]: r["seconds_per_video"] for r in rows}
    print("\n| setting | s / video | speed-up vs none, same dtype | transformer evaluations | color | shape | direction | PSNR (vs) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r, (_, dtype, _, _) in zip(rows, settings):
        evaluations = "159 (all)" if r["transformer_evaluations"] is None else f"{r['transformer_evaluations']:.1f}"
        psnr_text = "-" if r["psnr"] is None else f"{r['psnr']:.1f} dB ({r['psnr_reference']})"
        base_seconds = seconds.get(references[dtype], r["seconds_per_video"])
        print(
            f"| {r['setting']} | {r['seconds_per_video']:.2f} | {base_seconds / r['seconds_per_video']:.2f}x | {evaluations} | "
            f"{r['color']:.1%} | {r['shape']:.1%} | {r['direction']:.1%} | {psnr_text} |"
        )
    (args.out / "caching.json").write_text(json.dumps(rows, indent=2))


def wide(args: argparse.Namespace) -> None:
    from diffusers import PNDMScheduler

    from osp_core.models.latte_t2v import LatteT2V
    from osp_core.pipelines.caching import PABSettings, PyramidAttentionBroadcast, TeaCache, TeaCacheCalibration, fit_teacache_coefficients
    from osp_core.pipelines.denoising import denoise
    from osp_core.pipelines.repository import RELEASED_TEACACHE_COEFFICIENTS, RELEASED_TEACACHE_THRESHOLD

    reference = Path(__file__).resolve().parents[2] / "shared" / "reference" / "t2v_v1.1.0_221x512x512_config.json"
    config = {k: v for k, v in json.loads(reference.read_text()).items() if not k.startswith("_")}
    config.update(num_layers=args.layers, sample_size=[args.size, args.size])
    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = LatteT2V(**config).eval().to(dtype)
    captions = torch.randn(2, 120, config["caption_channels"], dtype=dtype)
    noise = torch.randn(1, 4, args.frames, args.size, args.size)

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x.to(dtype), t, captions, return_dict=False)[0][:, :4].float()

    def run(cache) -> tuple[float, int]:
        scheduler = PNDMScheduler()
        scheduler.set_timesteps(args.steps)
        if cache is not None:
            cache.attach(model)
        t0 = time.perf_counter()
        with torch.no_grad():
            denoise(predict, scheduler, noise.clone(), guidance_scale=7.5, callbacks=[cache] if cache else [])
        seconds = time.perf_counter() - t0
        evaluations = len(scheduler.timesteps)
        if cache is not None:
            evaluations = cache.stats().get("transformer_evaluations", evaluations)
            cache.detach()
        return seconds, evaluations

    caches = {"none": lambda: None, "pab": lambda: PyramidAttentionBroadcast(PABSettings())}
    if args.fit_teacache:
        # TeaCache's polynomial is model-specific: the released weights' coefficients say nothing
        # about random weights, so fit this model's first (one untimed run), as calibrate-cache does
        calibration = TeaCacheCalibration()
        run(calibration)
        coefficients = fit_teacache_coefficients(calibration.pairs)
        print(f"fitted TeaCache coefficients: {coefficients}", flush=True)
        for threshold in args.thresholds:
            caches[f"teacache {threshold} (fitted)"] = lambda threshold=threshold: TeaCache(coefficients, threshold)
    else:
        caches[f"teacache {RELEASED_TEACACHE_THRESHOLD} (released coefficients)"] = lambda: TeaCache(RELEASED_TEACACHE_COEFFICIENTS, RELEASED_TEACACHE_THRESHOLD)
    times: dict[str, list[float]] = {name: [] for name in caches}
    evaluations: dict[str, int] = {}
    for _ in range(args.repeats):  # alternate the settings
        for name, make in caches.items():
            seconds, evaluations[name] = run(make())
            times[name].append(seconds)
            print(f"{name}: {seconds:.1f} s, {evaluations[name]} transformer evaluations", flush=True)
    base = min(times["none"])
    print(f"\nfull width, {args.layers} block pairs, {args.frames}x{args.size}x{args.size} latents, batch 2 (CFG), {args.steps} PNDM steps, {args.dtype}")
    print("| cache | s / run (best) | speed-up | transformer evaluations |")
    print("|---|---:|---:|---:|")
    for name in caches:
        print(f"| {name} | {min(times[name]):.1f} | {base / min(times[name]):.2f}x | {evaluations[name]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("shapes")
    p.add_argument("--out", type=Path, default=Path("/tmp/osp-bench-caching"))
    p.add_argument("--chunks", type=int, default=5)
    p.add_argument("--captions", type=int, default=60, help="the first N of the 60 captions")
    p.add_argument("--seeds", type=int, default=1, help="seeds per caption (caption k: k, k + 60, ...)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "default"], help="fp32, bf16, fp16, or default (the sampler's choice for the device)")
    p.add_argument("--caches", nargs="+", default=list(DEFAULT_CACHES), help="none, pab, teacache:THRESHOLD ...")
    p = sub.add_parser("wide")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=56)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1], help="TeaCache thresholds (with fitted coefficients)")
    p.add_argument("--released-coefficients", dest="fit_teacache", action="store_false", help="use the released weights' TeaCache coefficients instead of fitting this model's")
    args = parser.parse_args()
    {"shapes": shapes, "wide": wide}[args.part](args)


if __name__ == "__main__":
    main()
