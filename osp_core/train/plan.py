"""What a training run checks before it loads anything: `plan_training(config)`.

Every check that needs no model, device or process group lives here (the config's values, each
recipe's rules, the data source, an output folder holding another run), and so do the names of
a run's folder (its checkpoints). No torch at import: the train commands refuse bad input in a
fraction of a second. The trainer runs the same checks, so a run started from Python refuses
the same things.
"""

from __future__ import annotations

import math

import re
from pathlib import Path
from typing import Any

from ..errors import InputError
from .config import EditTrainConfig, T2VTrainConfig, ValidationConfig, VAETrainConfig, validate_common

RUN_FILES = ("checkpoints", "logs", "samples", "lora", "summary.json")
"""What a run writes into its output folder (and what --overwrite removes)."""
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")

LOSS_WEIGHTINGS = ("uniform", "inverse_snr")
MAX_SAMPLE_PROMPTS = 16
"""Most prompts a run samples at each interval (each one a whole sampling run on the model)."""

# measured (benchmarks/README.md, VAE training memory): the v1.1.0 VAE and its discriminator hold
# 3.8 GiB of fp32 weights, gradients and Adam states, one 17x256x256 sample ~74 GiB of saved
# activations; sharding the states saves < 3.8 GiB per rank
VAE_DDP_ONLY = (
    "VAE training runs under --strategy ddp without sequence parallel: its weights and optimizer states (3.8 GiB) are small next to its activations, which sharding does not reduce",
    "drop --strategy fsdp / --sequence-parallel for osp vae train; save memory with --gradient-checkpointing or a smaller --size / --frames",
)
# the control module is a few block pairs beside a frozen transformer: its states are small, and
# the frozen transformer would need sharding without training
EDIT_DDP_ONLY = (
    "osp edit train runs under --strategy ddp without sequence parallel",
    "drop parallel.strategy / parallel.sequence_parallel from --set (torchrun with DDP works)",
)


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resolve_resume(root: Path, resume: str) -> Path | None:
    """The checkpoint `--resume` names, for a run whose checkpoints go to `root`: '' -> None;
    'latest' -> the newest under `root` or None; else the given folder (checked)."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if path.is_dir() and not (path / STATE_FILE).is_file() and (path / "checkpoints").is_dir():
        found = list_checkpoints(path / "checkpoints")  # an output folder: take its newest
        if found:
            return found[-1]
    if not (path / STATE_FILE).is_file():
        raise InputError(f"'{resume}' is not a complete checkpoint (no {STATE_FILE})", "pass a checkpoints/step-N folder or --resume latest")
    return path


def check_previous_run(output_dir: Path, resume: str, overwrite: bool) -> bool:
    """Whether `output_dir` holds a run (checkpoints or a summary); refuses to train into it
    unless the run resumes it (--resume) or starts over (--overwrite): checkpoints of two runs
    must never mix."""
    done = list_checkpoints(output_dir / "checkpoints")
    held = bool(done) or (output_dir / "summary.json").is_file()
    if held and not resume and not overwrite:
        what = f"checkpoints up to step {int(done[-1].name.split('-')[1])}" if done else "a summary.json"
        raise InputError(
            f"'{output_dir}' already holds a training run ({what})",
            "pass --resume latest to continue it, or --overwrite to start over (which removes it), or choose another --output",
        )
    return held


def check_objective_options(
    num_train_timesteps: int, timestep_band_fraction: float, timestep_band: tuple[int, int], loss_weighting: str, max_loss_weight: float
) -> None:
    """Raise ValueError naming the first option of the objective beyond v1.1.0 that is out of range."""
    lo, hi = timestep_band
    if num_train_timesteps < 1:  # first: the range check below depends on it
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if not 0.0 <= timestep_band_fraction <= 1.0:
        raise ValueError(f"timestep_band_fraction must be in [0, 1], got {timestep_band_fraction}")
    if not 0 <= lo < hi <= num_train_timesteps:
        raise ValueError(f"timestep_band must satisfy 0 <= start < end <= {num_train_timesteps}, got {list(timestep_band)}")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got '{loss_weighting}'")
    if max_loss_weight < 1.0:
        raise ValueError(f"max_loss_weight must be >= 1, got {max_loss_weight}")


def _sharded(cfg: Any) -> bool:
    """Whether the config asks for a layout other than plain DDP (a strategy taken from the
    checkpoint --resume continues is known only to the trainer, which checks it again)."""
    return cfg.parallel.strategy == "fsdp" or cfg.parallel.sequence_parallel > 1


def _check_frames(frames: int, why: str) -> None:
    if (frames - 1) % 4:
        lower = (frames - 1) // 4 * 4 + 1
        raise InputError(f"--frames {frames} is not 4k+1{why}", f"use {lower} or {lower + 4}")


def check_vae_config(cfg: VAETrainConfig) -> None:
    """`osp vae train`'s own rules."""
    run, data, m = cfg.run, cfg.data, cfg.model
    if _sharded(cfg):
        raise InputError(*VAE_DDP_ONLY)
    if run.gradient_accumulation_steps != 1:
        raise InputError("VAE training does not accumulate gradients (two optimizers, adaptive GAN weight)", "set run.gradient_accumulation_steps to 1 and raise --batch-size")
    if data.use_image_num or data.cache_dir or data.buckets or data.upscale or data.fps:
        raise InputError("use_image_num, cache_dir, buckets, upscale and fps are text-to-video options", "remove them from the VAE config")
    if m.freeze_encoder and not (m.pretrained or m.init_from_2d_vae):
        raise InputError("model.freeze_encoder keeps a trained encoder, and none was given", "pass --pretrained WEIGHTS, or drop --freeze-encoder")
    if m.freeze_encoder and m.reset_mix_factor is not None:
        raise InputError("model.reset_mix_factor would change the frozen encoder's mix factors", "drop --reset-mix-factor or --freeze-encoder")
    _check_frames(data.frames, "")
    if data.height % 8 or data.width % 8:
        raise InputError(f"size {data.height}x{data.width} is not a multiple of 8", "pick a multiple of 8")


def check_t2v_config(cfg: T2VTrainConfig) -> None:
    """`osp t2v train`'s own rules (and those `osp edit train` inherits)."""
    from ..pipelines.t2v_inputs import check_steps

    d, df = cfg.data, cfg.diffusion
    _check_frames(d.frames, " (the VAE compresses time 4x)")
    if d.height % 16 or d.width % 16:
        raise InputError(f"size {d.height}x{d.width} is not a multiple of 16 (VAE 8x, patch 2)", "pick a multiple of 16")
    check_bucket_options(d)
    if not 0.0 <= df.text_dropout <= 1.0:
        raise InputError(f"text_dropout must be in [0, 1], got {df.text_dropout}", "e.g. 0.1")
    if not 0.0 <= df.caption_word_dropout < 1.0:
        raise InputError(f"caption_word_dropout must be in [0, 1), got {df.caption_word_dropout}", "e.g. 0.3")
    try:
        check_objective_options(df.num_train_timesteps, df.timestep_band_fraction, tuple(df.timestep_band), df.loss_weighting, df.max_loss_weight)
    except ValueError as exc:
        key = str(exc).split()[0]  # the messages start with the option's name
        raise InputError(f"diffusion.{exc}", f"fix it with --set diffusion.{key}=VALUE or in the preset") from None
    if d.use_image_num < 0:
        raise InputError(f"use_image_num must be >= 0, got {d.use_image_num}", "0 turns joint training off")
    check_steps("PNDM", cfg.validation.steps, "--validation-steps")  # validation samples use PNDM
    check_sampling_interval(cfg.validation)
    if cfg.validation.every:
        sample_prompts(cfg.validation)  # a bad prompt file is one line before anything loads
    check_lora_config(cfg)


def check_sampling_interval(validation: ValidationConfig) -> None:
    """`validation.every` is a step count, and a prompt file comes with one."""
    if validation.every < 0:
        raise InputError(f"validation.every must be >= 0, got {validation.every}", "pass --validate-every N (0 samples nothing)")
    if validation.prompts_file and not validation.every:
        raise InputError("--sample-prompts without an interval samples nothing", "pass --validate-every N as well (it samples before the first step and every N steps)")


def sample_prompts(validation: ValidationConfig) -> list[str]:
    """The prompts a run samples while it trains: those of `prompts_file` (`--sample-prompts`),
    else `prompts`; at most `MAX_SAMPLE_PROMPTS`, one-line refusals otherwise."""
    if validation.prompts_file:
        from ..pipelines.t2v_inputs import read_prompt_file

        return read_prompt_file(validation.prompts_file, comments=True, limit=MAX_SAMPLE_PROMPTS)
    prompts = [p.strip() for p in validation.prompts if p.strip()]
    if not prompts:
        raise InputError("validation.prompts holds no prompt", "pass --validation-prompt TEXT or --sample-prompts FILE")
    if len(prompts) > MAX_SAMPLE_PROMPTS:
        raise InputError(f"validation.prompts holds {len(prompts)} prompts, more than the {MAX_SAMPLE_PROMPTS} allowed", f"keep {MAX_SAMPLE_PROMPTS} or fewer")
    return prompts


MAX_PRESERVE_CAPTIONS = 1000
"""Most captions `--lora-preserve` reads: the base samples each once as the run starts."""
MAX_PRESERVE_SAMPLE_STEPS = 1000
MODEL_CAPTIONS = "captions.txt"
"""A model repository's own captions (builtin:shapes: its world's), what `--lora-preserve model` reads."""


def preserve_captions(cfg: Any, model_root: Path | None) -> list[str]:
    """The captions of `lora.preserve_captions` (`--lora-preserve`): a caption file, or `model`
    for `model_root`/captions.txt; [] when off. One-line refusals otherwise."""
    from ..pipelines.t2v_inputs import read_prompt_file

    source = cfg.lora.preserve_captions
    if not source:
        return []
    if source == "model":
        if model_root is None or not (model_root / MODEL_CAPTIONS).is_file():
            where = f"model '{cfg.model.model}'" if model_root is not None else "a transformer without --pretrained"
            raise InputError(f"--lora-preserve model: {where} ships no {MODEL_CAPTIONS}", "pass a caption file (one caption a line): --lora-preserve FILE")
        source = str(model_root / MODEL_CAPTIONS)
    return read_prompt_file(source, comments=True, limit=MAX_PRESERVE_CAPTIONS)


def check_bucket_options(data: Any) -> None:
    """--buckets, --upscale and --fps on their own (the grid of the model is checked again by
    the recipe, which reads its patch size)."""
    from ..data.buckets import parse_buckets

    parse_buckets(data.buckets, (data.frames, data.height, data.width), grid=16)
    if data.upscale and not data.buckets:
        raise InputError("--upscale without --buckets: every clip is already resized to --size", "pass --buckets auto or a list, or drop --upscale")
    if data.fps < 0:
        raise InputError(f"data.fps must be >= 0, got {data.fps:g}", "0 takes every --stride-th frame; e.g. --fps 8")


def check_lora_config(cfg: T2VTrainConfig) -> None:
    """The LoRA options' own rules (the rest needs the model: `T2VRecipe._check_lora`)."""
    from ..pipelines.lora_inputs import check_lora_options, split_targets

    lora = cfg.lora
    if lora.rank is None:
        if lora.preserve_captions:
            raise InputError("--lora-preserve without --lora: prior preservation keeps a LoRA run's adapters from changing other captions", "add --lora RANK, or drop --lora-preserve")
        return
    check_lora_options(lora.rank, lora.alpha, lora.dropout, lora.targets)
    if split_targets(lora.targets)[1] and _sharded(cfg):
        # the encoder is outside the sharded/sequence-parallel transformer: its adapters'
        # gradients are averaged over data-parallel ranks only (`T2VRecipe._sync_text_gradients`)
        raise InputError("--lora-targets text trains the text encoder's adapters under data parallelism only", "drop --strategy fsdp / --sequence-parallel (plain torchrun ranks work), or train transformer adapters only")
    if lora.preserve_captions and not (math.isfinite(lora.preserve_weight) and lora.preserve_weight > 0):
        raise InputError(f"lora.preserve_weight must be a finite number above 0, got {lora.preserve_weight}", "e.g. --set lora.preserve_weight=1")
    if lora.preserve_captions and not 0 <= lora.preserve_sample_steps <= MAX_PRESERVE_SAMPLE_STEPS:
        raise InputError(f"lora.preserve_sample_steps must be in [0, {MAX_PRESERVE_SAMPLE_STEPS}], got {lora.preserve_sample_steps}", "e.g. --set lora.preserve_sample_steps=20 (0: noise the batch's clips)")
    if cfg.run.ema:
        raise InputError("--ema with --lora: a LoRA run keeps no EMA (the adapters train for few steps at a high learning rate)", "drop --ema (or set run.ema false in the preset)")


def check_edit_config(cfg: EditTrainConfig) -> None:
    """`osp edit train`'s own rules, after the text-to-video ones."""
    if cfg.lora.rank is not None:
        raise InputError("osp edit train does not train LoRA adapters", "train the control module without lora.rank; LoRA adapters of the transformer train with osp t2v train --lora RANK")
    check_t2v_config(cfg)
    if _sharded(cfg):
        raise InputError(*EDIT_DDP_ONLY)
    e = cfg.edit
    if e.stage not in (1, 2, 3):
        raise InputError(f"edit.stage must be 1, 2 or 3, got {e.stage}", "pass --stage 1 (motion), 2 (content + motion) or 3 (seams)")
    if e.stage == 3 and not e.pretrained:
        raise InputError("stage 3 tunes a trained control module, and none was given", "pass --edit-module with stage 2's model/ folder")
    if e.pretrained and not (Path(e.pretrained).expanduser() / "config.json").is_file():
        raise InputError(f"--edit-module '{e.pretrained}' is not a control module folder (no config.json)", "pass a checkpoint's model/ folder written by `osp edit train`")
    if not cfg.model.pretrained:
        raise InputError("no transformer to control", "pass --version with the model's version folder (e.g. 17x64x64) or a LatteT2V folder")
    if not 0 <= e.condition_dropout < 1:
        raise InputError(f"edit.condition_dropout must be in [0, 1), got {e.condition_dropout}", "e.g. 0.1")
    if cfg.data.use_image_num:
        raise InputError("edit training takes videos only", "set data.use_image_num 0")
    if cfg.data.buckets or cfg.data.fps:
        raise InputError("osp edit train cuts every clip to --frames x --size at --stride (its regions and tracks follow that grid)", "drop data.buckets / data.fps")


def check_config(cfg: Any) -> None:
    """The checks every trainer shares, the recipe's own rules (by config type), and that the
    data source is there."""
    from ..data.annotations import check_data_source

    validate_common(cfg)
    if isinstance(cfg, EditTrainConfig):
        check_edit_config(cfg)
    elif isinstance(cfg, T2VTrainConfig):
        check_t2v_config(cfg)
    elif isinstance(cfg, VAETrainConfig):
        check_vae_config(cfg)
    check_data_source(cfg.data.data, folder="videos" if isinstance(cfg, VAETrainConfig) else "captioned")


def plan_training(cfg: Any) -> None:
    """Everything a run refuses before it loads a model: `check_config`, then an output folder
    that holds another run, then a --resume folder that is not a checkpoint."""
    check_config(cfg)
    output_dir = Path(cfg.run.output_dir)
    check_previous_run(output_dir, cfg.run.resume, cfg.run.overwrite)
    resolve_resume(output_dir / "checkpoints", cfg.run.resume)
