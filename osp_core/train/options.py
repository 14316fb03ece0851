"""The options every train command shares, declared once: `TrainOptions`.

Each field carries its command-line flags, its help line and the config key it sets
(`overrides`); `osp_cli.train.train_command` builds each train command's signature from these
fields, so a new train command declares only its own options. No torch at import: the command
line builds its help from this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

HEAD = "head"
"""Fields shown before the common options (the preset), as opposed to the tail after a command's own."""
TAIL = "tail"
LORA_OPTIONS = ("lora", "lora_alpha", "lora_dropout", "lora_targets", "lora_preserve")
"""The LoRA fields: only `osp t2v train` takes them (the VAE and edit trainers have no adapters yet)."""
LORA_REFUSED = "LoRA adapters train on the text-to-video transformer only: osp t2v train --lora RANK"


def _option(flags: tuple[str, ...], help: str, key: str | None = None, default: Any = None, place: str = "") -> Any:  # noqa: A002 - typer's name
    return dataclasses.field(default=default, metadata={"flags": flags, "help": help, "key": key, "place": place})


@dataclass(frozen=True)
class TrainOptions:
    """The common options of `osp t2v train`, `osp vae train` and `osp edit train` (None: not
    given, the preset's or the config's default applies)."""

    preset: str | None = _option(("--preset", "-p"), "Preset name (see presets/) or a YAML file; CLI options override it.", place=HEAD)
    data: str | None = _option(("--data",), "Data list (ROOT,ANNOTATION.json lines), an annotation .json/.jsonl, or a folder of videos with NAME.txt captions beside them.", "data.data")
    output: str | None = _option(("--output", "-o"), "Output folder: checkpoints/, logs/, samples/, summary.json.", "run.output_dir")
    frames: int | None = _option(("--frames",), "Frames per sample (4k+1).", "data.frames")
    stride: int | None = _option(("--stride",), "Take every N-th source frame.", "data.stride")
    size: str | None = _option(("--size",), "Sample size HxW (or N for square).")  # data.height and data.width
    max_steps: int | None = _option(("--max-steps",), "Optimizer steps to train (total, across resumes).", "run.max_steps")
    batch_size: int | None = _option(("--batch-size",), "Samples per data-parallel rank per step (global batch: x ranks / sequence-parallel x accumulation).", "run.batch_size")
    lr: float | None = _option(("--lr",), "Learning rate.", "optim.lr")
    seed: int | None = _option(("--seed",), "Seed of init, data order and noise.", "run.seed")
    mixed_precision: str | None = _option(("--mixed-precision",), "no, fp16, bf16, or auto (bf16 where the device runs it natively: GPU, NPU, CPU with AMX; else no).", "run.mixed_precision")
    checkpoint_every: int | None = _option(("--checkpoint-every",), "Checkpoint every N steps.", "run.checkpoint_every")
    keep_last: int | None = _option(("--keep-last",), "Keep the newest K checkpoints (0: all).", "run.keep_last")
    resume: str | None = _option(("--resume",), "'latest' (the newest checkpoint that loads) or a checkpoint folder.", "run.resume")
    overwrite: bool = _option(
        ("--overwrite",), "Start over in an output folder that holds a run (removes its checkpoints, logs, samples, summary.json). Default: refuse.", "run.overwrite", default=False
    )
    log_every: int | None = _option(("--log-every",), "Log metrics every N steps.", "run.log_every")
    report_to: str | None = _option(("--report-to",), "tensorboard, wandb, all or none.", "run.report_to")
    ema: bool | None = _option(("--ema/--no-ema",), "Keep an EMA of the weights (model_ema/).", "run.ema")
    gradient_checkpointing: bool | None = _option(("--gradient-checkpointing/--no-gradient-checkpointing",), "Recompute activations to save memory.", "run.gradient_checkpointing")
    num_workers: int | None = _option(("--num-workers",), "DataLoader workers per process.", "run.num_workers")
    deterministic: bool | None = _option(("--deterministic/--no-deterministic",), "Deterministic kernels (bit-identical resumes on CPU).", "run.deterministic")
    device: str | None = _option(("--device",), "cpu trains on the CPU; cuda or npu refuses to start without one. Default: the launcher's device (CUDA / NPU if present, else CPU).", "run.device")
    strategy: str | None = _option(
        ("--strategy",),
        "ddp (whole model per rank) or fsdp (FSDP2: weights, gradients and optimizer states sharded; Distributed Checkpoint). Default: that of the checkpoint --resume continues, else ddp.",
        "parallel.strategy",
    )
    sequence_parallel: int | None = _option(("--sequence-parallel",), "Ranks sharing one sample's tokens (DSP; t2v); divides the process count.", "parallel.sequence_parallel")
    lora: int | None = _option(("--lora",), "Train LoRA adapters of this rank on a frozen transformer (written to OUTPUT/lora/ in the PEFT format) instead of the whole transformer.", "lora.rank")
    lora_alpha: float | None = _option(("--lora-alpha",), "LoRA scale numerator: an adapter adds alpha/rank x BAx (default: the rank).", "lora.alpha")
    lora_dropout: float | None = _option(("--lora-dropout",), "Dropout on the adapters' inputs while training (0).", "lora.dropout")
    lora_targets: str | None = _option(
        ("--lora-targets",), "Projections that get adapters: spatial, temporal, cross, all (default), a comma list of these, or a regex matching whole module names.", "lora.targets"
    )
    lora_preserve: str | None = _option(
        ("--lora-preserve",),
        "Prior preservation: a caption file (one a line) or 'model' (the base model's captions.txt); each sample also pulls the adapters' prediction for one of these captions to the frozen base's, so they keep drawing what the base drew.",
        "lora.preserve_captions",
    )
    set_values: list[str] | None = _option(("--set",), "Any config value as section.key=value (repeatable), e.g. --set optim.lr_warmup_steps=500.", place=TAIL)
    print_config: bool = _option(("--print-config",), "Print the resolved config as JSON and exit.", default=False, place=TAIL)
    json_out: bool = _option(("--json",), "Print the final summary as JSON on stdout.", default=False, place=TAIL)

    def overrides(self) -> dict[str, Any]:
        """Dotted config keys of the options given (None: not given; `--overwrite` only when set).
        A bad --size is one `InputError` line."""
        from ..io.media import parse_size

        size = parse_size(self.size)
        mapping: dict[str, Any] = {}
        for spec in dataclasses.fields(self):
            key = spec.metadata["key"]
            if key:
                mapping[key] = getattr(self, spec.name)
        mapping["run.overwrite"] = self.overwrite or None
        mapping["data.height"], mapping["data.width"] = size if size else (None, None)
        return mapping
