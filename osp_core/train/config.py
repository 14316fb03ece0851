"""One typed config tree per trainer, with precedence CLI > preset file > defaults.

A preset is YAML with the same nesting as the dataclasses below (`run:`, `data:`, `optim:` ...).
Unknown keys are errors, values are checked against the field types, and the resolved tree is
stored in every checkpoint so a resumed run rebuilds the same thing. Each field carries its
documentation as the string literal under it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from ..errors import InputError

# ----------------------------------------------------------------------------------- sections


@dataclass
class RunConfig:
    """How long to train, where outputs go, how to checkpoint and log."""

    output_dir: str = "outputs/train"
    """Folder for checkpoints (`checkpoints/step-N/`), logs, samples and `summary.json`."""
    max_steps: int = 1000
    """Optimizer steps to train for (counted across resumes)."""
    batch_size: int = 1
    """Samples per data-parallel rank per micro-batch (ranks that share a sample through sequence
    parallel count once); the global batch is batch_size x accumulation x data-parallel ranks."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated into one optimizer step."""
    seed: int = 42
    """Seed for model init, data order and per-sample noise (drawn from the seed, the step and the
    sample's place in the global batch: the same numbers on any number of ranks)."""
    deterministic: bool = False
    """Use deterministic torch kernels (slower; makes resumed runs bit-identical on CPU)."""
    mixed_precision: str = "no"
    """Autocast precision: no, fp16 or bf16 (Accelerate's `mixed_precision`), or auto: bf16 where
    the training device runs it natively, else no (resolved when the run starts)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (models that support it)."""
    checkpoint_every: int = 500
    """Write a checkpoint every N optimizer steps (and always at the end and on Ctrl-C/SIGTERM)."""
    keep_last: int = 3
    """Keep only the newest K checkpoints (0 keeps all)."""
    resume: str = ""
    """'' (fresh run), 'latest' (newest checkpoint in output_dir that loads, fresh run when none) or a checkpoint folder."""
    overwrite: bool = False
    """Start over in an output_dir that already holds a run: its checkpoints/, logs/, samples/
    and summary.json are removed once the new run is set up (without it such a folder is refused)."""
    log_every: int = 10
    """Print and log metrics every N steps."""
    report_to: str = "tensorboard"
    """Metric sinks besides the console: tensorboard, wandb, all or none."""
    wandb_project: str = "osp"
    """Weights & Biases project name (when report_to includes wandb)."""
    ema: bool = False
    """Keep an exponential moving average of the model weights (saved as model_ema/)."""
    ema_decay: float = 0.9999
    """EMA decay per optimizer step."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 reads in the training process)."""
    device: str = ""
    """Force a device (cpu, cuda, npu); '' lets Accelerate pick the launcher's device."""


@dataclass
class ParallelConfig:
    """How the processes torchrun started share a run (`osp_core.parallel.training`)."""

    strategy: str = ""
    """ddp (every rank holds the whole model; Accelerate's DDP) or fsdp (PyTorch FSDP2: parameters,
    gradients and AdamW states sharded over the ranks; Distributed Checkpoint folders); '' takes
    the strategy of the checkpoint --resume continues, else ddp."""
    sequence_parallel: int = 1
    """Ranks that share one sample's tokens (DSP, t2v only); must divide the number of processes."""
    replicate: int = 1
    """(fsdp) Replica groups: the ranks are split into `replicate` groups that each hold a full
    sharded copy (HSDP); 1 shards over every rank."""
    activation_checkpointing: int = 0
    """Recompute activations of every k-th transformer block in backward (0: off, 1: every block;
    under fsdp, --gradient-checkpointing means 1)."""
    compile: bool = False
    """torch.compile each transformer block (regional compilation)."""


@dataclass
class DataConfig:
    """Which samples to read and how to cut them."""

    data: str = ""
    """Data list file (lines `ROOT,ANNOTATION.json`), one annotation .json/.jsonl, or a folder of
    videos (t2v and edit: each `NAME.mp4` with its caption in `NAME.txt` beside it)."""
    image_data: str = ""
    """Image list file in the same format, for joint image-video training ('' draws images from the video)."""
    frames: int = 17
    """Frames per video sample."""
    stride: int = 1
    """Take every N-th frame of the source video."""
    height: int = 256
    """Sample height in pixels (resize so the frame covers it, then center-crop)."""
    width: int = 256
    """Sample width in pixels."""
    random_start: bool = True
    """Pick a random start frame inside the usable range (else the first frame of the range)."""
    max_skip_report: int = 100
    """Most skipped samples listed by path in the summary (all are counted)."""
    use_image_num: int = 0
    """(t2v) Images trained alongside each video sample (joint image-video training)."""
    cache_dir: str = ""
    """(t2v) Cache VAE latent moments and T5 states here, so the frozen encoders run once per sample."""
    buckets: str = ""
    """(t2v) Frames x height x width buckets for clips of mixed sizes and lengths, each batch from
    one bucket: 'auto' (each clip's own aspect ratio and length, rounded down to the grid, at
    most frames x height x width), or a list such as `17x64x64,9x48x64` (each clip takes the
    bucket nearest its aspect ratio among those it fills); '' cuts every clip to frames x height
    x width. Clips that fit no bucket are left out and reported before training starts."""
    upscale: bool = False
    """(t2v, with buckets) Let a clip smaller than its bucket be resized up (frames are never
    invented); without it such a clip takes a smaller bucket, or none."""
    fps: float = 0.0
    """(t2v) Target frame rate: each clip takes every round(clip fps / fps)-th frame (at least 1),
    its rate read from the annotation's `fps` or else the file; 0 takes every `stride`-th frame
    (also the stride of clips whose rate is unknown). Validation samples play at this rate."""


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    lr: float = 1e-5
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW); 0 is plain Adam."""
    eps: float = 1e-8
    """Adam epsilon."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 disables clipping)."""
    lr_scheduler: str = "constant"
    """diffusers scheduler name: constant, constant_with_warmup, linear, cosine, ..."""
    lr_warmup_steps: int = 0
    """Warm-up steps of the schedule."""


@dataclass
class VAEModelConfig:
    """Which CausalVideoVAE to train and how to initialise it."""

    config: str = ""
    """A CausalVideoVAE config.json (released format) for a fresh model; '' uses the v1.1.0 architecture."""
    pretrained: str = ""
    """Start from these weights: Hub repo id, folder, or folder with a vae/ subfolder."""
    init_from_2d_vae: str = ""
    """Inflate a diffusers image VAE (repo id or folder, e.g. stabilityai/sd-vae-ft-mse) by tail init."""
    reset_mix_factor: float | None = None
    """Set every temporal down/upsample `mix_factor` to this before training (stage 3 uses 0.5)."""
    freeze_encoder: bool = False
    """Train the decoder only: the encoder and `quant_conv` keep their weights, so every latent
    (and a transformer or edit module trained on them) stays as it was."""


@dataclass
class VAELossConfig:
    """The v1.1.0 VAE objective: L1 + LPIPS with a learned log-variance, KL, 3D PatchGAN."""

    kl_weight: float = 1e-6
    """Weight of the KL term."""
    pixel_loss: str = "l1"
    """Per-pixel reconstruction error: l1 (v1.1.0), l2, or l1+l2. Sparse scenes (a small shape
    on black) stall under L1 at an all-black output, its median; the squared term keeps a
    gradient on the few wrong pixels."""
    perceptual_weight: float = 1.0
    """Weight of LPIPS inside the reconstruction term (0 turns LPIPS off and needs no weights)."""
    lpips_weights: str = ""
    """LPIPS weights: a .safetensors file, or REPO_ID:FILENAME fetched with huggingface_hub."""
    logvar_init: float = 0.0
    """Initial value of the learned log-variance of the reconstruction likelihood."""
    learn_logvar: bool = True
    """Train the log-variance with the generator (False keeps it at logvar_init)."""
    disc_start: int = 2001
    """Step at which the adversarial terms switch on."""
    disc_weight: float = 0.5
    """Scale of the adaptive generator-adversarial weight."""
    disc_factor: float = 1.0
    """Overall factor of the adversarial terms once switched on."""
    disc_num_layers: int = 3
    """Layers of the 3D PatchGAN discriminator."""
    disc_channels: int = 64
    """Width of the first discriminator layer."""
    disc_lr: float | None = None
    """Discriminator learning rate (None: same as optim.lr)."""


@dataclass
class T2VModelConfig:
    """Which transformer, VAE and text encoder to use."""

    model: str = "LanguageBind/Open-Sora-Plan-v1.1.0"
    """Model repository (Hub id or folder) holding vae/ and the transformer subfolders."""
    pretrained: str = ""
    """Transformer subfolder or folder to start from (e.g. 65x512x512); '' builds a fresh one from `config`."""
    config: str = ""
    """A LatteT2V config.json for a fresh transformer (used when pretrained is '')."""
    vae: str = ""
    """VAE folder or repo id ('' uses `model`/vae)."""
    text_encoder: str = ""
    """T5 encoder (repo id or folder with text_encoder/ and tokenizer/ or a T5 folder); '' uses
    the model repository's text_encoder/ when it has one (as sampling does), else DeepFloyd/t5-v1_1-xxl."""
    max_text_tokens: int = 300
    """Tokens per caption."""


@dataclass
class DiffusionConfig:
    """The IDDPM objective of Open-Sora-Plan v1.1.0."""

    num_train_timesteps: int = 1000
    """Diffusion steps."""
    beta_start: float = 1e-4
    """First beta of the linear schedule."""
    beta_end: float = 2e-2
    """Last beta of the linear schedule."""
    learn_sigma: bool = True
    """The model predicts variance channels, trained with the variational bound ('hybrid' loss)."""
    text_dropout: float = 0.1
    """Probability of replacing a caption by the empty caption (classifier-free guidance)."""
    caption_word_dropout: float = 0.0
    """Probability of leaving each word out of a training caption (never every word): the words
    then appear in varied company (kohya's caption tag dropout, by words); what a dropped word
    named is then learned from the words left."""
    timestep_band_fraction: float = 0.0
    """Share of training timesteps drawn from `timestep_band` instead of all steps (0: the
    original uniform draw). A high-noise band with loss_weighting 'inverse_snr' teaches what the
    caption says about layout and motion, which are decided at high noise, where the epsilon MSE
    barely looks; a low-noise band trains what runs only there (the edit control module beside
    `osp edit --strength` below 1)."""
    timestep_band: tuple[int, int] = (500, 900)
    """Timesteps [start, end) of the band."""
    loss_weighting: str = "uniform"
    """Per-timestep weight of the epsilon MSE: 'uniform' (the original) or 'inverse_snr':
    1/SNR(t) clipped to [1, max_loss_weight], which makes it the x0 MSE where 1/SNR is in range."""
    max_loss_weight: float = 20.0
    """Cap of the 'inverse_snr' weight."""


@dataclass
class ValidationConfig:
    """Sample videos with fixed prompts and seed while training (`samples/step-N/` and TensorBoard)."""

    every: int = 0
    """Write samples every N steps and once before the first step (0: never); a resumed run
    does not sample again a step it sampled already."""
    prompts: list[str] = field(default_factory=lambda: ["A cat playing with a ball of yarn."])
    """Prompts to sample."""
    prompts_file: str = ""
    """A text file of prompts to sample instead of `prompts` (`--sample-prompts`): one per line,
    blank lines and lines starting with # skipped; read when the run starts (and again on resume)."""
    steps: int = 50
    """Sampler steps."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale."""
    seed: int = 0
    """Seed of the initial noise."""


@dataclass
class LoraConfig:
    """LoRA adapters on the transformer's projections (`osp t2v train --lora RANK`): the
    transformer is frozen and only the adapters train (PEFT's LoRA layers)."""

    rank: int | None = None
    """Rank of each adapter (None: no adapters, the whole transformer trains)."""
    alpha: float | None = None
    """Scale numerator: an adapter adds alpha / rank x B A x (None: alpha = rank)."""
    dropout: float = 0.0
    """Dropout on an adapter's input while training."""
    targets: str = "all"
    """Which projections get adapters: spatial (self-attention q/k/v/out and feed-forward of the
    spatial blocks), temporal (the same in the temporal blocks), cross (the caption
    cross-attention's q/k/v/out), all, a comma list of these, or a regular expression that
    matches whole module names (e.g. `transformer_blocks\\.0\\.attn1\\.to_q`)."""
    preserve_captions: str = ""
    """Prior preservation: captions the adapters must keep drawing as the base model draws them,
    a text file (one a line) or `model` (the base model repository's `captions.txt`, such as
    builtin:shapes' world). Each sample of a step also draws one of these captions, noises its
    latents afresh, and the adapters' prediction for that caption is pulled to the frozen
    base's (mean squared error, `preserve_weight`): a word spelled like the new one keeps its
    meaning. '' turns it off."""
    preserve_weight: float = 1.0
    """Weight of the prior-preservation term beside the diffusion loss."""
    preserve_sample_steps: int = 20
    """The clean latents the preservation term noises are the frozen base's own samples of its
    captions (one each, DPMSolverMultistep with this many steps, guidance as validation's,
    at --frames x --size), drawn once as the run starts; 0 noises the batch's clips instead."""


@dataclass
class VAETrainConfig:
    """`osp vae train`."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, betas=(0.5, 0.9)))
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


@dataclass
class T2VTrainConfig:
    """`osp t2v train`."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(frames=65, stride=3, height=512, width=512))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, weight_decay=1e-2))
    model: T2VModelConfig = field(default_factory=T2VModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class EditConfig:
    """`osp edit train`: the control module and ReVideo's three training stages."""

    stage: int = 1
    """1: motion only (no content condition); 2: content and motion, each dropped now and then
    so neither leans on the other (decoupled); 3: only the temporal attention of the control
    blocks trains (seams at the region's border)."""
    pretrained: str = ""
    """An edit control module folder to start from (the previous stage's model/); '' copies
    the transformer's first `num_layers` block pairs."""
    num_layers: int = 2
    """Block pairs in the control copy (a new module only)."""
    fusion_channels: int = 64
    """Width of the fused condition (a new module only)."""
    condition_dropout: float = 0.1
    """(stage 2) Probability of dropping the content, and separately the motion, condition."""
    region_margin: int = 2
    """Pixels added around an object's path (annotated objects) to make the region."""
    region_scale: tuple[float, float] = (0.25, 0.6)
    """Side of a random region as a share of the frame, for clips without annotated objects."""


@dataclass
class EditTrainConfig(T2VTrainConfig):
    """`osp edit train`: `model.pretrained` names the frozen transformer (a version folder of
    `model.model`); `edit` the control module trained beside it."""

    edit: EditConfig = field(default_factory=EditConfig)


# ----------------------------------------------------------------------------------- loading

C = TypeVar("C")

PRESET_GROUPS = ("vae", "t2v", "edit")


def presets_root() -> Path:
    """Where shipped presets live: inside the package when installed, else the checkout's presets/."""
    packaged = Path(__file__).resolve().parents[1] / "presets"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "presets"


def list_presets(group: str) -> list[str]:
    folder = presets_root() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_preset(preset: str, group: str) -> Path:
    """A preset name of `group` (e.g. stage1) or a path to a YAML file."""
    path = Path(preset).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder called e.g. shapes/ is not a preset
        if not path.is_file():
            raise InputError(f"preset file '{preset}' does not exist", "pass an existing YAML file or a preset name")
        return path
    named = presets_root() / group / f"{preset}.yaml"
    if not named.is_file():
        known = ", ".join(list_presets(group)) or "none found"
        raise InputError(f"unknown {group} preset '{preset}'", f"use one of: {known}, or a YAML file")
    return named


def load_config(cls: type[C], preset: str | None = None, overrides: dict[str, Any] | None = None, group: str = "") -> C:
    """Defaults of `cls`, updated by the preset (name or YAML path), then by `overrides`.

    `overrides` maps dotted keys (`run.max_steps`) to values; None values are ignored so CLI
    options left unset do not override the preset.
    """
    tree: dict[str, Any] = {}
    if preset:
        path = resolve_preset(preset, group)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"preset '{path}' is not valid YAML: {exc.__class__.__name__}", "fix the file") from None
        if not isinstance(loaded, dict):
            raise InputError(f"preset '{path}' must be a mapping of sections", "see presets/ for the layout")
        tree = _resolve_preset_paths(loaded, path.parent)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"config key '{dotted}' crosses a value", "check the key")
        node[leaf] = value
    return _build(cls, tree, prefix="")


# file-valued keys that a preset may give relative to its own folder
_PRESET_RELATIVE_KEYS = (("model", "config"), ("validation", "prompts_file"))


def _resolve_preset_paths(tree: dict[str, Any], base: Path) -> dict[str, Any]:
    for section, key in _PRESET_RELATIVE_KEYS:
        node = tree.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            candidate = Path(node[key]).expanduser()
            if not candidate.is_absolute() and (base / candidate).is_file():
                node[key] = str(base / candidate)
    return tree


def check_overrides(cls: type, overrides: dict[str, Any]) -> None:
    """Check each dotted key of `overrides` against `cls`'s tree (unknown keys, value types),
    whatever later overrides it: `--set run.max_steps=abc` is an error even when --max-steps
    is also given."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        _refuse_renamed(dotted)
        node: Any = cls
        *parents, leaf = dotted.split(".")
        prefix = ""
        for part in [*parents, leaf]:
            hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
            if part not in hints:
                where = prefix.rstrip(".") or "root"
                valid = ", ".join(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else "none (a value, not a section)"
                raise InputError(f"unknown config key '{prefix}{part}'", f"valid keys in '{where}': {valid}")
            node, prefix = hints[part], f"{prefix}{part}."
        if dataclasses.is_dataclass(node):
            raise InputError(f"config key '{dotted}' is a section, not a value", f"set one of its keys, e.g. {dotted}.{dataclasses.fields(node)[0].name}=...")
        _coerce(value, node, dotted)


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """`--set section.key=value` items as dotted overrides (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects KEY=VALUE, got '{item}'", "e.g. --set run.log_every=5")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config tree as plain JSON-able data (tuples become lists)."""
    return dataclasses.asdict(cfg)


# keys of older releases, for a one-line error that names the new key
RENAMED_KEYS = {"diffusion.high_noise_fraction": "diffusion.timestep_band_fraction", "diffusion.high_noise_range": "diffusion.timestep_band"}


def _refuse_renamed(dotted: str) -> None:
    """`InputError` naming the new key when `dotted` is a key of an older release."""
    if dotted in RENAMED_KEYS:
        new = RENAMED_KEYS[dotted]
        raise InputError(f"config key '{dotted}' was renamed to '{new}'", f"write {new.split('.')[-1]} in the preset, or --set {new}=...")


def _build(cls: type[C], values: dict[str, Any], prefix: str) -> C:
    if not isinstance(values, dict):
        raise InputError(f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping", "check the preset")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    for key in unknown:
        _refuse_renamed(f"{prefix}{key}")
    if unknown:
        raise InputError(
            f"unknown config key '{prefix}{unknown[0]}'",
            f"valid keys in '{prefix.rstrip('.') or 'root'}': {', '.join(fields)}",
        )
    default = cls()
    kwargs: dict[str, Any] = {}
    for name in fields:
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            section = values.get(name, {})
            base = dataclasses.asdict(getattr(default, name))
            if not isinstance(section, dict):
                raise InputError(f"config section '{prefix}{name}' must be a mapping", "check the preset")
            kwargs[name] = _build(hint, _merge_defaults(base, section), prefix=f"{prefix}{name}.")
        elif name in values:
            kwargs[name] = _coerce(values[name], hint, f"{prefix}{name}")
        else:
            kwargs[name] = getattr(default, name)
    cfg = cls(**kwargs)
    return cfg


def _merge_defaults(base: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    # only keys named in the section are checked/coerced again; the rest are the section's defaults
    merged = dict(base)
    merged.update(section)
    return merged


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except InputError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise InputError(f"config key '{key}' must be a list of {len(args)} values, got {value!r}", "e.g. [0.5, 0.9]")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config key '{key}' must be a list, got {value!r}", "write it as a YAML list")
        return [_coerce(v, args[0], key) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise InputError(f"config key '{key}' must be true or false, got {value!r}", "use true/false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip().lstrip("-").isdigit()):
            raise InputError(f"config key '{key}' must be an integer, got {value!r}", "use a whole number")
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise InputError(f"config key '{key}' must be a number, got {value!r}", "use a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"config key '{key}' must be a number, got {value!r}", "use a number such as 1e-4") from None
        if not math.isfinite(number):
            raise InputError(f"config key '{key}' must be a finite number, got {value!r}", "use a number such as 1e-4")
        return number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise InputError(f"config key '{key}' must be a string, got {value!r}", "quote the value")
        return "" if value is None else str(value)
    return value


def validate_common(cfg: Any) -> None:
    """Checks every trainer shares: values that would only fail deep inside a run."""
    run: RunConfig = cfg.run
    data: DataConfig = cfg.data
    if run.mixed_precision not in ("no", "fp16", "bf16", "auto"):
        raise InputError(f"run.mixed_precision '{run.mixed_precision}' is not one of no, fp16, bf16, auto", "pass --mixed-precision no|fp16|bf16|auto")
    if run.report_to not in ("tensorboard", "wandb", "all", "none"):
        raise InputError(f"run.report_to '{run.report_to}' is not one of tensorboard, wandb, all, none", "pick one of them")
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "log_every"):
        if getattr(run, name) < 1:
            raise InputError(f"run.{name} must be >= 1, got {getattr(run, name)}", f"set run.{name} to 1 or more")
    if run.keep_last < 0:
        raise InputError(f"run.keep_last must be >= 0, got {run.keep_last}", "0 keeps every checkpoint")
    if not 0.0 <= run.ema_decay < 1.0:
        raise InputError(f"run.ema_decay must be in [0, 1), got {run.ema_decay}", "e.g. 0.9999")
    if run.resume and run.overwrite:
        raise InputError("--resume and --overwrite both given", "pass --resume latest to continue the run, or --overwrite to start over")
    optim: OptimConfig = cfg.optim
    if optim.lr <= 0:
        raise InputError(f"optim.lr must be > 0, got {optim.lr:g}", "pass e.g. --lr 1e-4")
    if not all(0.0 <= beta < 1.0 for beta in optim.betas):
        raise InputError(f"optim.betas must be in [0, 1), got {list(optim.betas)}", "e.g. --set optim.betas=[0.9,0.999]")
    for name in ("eps", "weight_decay", "max_grad_norm", "lr_warmup_steps"):
        if getattr(optim, name) < 0 or (name == "eps" and optim.eps == 0):
            raise InputError(f"optim.{name} must be {'> 0' if name == 'eps' else '>= 0'}, got {getattr(optim, name):g}", f"fix it with --set optim.{name}=VALUE")
    for name in ("frames", "stride", "height", "width"):
        if getattr(data, name) < 1:
            raise InputError(f"data.{name} must be >= 1, got {getattr(data, name)}", f"set --{name} to 1 or more")
    par: ParallelConfig = cfg.parallel
    if par.strategy not in ("", "ddp", "fsdp"):
        raise InputError(f"--strategy '{par.strategy}' is not one of ddp, fsdp", "pass --strategy ddp or --strategy fsdp")
    for name in ("sequence_parallel", "replicate"):
        if getattr(par, name) < 1:
            raise InputError(f"parallel.{name} must be >= 1, got {getattr(par, name)}", f"set parallel.{name} to 1 or more")
    if par.activation_checkpointing < 0:
        raise InputError(f"parallel.activation_checkpointing must be >= 0, got {par.activation_checkpointing}", "0 turns it off, 1 checkpoints every block, k every k-th")
    if not data.data:
        raise InputError("no training data given", "pass --data LIST.txt|ANNOTATION.json (or set data.data in the preset)")
