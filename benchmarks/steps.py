"""Step counts and schedulers against 150 PNDM steps on `builtin:shapes` (issue 25, item 2).

  python benchmarks/steps.py curve --out DIR [--split val|test] [--seeds 1] [--captions 60]
                                   [--dtype bf16|fp32] [--chunks 3] [--batch 20]
                                   [--settings PNDM:150 DPMSolverMultistep:10 DDIM:20:magcache:0.06 ...]
      every setting is SCHEDULER:STEPS[:CACHE[:THRESHOLD]]; the first is the reference (PNDM:150,
      what `osp t2v sample --model builtin:shapes` runs by default). Each setting samples the
      world's captions (`--captions` of them) x `--seeds` seeds, guidance 7.5, 17x64x64; the
      captions are cut into `--chunks` chunks and the settings alternate chunk by chunk, so load
      on the machine falls on all of them alike. Videos are denoised `--batch` at a time (one
      batched pipeline call: on 2 cores about twice the throughput of one video a call, for
      every setting alike); a cache's skip decision is then taken for the batch as a whole.
      Each video is graded in memory (no mp4 round trip) by `osp eval shapes`' judge and
      compared with the reference's video of the same caption and seed (PSNR).
      Writes DIR/steps.json and prints a markdown table.
      `--first-round R` starts at seed round R (a later run adds rounds to an earlier one).
  python benchmarks/steps.py merge DIR1/steps.json DIR2/steps.json ... --out DIR
      runs of the same split, dtype and settings over other seed rounds, as one curve (each
      run's figures weighted by its videos; seconds as each run measured them, or
      `--seconds-from K` those of the K-th run alone, when the others shared the cores).
  python benchmarks/steps.py plot DIR/steps.json OUT.png [--x seconds|evaluations]   (needs matplotlib)
      seconds (or transformer evaluations) per video against judge accuracy, one line per scheduler.
  python benchmarks/steps.py choose DIR/steps.json [--cost seconds|evaluations]
      the fast and fastest settings by the criterion.
  python benchmarks/steps.py profiles --out DIR [--split test] [--captions 12] [--chunks 3] [--dtype fp32]
      each `--speed` profile end to end, as a user runs it: `osp t2v sample --model
      builtin:shapes --prompts ... --speed P --json` per caption chunk, the profiles alternating
      chunk by chunk (caption k gets the split's seed + k), then `osp eval compare` of fast and
      fastest against default's mp4s. Prints seconds per video by phase (T5, denoise, VAE
      decode, write), speed-ups, the judge (colour, shape and direction all right), PSNR and
      SSIM against default; writes DIR/profiles.json.

Judge accuracy is the mean of the colour, shape and direction accuracies (the criterion the
speed profiles are chosen by, benchmarks/README.md). Seeds: `val` (caption k, seed round r:
5000 + 100 r + k) to choose, `test` (7000 + ...) to report; they never overlap.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

SEED_BASE = {"val": 5000, "test": 7000}
GUIDANCE = 7.5
DEFAULT_SETTINGS = ["PNDM:150"] + [f"{s}:{n}" for s in ("DPMSolverMultistep", "DDIM", "EulerDiscrete", "PNDM") for n in (10, 20, 30)]


@dataclass(frozen=True)
class Setting:
    scheduler: str
    steps: int
    cache: str = "none"
    threshold: float | None = None

    @classmethod
    def parse(cls, spec: str) -> Setting:
        parts = spec.split(":")
        if not 2 <= len(parts) <= 4:
            raise SystemExit(f"bad setting '{spec}': use SCHEDULER:STEPS[:CACHE[:THRESHOLD]]")
        return cls(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "none", float(parts[3]) if len(parts) > 3 else None)

    @property
    def name(self) -> str:
        cache = "" if self.cache == "none" else f" + {self.cache}" + ("" if self.threshold is None else f" {self.threshold:g}")
        return f"{self.scheduler} {self.steps}{cache}"


def curve(args: argparse.Namespace) -> None:
    import torch

    from osp_core.data.shapes import all_captions, parse_caption
    from osp_core.eval.shapes import accuracy, measure
    from osp_core.metrics import psnr
    from osp_core.pipelines.caching import make_cache
    from osp_core.pipelines.repository import ModelRepository
    from osp_core.pipelines.t2v import T2VPipeline, make_scheduler
    from osp_core.pipelines.t2v_inputs import scheduler_name

    settings = [Setting.parse(s) for s in args.settings]
    if len({s.name for s in settings}) < len(settings):
        raise SystemExit("a setting is given twice")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    pipe = T2VPipeline.from_pretrained("builtin:shapes", torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    sampling = ModelRepository.resolve("builtin:shapes").sampling  # TeaCache/MagCache fits for the caches
    captions = all_captions()[: args.captions]
    chunk = -(-len(captions) // args.chunks)
    base = SEED_BASE[args.split]
    jobs = [(r, start) for r in range(args.first_round, args.first_round + args.seeds) for start in range(0, len(captions), chunk)]
    out: dict[str, dict] = {s.name: {"setting": s.__dict__, "seconds": 0.0, "evaluations": 0, "videos": {}} for s in settings}
    for done, (r, start) in enumerate(jobs, 1):
        part = captions[start : start + chunk]
        embeds = pipe.encode_prompt(part, "", True)
        for setting in settings:
            pipe.scheduler = make_scheduler(scheduler_name(setting.scheduler))
            cache = make_cache(setting.cache, setting.threshold, sampling)
            if cache is not None:
                cache.attach(pipe.transformer)
            record = out[setting.name]
            try:
                seeds = [base + 100 * r + start + k for k in range(len(part))]
                frames, seconds, evaluations = sample_frames(pipe, part, seeds, setting.steps, GUIDANCE, args.batch, [cache] if cache is not None else [], embeds)
                record["seconds"] += seconds
                record["evaluations"] += evaluations
                record["videos"].update({(caption, seed): video for caption, seed, video in zip(part, seeds, frames)})
            finally:
                if cache is not None:
                    cache.detach()
        print(f"chunk {done}/{len(jobs)} done", flush=True)

    reference = out[settings[0].name]["videos"]
    rows = []
    for setting in settings:
        record = out[setting.name]
        graded, psnrs = [], []
        for (caption, seed), frames in record["videos"].items():
            row = measure(frames).to_dict()
            row["expected_color"], row["expected_shape"], row["expected_direction"] = parse_caption(caption)
            graded.append(row)
            if setting != settings[0]:
                psnrs.append(psnr(reference[(caption, seed)], frames))
        n = len(record["videos"])
        acc = {key: accuracy(graded, key) for key in ("color", "shape", "direction")}
        finite = [p for p in psnrs if math.isfinite(p)]
        rows.append(
            {
                "setting": setting.name,
                **setting.__dict__,
                "videos": n,
                "seconds_per_video": record["seconds"] / n,
                "evaluations_per_video": record["evaluations"] / n,
                **acc,
                "judge": sum(acc.values()) / 3,
                "psnr": sum(finite) / len(finite) if finite else None,
            }
        )
    result = {"split": args.split, "seeds": args.seeds, "first_round": args.first_round, "captions": len(captions), "dtype": args.dtype, "batch": args.batch, "guidance": GUIDANCE, "rows": rows}
    report(result, args.out)


def report(result: dict, out: Path) -> None:
    """Speed-ups and points against the first row, the profiles by the criterion; writes
    out/steps.json and prints the table."""
    rows = result["rows"]
    ref = rows[0]
    for row in rows:
        row["speedup"] = ref["seconds_per_video"] / row["seconds_per_video"]
        row["evaluation_ratio"] = ref["evaluations_per_video"] / row["evaluations_per_video"]
        row["judge_delta_points"] = 100 * (row["judge"] - ref["judge"])
    result["profiles"] = {name: (row["setting"] if row else None) for name, row in choose_profiles(rows).items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps.json").write_text(json.dumps(result, indent=1))
    print(f"\n{result['split']} seeds x {result['seeds']}, {result['captions']} captions, {result['dtype']}, batch {result['batch']}")
    print("| setting | s / video | speed-up | evaluations | judge | vs ref (points) | colour | shape | direction | PSNR vs ref |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        p = "-" if r["psnr"] is None else f"{r['psnr']:.1f} dB"
        print(
            f"| {r['setting']} | {r['seconds_per_video']:.2f} | {r['speedup']:.1f}x | {r['evaluations_per_video']:.0f} | {r['judge']:.1%} | "
            f"{r['judge_delta_points']:+.1f} | {r['color']:.1%} | {r['shape']:.1%} | {r['direction']:.1%} | {p} |"
        )
    print("\nby the criterion: " + ", ".join(f"{name}: {setting or 'none fits'}" for name, setting in result["profiles"].items()))


def merge(args: argparse.Namespace) -> None:
    """Curves of the same split, dtype and settings over other seed rounds, as one: accuracies,
    PSNR and seconds per video weighted by each run's videos (each run's seconds were
    measured in its own run, settings alternating)."""
    results = [json.loads(path.read_text()) for path in args.results]
    first = results[0]
    for other in results[1:]:
        if (other["split"], other["dtype"], other["captions"]) != (first["split"], first["dtype"], first["captions"]) or [r["setting"] for r in other["rows"]] != [r["setting"] for r in first["rows"]]:
            raise SystemExit("merge: the runs differ in split, dtype, captions or settings")
    rounds = sorted(r for result in results for r in range(result.get("first_round", 0), result.get("first_round", 0) + result["seeds"]))
    if len(set(rounds)) < len(rounds):
        raise SystemExit(f"merge: seed rounds overlap ({rounds})")
    rows = []
    for parts in zip(*(result["rows"] for result in results)):
        n = sum(part["videos"] for part in parts)
        row = {**parts[0], "videos": n}
        for key in ("seconds_per_video", "evaluations_per_video", "color", "shape", "direction"):
            row[key] = sum(part[key] * part["videos"] for part in parts) / n
        if args.seconds_from is not None:  # the other runs shared the cores: their seconds are not comparable
            row["seconds_per_video"] = parts[args.seconds_from]["seconds_per_video"]
        row["judge"] = (row["color"] + row["shape"] + row["direction"]) / 3
        psnrs = [(part["psnr"], part["videos"]) for part in parts if part["psnr"] is not None]
        row["psnr"] = sum(p * v for p, v in psnrs) / sum(v for _, v in psnrs) if psnrs else None
        rows.append(row)
    result = {**first, "seeds": len(rounds), "first_round": rounds[0], "merged_from": [str(path) for path in args.results], "seconds_from": args.seconds_from, "rows": rows}
    report(result, args.out)


PROFILE_RULES = {"fast": (1.0, 5.0), "fastest": (3.0, 10.0)}
"""Profile: (most judge points below the reference, least speed-up), benchmarks/README.md."""


def choose_profiles(rows: list[dict], cost: str = "seconds") -> dict[str, dict | None]:
    """Each profile's setting by the criterion: the cheapest row within its points of the first
    row (the reference) and at least its speed-up; `cost` "seconds" (denoising seconds) or
    "evaluations" (transformer evaluations, when the seconds were disturbed)."""
    ref = rows[0]
    key, ratio = ("seconds_per_video", "speedup") if cost == "seconds" else ("evaluations_per_video", "evaluation_ratio")
    chosen: dict[str, dict | None] = {}
    for name, (points, speedup) in PROFILE_RULES.items():
        fits = [r for r in rows[1:] if 100 * (r["judge"] - ref["judge"]) >= -points and r[ratio] >= speedup]
        chosen[name] = min(fits, key=lambda r: (r[key], -r["judge"])) if fits else None
    return chosen


def _saved_evaluations(callbacks: list) -> float:
    """Transformer calls of the last pipeline run that a cache cut short: a skipped block stack
    counts whole, an unconditional half estimated instead of run (FasterCache) counts half."""
    saved = 0.0
    for callback in callbacks:
        stats = callback.stats() if hasattr(callback, "stats") else {}
        saved += stats.get("transformer_evaluations_skipped", 0) + 0.5 * stats.get("unconditional_estimated", 0)
    return saved


def sample_frames(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int, callbacks: list | None = None, embeds=None):
    """uint8 (T, H, W, 3) frames of each prompt (17x64x64, its own seed's noise, as `osp t2v
    sample` draws it), `batch` videos a pipeline call, the pipeline's scheduler; and the
    denoising seconds and transformer evaluations (per video, summed over the videos; those a
    cache skipped are not counted)."""
    import torch

    embeds = embeds if embeds is not None else pipe.encode_prompt(prompts, "", guidance > 1)
    frames, seconds, evaluations = [], 0.0, 0
    calls = [0]

    def counted(*a, **k):
        calls[0] += 1
        return pipe.transformer(*a, **k)

    for b in range(0, len(prompts), batch):
        rows = list(range(b, min(b + batch, len(prompts))))
        calls[0] = 0
        t0 = time.perf_counter()
        latents = pipe(
            prompt_embeds=embeds.select(rows), num_frames=17, height=64, width=64, num_inference_steps=steps,
            guidance_scale=guidance, generator=[torch.Generator("cpu").manual_seed(seeds[k]) for k in rows],
            output_type="latent", callbacks=callbacks or [], transformer_forward=counted,
        ).frames
        seconds += time.perf_counter() - t0
        evaluations += (calls[0] - _saved_evaluations(callbacks or [])) * len(rows)
        frames += list(pipe.decode_latents(latents))
    return frames, seconds, evaluations


def plot(args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot needs matplotlib: pip install matplotlib") from None
    result = json.loads(args.result.read_text())
    rows = result["rows"]
    x = "seconds_per_video" if args.x == "seconds" else "evaluations_per_video"
    ref = rows[0]
    fig, ax = plt.subplots(figsize=(8.6, 4.2), dpi=110)
    lines: dict[str, list[dict]] = {}
    for row in rows[1:]:
        if row["cache"] == "none":
            lines.setdefault(row["scheduler"], []).append(row)
    for name, points in sorted(lines.items()):
        points.sort(key=lambda p: p[x])
        ax.plot([p[x] for p in points], [100 * p["judge"] for p in points], marker="o", label=name)
        for p in points:
            ax.annotate(str(p["steps"]), (p[x], 100 * p["judge"]), textcoords="offset points", xytext=(3, 3), fontsize=7)
    cached = [r for r in rows[1:] if r["cache"] != "none"]
    if cached:
        ax.scatter([p[x] for p in cached], [100 * p["judge"] for p in cached], marker="x", color="black", label="with a cache")
    ax.scatter([ref[x]], [100 * ref["judge"]], marker="*", s=150, color="red", zorder=5, label=f"{ref['setting']} (default)")
    ax.axhline(100 * ref["judge"] - 1, color="grey", lw=0.6, ls="--")
    ax.axhline(100 * ref["judge"] - 3, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(f"denoising seconds per video ({result['dtype']}, 2 CPU cores, log scale)" if args.x == "seconds" else "transformer evaluations per video (each a guided pair; log scale)")
    ax.set_ylabel("judge accuracy, %")
    ax.set_title(f"builtin:shapes, {result['captions']} captions x {result['seeds']} {result['split']} seeds; dashed: default -1 / -3 points", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


PROFILES = ("default", "fast", "fastest")


def profiles(args: argparse.Namespace) -> None:
    import subprocess
    import sys

    from osp_core.data.shapes import all_captions

    captions = all_captions()[: args.captions]
    size = math.ceil(len(captions) / args.chunks)
    osp = [sys.executable, "-m", "osp_cli"]
    runs: dict[str, list[dict]] = {name: [] for name in PROFILES}
    args.out.mkdir(parents=True, exist_ok=True)
    for c, start in enumerate(range(0, len(captions), size)):
        prompts = args.out / f"prompts-{c}.txt"
        prompts.write_text("\n".join(captions[start : start + size]) + "\n")
        for name in PROFILES[c % 3 :] + PROFILES[: c % 3]:  # who goes first rotates
            command = [*osp, "t2v", "sample", "--model", "builtin:shapes", "--prompts", str(prompts), "--seed", str(SEED_BASE[args.split] + start)]
            command += ["--speed", name, "--dtype", args.dtype, "-o", str(args.out / name), "--json", "--overwrite"]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            runs[name].append(json.loads(done.stdout))
            print(f"chunk {c + 1}: {name} done", flush=True)
    result: dict = {"split": args.split, "captions": len(captions), "dtype": args.dtype, "profiles": {}}
    for name in PROFILES:
        videos = sum(len(run["videos"]) for run in runs[name])
        phases: dict[str, float] = {}
        for run in runs[name]:
            for phase, value in run["seconds"].items():
                phases[phase] = phases.get(phase, 0.0) + value
        row = {"videos": videos, "seconds_per_video": {k: v / videos for k, v in phases.items() if k not in ("load", "total")}, "load_seconds_per_run": phases.get("load", 0.0) / len(runs[name])}
        row["seconds_per_video"]["video"] = sum(row["seconds_per_video"].values())
        compared = subprocess.run([*osp, "eval", "compare", str(args.out / "default"), str(args.out / name), "--json"], check=True, capture_output=True, text=True)
        summary = json.loads(compared.stdout)["summary"]
        row |= {"judge": summary["candidate"].get("judge_accuracy"), "psnr": summary["psnr"], "ssim": summary["ssim"], "identical": summary["identical"]}
        result["profiles"][name] = row
    base = result["profiles"]["default"]["seconds_per_video"]
    print(f"\n{args.split} seeds, {len(captions)} captions, {args.dtype}, `osp t2v sample` per chunk of {size}")
    print("| profile | denoise s / video | speed-up | whole video s (T5 + denoise + decode + write) | speed-up | judge (all three right) | PSNR vs default | SSIM vs default |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in result["profiles"].items():
        sec = row["seconds_per_video"]
        psnr = "identical" if name == "default" else f"{row['psnr']:.1f} dB"
        ssim = "1" if name == "default" else f"{row['ssim']:.3f}"
        print(f"| {name} | {sec['denoise']:.3f} | {base['denoise'] / sec['denoise']:.1f}x | {sec['video']:.3f} | {base['video'] / sec['video']:.1f}x | {row['judge']:.1%} | {psnr} | {ssim} |")
    (args.out / "profiles.json").write_text(json.dumps(result, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def sampling_run(name: str, split: str, captions: int, dtype: str) -> argparse.ArgumentParser:
        run = sub.add_parser(name)
        run.add_argument("--out", type=Path, required=True)
        run.add_argument("--split", choices=SEED_BASE, default=split)
        run.add_argument("--captions", type=int, default=captions)
        run.add_argument("--dtype", choices=("bf16", "fp32"), default=dtype)
        run.add_argument("--chunks", type=int, default=3)
        return run

    c = sampling_run("curve", "val", 60, "bf16")
    c.add_argument("--seeds", type=int, default=1)
    c.add_argument("--first-round", type=int, default=0, help="the first seed round (a later run adds rounds: merge)")
    c.add_argument("--batch", type=int, default=20)
    c.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    p = sub.add_parser("plot")
    p.add_argument("result", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--x", choices=("seconds", "evaluations"), default="seconds", help="the cost axis (evaluations when the run's seconds were disturbed)")
    ch = sub.add_parser("choose")
    ch.add_argument("result", type=Path)
    ch.add_argument("--cost", choices=("seconds", "evaluations"), default="seconds")
    sampling_run("profiles", "test", 12, "fp32")
    m = sub.add_parser("merge")
    m.add_argument("results", type=Path, nargs="+")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--seconds-from", type=int, help="take seconds from this run alone (index among the results: the undisturbed one)")
    args = parser.parse_args()
    if args.command == "choose":
        chosen = choose_profiles(json.loads(args.result.read_text())["rows"], args.cost)
        print(json.dumps({name: row and {k: row[k] for k in ("setting", "scheduler", "steps", "judge", "judge_delta_points", "evaluation_ratio", "speedup", "psnr")} for name, row in chosen.items()}, indent=1))
        return
    {"curve": curve, "plot": plot, "profiles": profiles, "merge": merge}[args.command](args)


if __name__ == "__main__":
    main()
