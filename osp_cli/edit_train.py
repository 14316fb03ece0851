"""`osp edit train`: train the edit control module (ReVideo) beside a frozen LatteT2V. Register
with `app.command("train")(edit_train.train)` in osp_cli/edit.py."""

from __future__ import annotations

from typing import Annotated

import typer

from .train import (
    BatchOpt, CkptEveryOpt, DataOpt, DeterministicOpt, DeviceTrainOpt, FramesOpt, GradCkptOpt, JsonSummaryOpt,
    KeepOpt, LogEveryOpt, LrOpt, MaxStepsOpt, OutputOpt, OverwriteOpt, PrecisionOpt, PresetOpt, PrintConfigOpt, ReportOpt, ResumeOpt,
    SeedOpt, SetOpt, SizeOpt, StrideOpt, WorkersOpt, common_overrides, console_reporter, finish, merge_overrides, run_standalone,
)  # fmt: skip


def train(
    preset: PresetOpt = None,
    data: DataOpt = None,
    output: OutputOpt = None,
    frames: FramesOpt = None,
    stride: StrideOpt = None,
    size: SizeOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    mixed_precision: PrecisionOpt = None,
    checkpoint_every: CkptEveryOpt = None,
    keep_last: KeepOpt = None,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
    log_every: LogEveryOpt = None,
    report_to: ReportOpt = None,
    gradient_checkpointing: GradCkptOpt = None,
    num_workers: WorkersOpt = None,
    deterministic: DeterministicOpt = None,
    device: DeviceTrainOpt = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model repository (Hub id, folder or builtin:NAME) with vae/ and the transformer's version folder.")] = None,
    version: Annotated[str | None, typer.Option("--version", help="The frozen transformer: a version folder of --model (e.g. 17x64x64) or a LatteT2V folder.")] = None,
    stage: Annotated[int | None, typer.Option("--stage", help="1: motion only; 2: content and motion (decoupled); 3: the control blocks' temporal attention (seams).")] = None,
    edit_module: Annotated[str | None, typer.Option("--edit-module", help="Control module folder to continue from (the previous stage's checkpoint model/).")] = None,
    vae: Annotated[str | None, typer.Option("--vae", help="VAE folder or repo id (default: the repository's vae/).")] = None,
    text_encoder: Annotated[str | None, typer.Option("--text-encoder", help="T5 encoder: repo id or folder (default: the --model repository's text_encoder/, else DeepFloyd/t5-v1_1-xxl).")] = None,
    cache_dir: Annotated[str | None, typer.Option("--cache-dir", help="Cache VAE latents and T5 states here (data with annotated objects only: others need their frames for tracking).")] = None,
    set_values: SetOpt = None,
    print_config: PrintConfigOpt = False,
    json_out: JsonSummaryOpt = False,
) -> None:
    """Train the edit control module self-supervised on videos (ReVideo's stages); resumable. Copy a checkpoint's model/ to MODEL/edit/ for `osp edit --model MODEL`."""
    from osp_core.train.config import EditTrainConfig, config_to_dict, load_config

    overrides = common_overrides(
        data=data, output=output, frames=frames, stride=stride, size=size, max_steps=max_steps, batch_size=batch_size, lr=lr,
        seed=seed, mixed_precision=mixed_precision, checkpoint_every=checkpoint_every, keep_last=keep_last, resume=resume, overwrite=overwrite,
        log_every=log_every, report_to=report_to, gradient_checkpointing=gradient_checkpointing,
        num_workers=num_workers, deterministic=deterministic, device=device,
    )  # fmt: skip
    overrides.update({
        "model.model": _builtin_path(model),
        "model.pretrained": version,
        "model.vae": vae,
        "model.text_encoder": text_encoder,
        "data.cache_dir": cache_dir,
        "edit.stage": stage,
        "edit.pretrained": edit_module,
    })  # fmt: skip
    config = load_config(EditTrainConfig, preset, merge_overrides(EditTrainConfig, overrides, set_values), group="edit")
    if print_config:
        from osp_core.io.jsonfile import dumps

        typer.echo(dumps(config_to_dict(config), indent=2))
        return
    from osp_core.train.edit_recipe import EditRecipe
    from osp_core.train.trainer import Trainer

    summary = Trainer(config, EditRecipe(config), reporter=console_reporter()).train()
    finish(summary, json_out)


def _builtin_path(model: str | None) -> str | None:
    """builtin:NAME as its folder (the trainers read folders and Hub ids)."""
    if model is None:
        return None
    from osp_core.hub import BUILTIN_PREFIX, resolve_model_dir

    return str(resolve_model_dir(model, subfolders=[])) if model.startswith(BUILTIN_PREFIX) else model


if __name__ == "__main__":
    run_standalone(train, "train")
