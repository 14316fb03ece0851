"""Pieces of `make builtin`: turning two training runs into the shipped `builtin:shapes` model.

The build script (scripts/build_builtin.py) runs `osp` commands for data, training, sampling
and evaluation; this module holds the steps in between that are library work:
- the latent scaling factor of a freshly trained VAE (1 / std of its latents, as Stable
  Diffusion chose 0.18215 for its own), written into the VAE config the transformer trains on;
- exporting checkpoints as fp16 safetensors into a model repository (`vae/`, `17x64x64/`,
  `text_encoder/`, `tokenizer/`) and checking it stays within the package size budget;
- installing the repository atomically, refusing to replace one without `overwrite`;
- loss curves from the runs' checkpoints, as CSV and a small SVG chart, and the results page.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, ModelLoadError
from .io import atomic_dir, atomic_path, write_json

VERSION = "17x64x64"
"""Transformer folder of the shapes model: the clip size it was trained on."""
SIZE_LIMIT_BYTES = 20 * 1000 * 1000
"""The whole repository ships inside the wheel: at most 20 MB."""
REPOSITORY_PARTS = ("vae", VERSION, "text_encoder", "tokenizer")


# --- runs ------------------------------------------------------------------------------------


def final_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a finished `osp ... train` run recorded in its summary.json."""
    run = Path(run_dir)
    summary = run / "summary.json"
    if not summary.is_file():
        raise ModelLoadError(f"'{run}' has no summary.json", "run the training to its end first (or resume it with --resume latest)")
    checkpoint = json.loads(summary.read_text()).get("checkpoint")
    if checkpoint and not Path(checkpoint).is_dir() and (run / "checkpoints" / Path(checkpoint).name).is_dir():
        checkpoint = run / "checkpoints" / Path(checkpoint).name  # the run folder was moved since
    if not checkpoint or not (Path(checkpoint) / "model" / "config.json").is_file():
        raise ModelLoadError(f"the summary of '{run}' names no usable checkpoint ({checkpoint})", "rerun the training")
    return Path(checkpoint)


def loss_history(checkpoint: str | Path) -> list[float]:
    """Loss of every optimizer step (the trainer keeps them in trainer_state.json)."""
    state = Path(checkpoint) / "trainer_state.json"
    if not state.is_file():
        raise ModelLoadError(f"no trainer_state.json in '{checkpoint}'", "pass a complete checkpoint folder")
    # strict JSON stores a non-finite loss as null
    return [math.nan if v is None else float(v) for v in json.loads(state.read_text()).get("loss_history", [])]


# --- VAE latents -----------------------------------------------------------------------------

INIT_POSTERIOR_LOGVAR = -6.0
"""Initial log-variance of a fresh VAE's posterior (std e^-3 = 0.05)."""


def init_vae(config_path: str | Path, out_dir: str | Path, seed: int = 0, posterior_logvar: float = INIT_POSTERIOR_LOGVAR) -> Path:
    """A freshly initialised CausalVideoVAE whose posterior starts nearly deterministic, saved as
    a model folder to train from (`osp vae train --pretrained DIR`).

    Why: at the default init the posterior std is about 1 while the means are small, so the
    decoder is fed mostly noise, and with KL weight 1e-6 little pushes the variance down
    (measured on the shapes world: mean posterior std still 0.92 after 300 steps, the decoder
    still drawing an all-black frame). Biasing the log-variance half of `quant_conv` to
    `posterior_logvar` starts it as a plain autoencoder; the KL term then acts as it does late
    in a normal run.
    """
    from .models.causal_vae import CausalVideoVAE

    path = Path(config_path)
    if not path.is_file():
        raise InputError(f"VAE config '{path}' does not exist", "pass a CausalVideoVAE config.json")
    config = json.loads(path.read_text())
    config = {k: v for k, v in config.get("config", config).items() if not k.startswith("_")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = CausalVideoVAE.from_config(config)
    conv = vae.quant_conv.conv
    half = conv.out_channels // 2  # moments are [mean, logvar] along channels
    with torch.no_grad():
        conv.bias[half:].fill_(posterior_logvar)
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        vae.save_pretrained(str(tmp), safe_serialization=True)
    return out


@torch.no_grad()
def collapse_to_last_tap(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Save the CausalVideoVAE of `model_dir`, trained on single frames, with every temporal
    kernel's taps summed onto the last one (tail init), as a model folder to train on clips.

    Why it is exact on images: a causal convolution pads a one-frame input with copies of that
    frame, so all taps see the same frame and only their sum matters. After the collapse each
    3D convolution sees only its current frame, so on clips the model starts as the image model
    applied frame by frame (time down/upsampling still mix frames) instead of mixing frames
    with kernels that were never trained on motion.
    """
    from .models.causal_vae import CausalVideoVAE

    vae = CausalVideoVAE.from_pretrained(str(model_dir))
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d) and module.kernel_size[0] > 1:
            weight = module.weight
            weight[:, :, -1] = weight.sum(dim=2)
            weight[:, :, :-1] = 0
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        vae.save_pretrained(str(tmp), safe_serialization=True)
    return out


@torch.no_grad()
def latent_scaling_factor(vae: Any, videos: Sequence[str | Path], seed: int = 0) -> float:
    """1 / std of posterior samples of `videos`: scales latents to unit variance for diffusion.

    Uses the same draw as training (`posterior.sample()`), with a fixed generator so the build
    is reproducible.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from .io import read_video, to_model_input

    if not videos:
        raise InputError("no clips to measure the latent scale on", "pass some training clips")
    generator = torch.Generator().manual_seed(seed)
    total, total_sq, count = 0.0, 0.0, 0
    for path in videos:
        frames = read_video(path).frames
        usable = (len(frames) - 1) // vae.temporal_compression * vae.temporal_compression + 1
        x = to_model_input(frames[:usable]).to(vae.device, vae.dtype)
        moments = vae.encode(x).latent_dist.parameters.float().cpu()
        posterior = DiagonalGaussianDistribution(moments)
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        total += float(z.sum())
        total_sq += float((z.double() ** 2).sum())
        count += z.numel()
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean**2, 1e-12))
    return 1.0 / std


# --- export ----------------------------------------------------------------------------------


def save_fp16(model: Any, folder: str | Path) -> Path:
    """`model` as a shipped model folder: fp16 safetensors and a config without the path it
    was loaded from (diffusers records `_name_or_path`: a training machine's folder)."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        model.to(torch.float16).save_pretrained(str(tmp), safe_serialization=True)
        config_file = Path(tmp) / "config.json"
        config = json.loads(config_file.read_text())
        config.pop("_name_or_path", None)
        write_json(config_file, config)  # diffusers wrote the keys sorted; their order stays
    return folder


def export_vae(checkpoint: str | Path, repo: str | Path, scaling_factor: float) -> Path:
    """The VAE of a training checkpoint as `repo/vae/` (fp16 safetensors), with its scaling factor."""
    from .models.causal_vae import CausalVideoVAE

    if not math.isfinite(scaling_factor) or scaling_factor <= 0:
        raise InputError(f"latent scaling factor {scaling_factor} is not a positive number", "measure it on real clips")
    vae = CausalVideoVAE.from_pretrained(str(Path(checkpoint) / "model"))
    vae.register_to_config(scaling_factor=float(scaling_factor))
    folder = Path(repo) / "vae"
    save_fp16(vae, folder)
    return folder


def export_transformer(checkpoint: str | Path, repo: str | Path, prefer_ema: bool = True) -> tuple[Path, str]:
    """The transformer of a training checkpoint (its EMA weights when there are some) as
    `repo/17x64x64/` (fp16 safetensors); returns the folder and which weights were used."""
    from .models.latte_t2v import LatteT2V

    checkpoint = Path(checkpoint)
    source = "model_ema" if prefer_ema and (checkpoint / "model_ema" / "config.json").is_file() else "model"
    loaded = LatteT2V.from_pretrained(str(checkpoint / source))
    # built again from its options alone: the shipped config carries no EMA state or local path
    transformer = LatteT2V.from_config(LatteT2V.options_of(dict(loaded.config)))
    transformer.load_state_dict(loaded.state_dict())
    folder = Path(repo) / VERSION
    save_fp16(transformer, folder)
    return folder, source


# TeaCache for builtin:shapes: fitted on these captions and seeds (`osp t2v calibrate-cache`), at
# the threshold benchmarks/caching.py measured as the fastest that keeps the quality table
TEACACHE_CALIBRATION_SEED = 1000
TEACACHE_THRESHOLD = 0.1


def teacache_calibration_captions(count: int) -> list[str]:
    """`count` captions of the shapes world, drawn with a fixed seed, for TeaCache's fit."""
    import random

    from .data.shapes import all_captions

    return random.Random(TEACACHE_CALIBRATION_SEED).sample(all_captions(), count)


def write_sampling_defaults(repo: str | Path, **settings: float | int | str | list[float]) -> Path:
    """`repo/sampling.json`: what `osp t2v sample` uses where the user gives no flag (the
    shapes world plays at 8 fps, not the released model's 24)."""
    from .pipelines.t2v_inputs import write_sampling_file

    return write_sampling_file(Path(repo), settings)


def repository_size(repo: str | Path) -> int:
    """Bytes of every file in the repository."""
    return sum(p.stat().st_size for p in Path(repo).rglob("*") if p.is_file())


def check_repository(repo: str | Path, limit: int = SIZE_LIMIT_BYTES) -> int:
    """Raise unless `repo` has every part and fits in `limit` bytes; returns its size."""
    repo = Path(repo)
    missing = [part for part in REPOSITORY_PARTS if not (repo / part).is_dir()]
    if missing:
        raise ModelLoadError(f"the model repository '{repo}' lacks {', '.join(missing)}/", "run every build step")
    size = repository_size(repo)
    if size > limit:
        raise InputError(f"the model repository is {size / 1e6:.1f} MB, over the {limit / 1e6:.0f} MB package limit", "narrow the presets (widths, layers)")
    return size


def install(repo: str | Path, target: str | Path, overwrite: bool = False) -> Path:
    """Copy the repository to `target` (e.g. osp_core/builtin/shapes) in one rename."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise InputError(f"'{target}' already exists", "pass --overwrite to replace it")
    with atomic_dir(target) as tmp:
        for item in sorted(Path(repo).iterdir()):
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
    return target


# --- results ---------------------------------------------------------------------------------


def write_curve_csv(path: str | Path, curves: dict[str, list[float]]) -> Path:
    """`step,<name>...` rows, one per step (empty cells where a run has fewer steps)."""
    names = list(curves)
    longest = max((len(v) for v in curves.values()), default=0)
    lines = ["step," + ",".join(names)]
    for step in range(longest):
        cells = [f"{curves[n][step]:.6g}" if step < len(curves[n]) else "" for n in names]
        lines.append(f"{step + 1}," + ",".join(cells))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (NaNs skipped), so noisy per-step losses read as a curve."""
    out, acc = [], []
    for v in values:
        if math.isfinite(v):
            acc.append(v)
        acc = acc[-window:]
        out.append(sum(acc) / len(acc) if acc else math.nan)
    return out


def curve_svg(values: Sequence[float], title: str, log_y: bool = True, width: int = 480, height: int = 220) -> str:
    """A line chart of per-step `values` (raw in grey, moving average in blue) as SVG text."""
    finite = [v for v in values if math.isfinite(v) and (v > 0 or not log_y)]
    pad_l, pad_r, pad_t, pad_b = 56, 12, 24, 28
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">'
    parts = [head, f'<rect width="{width}" height="{height}" fill="white"/>', f'<text x="{pad_l}" y="15">{title}</text>']
    if len(finite) < 2:
        parts.append(f'<text x="{pad_l}" y="{pad_t + plot_h // 2}">too few steps to plot</text></svg>')
        return "".join(parts)
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    lo, hi = f(min(finite)), f(max(finite))
    hi = hi if hi > lo else lo + 1.0
    n = len(values)

    def point(i: int, v: float) -> str:
        x = pad_l + plot_w * (i / max(n - 1, 1))
        y = pad_t + plot_h * (1 - (f(v) - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    def polyline(series: Sequence[float], color: str, stroke: float) -> str:
        pts = " ".join(point(i, v) for i, v in enumerate(series) if math.isfinite(v) and (v > 0 or not log_y))
        return f'<polyline fill="none" stroke="{color}" stroke-width="{stroke}" points="{pts}"/>'

    parts.append(f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    for frac in (0.0, 0.5, 1.0):
        value = lo + (hi - lo) * (1 - frac)
        label = f"{10**value:.3g}" if log_y else f"{value:.3g}"
        parts.append(f'<text x="{pad_l - 4}" y="{pad_t + plot_h * frac + 4:.0f}" text-anchor="end">{label}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 8}">1</text><text x="{width - pad_r}" y="{height - 8}" text-anchor="end">{n} steps</text>')
    parts.append(polyline(values, "#bbb", 0.6))
    parts.append(polyline(smooth(values, max(n // 50, 1)), "#1f5fbf", 1.6))
    parts.append("</svg>")
    return "".join(parts)


def curve_table(values: Sequence[float], rows: int = 8) -> list[tuple[int, float]]:
    """(last step of the window, mean loss over the window) for `rows` equal windows."""
    n = len(values)
    if n == 0:
        return []
    rows = min(rows, n)
    out = []
    for r in range(rows):
        start, end = r * n // rows, (r + 1) * n // rows
        window = [v for v in values[start:end] if math.isfinite(v)]
        out.append((end, sum(window) / len(window) if window else math.nan))
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def run_train_seconds(summary: dict[str, Any], state: dict[str, Any]) -> float | None:
    """Seconds a training run spent in its steps over all its invocations: the trainer's own
    count, or (older runs) steps x seconds/step when the last invocation ran every step; None
    when neither is on record."""
    for record in (summary, state):
        if record.get("train_seconds"):
            return float(record["train_seconds"])
    if summary.get("seconds_per_step") and summary.get("steps_this_run") == summary.get("steps"):
        return float(summary["seconds_per_step"]) * summary["steps"]
    return None


def results_markdown(results: dict[str, Any]) -> str:
    """The RESULTS.md page of a build: quality table, settings, wall time, loss curves."""
    lines = [f"# builtin:{results['name']}: build results{' (SMOKE RUN: not a trained model)' if results['smoke'] else ''}", ""]
    lines.append(f"Built by `{results['command']}` on {results['finished']} ({results['host']}).")
    lines.append("")
    if results.get("note"):  # how a build that reused earlier stages was made
        lines.append(results["note"])
        lines.append("")
    lines.append("## Quality (`osp eval shapes`)")
    lines.append("")
    lines.append("| check | result | bar |")
    lines.append("| --- | --- | --- |")
    vae_eval = results.get("vae_eval") or {}
    psnr = vae_eval.get("psnr")
    lines.append(f"| VAE round trip, {vae_eval.get('videos', 0)} held-out clips: mean PSNR | {'-' if psnr is None else f'{psnr:.2f} dB'} (SSIM {vae_eval.get('ssim') or 0:.4f}) | >= 30 dB |")
    for run in results.get("t2v_eval", []):
        s = run["summary"]
        tag = f"{s['videos']} captions, {run['steps']} {run['scheduler']} steps, guidance {run['guidance']:g}"
        lines.append(f"| text to video ({tag}): color correct | {_pct(s.get('color_accuracy'))} | >= 90% |")
        lines.append(f"| text to video ({tag}): direction correct | {_pct(s.get('direction_accuracy'))} | >= 90% |")
        lines.append(f"| text to video ({tag}): shape correct | {_pct(s.get('shape_accuracy'))} | >= 70% |")
    lines.append("")
    lines.append("## Wall time")
    lines.append("")
    lines.append("| stage | seconds |")
    lines.append("| --- | --- |")
    for stage, seconds in results["stages"].items():
        lines.append(f"| {stage} | {seconds:.0f} |")
    lines.append(f"| **total** | **{results['wall_seconds']:.0f}** ({results['wall_seconds'] / 3600:.2f} h) |")
    lines.append("")
    lines.append("## Model")
    lines.append("")
    lines.append(f"Repository size {results['repository_bytes'] / 1e6:.2f} MB (fp16 safetensors): " + ", ".join(f"`{k}/` {v / 1e6:.2f} MB" for k, v in results["part_bytes"].items()) + ".")
    lines.append(f"VAE latent scaling factor {results['scaling_factor']:.5f}; transformer weights from `{results['transformer_weights']}`.")
    lines.append("")
    lines.append("## Training curves (loss per step)")
    lines.append("")
    for name, run in results["training"].items():
        speed = f"{run['seconds_per_step']:.2f} s/step" if run["seconds_per_step"] else "no steps in the last (resumed) run"
        seconds = run.get("train_seconds")
        spent = f", {seconds / 60:.1f} min of training steps" if seconds else ""
        lines.append(f"### {name}: {run['steps']} steps, {speed}, batch {run['batch_size']}{spent}")
        lines.append("")
        lines.append(f"![{name} loss]({name}-loss.svg)")
        lines.append("")
        lines.append("| steps up to | mean loss |")
        lines.append("| --- | --- |")
        for step, value in run["table"]:
            lines.append(f"| {step} | {value:.5g} |")
        lines.append("")
    lines.append("Per-step values: `training-loss.csv`.")
    lines.append("")
    return "\n".join(lines)
