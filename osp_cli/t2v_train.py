"""`osp t2v train`: train or continue the LatteT2V transformer (one process, or torchrun with
--strategy ddp|fsdp and --sequence-parallel N). Register with
`app.command("train")(t2v_train.train)` in osp_cli/t2v.py."""

from __future__ import annotations

from typing import Annotated

import typer

from .train import (
    BatchOpt, CkptEveryOpt, DataOpt, DeterministicOpt, DeviceTrainOpt, EmaOpt, FramesOpt, GradCkptOpt, JsonSummaryOpt,
    KeepOpt, LogEveryOpt, LrOpt, MaxStepsOpt, OutputOpt, OverwriteOpt, PrecisionOpt, PresetOpt, PrintConfigOpt, ReportOpt, ResumeOpt,
    SeedOpt, SequenceParallelOpt, SetOpt, SizeOpt, StrategyOpt, StrideOpt, WorkersOpt, common_overrides, console_reporter, finish, merge_overrides, run_standalone,
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
    ema: EmaOpt = None,
    gradient_checkpointing: GradCkptOpt = None,
    num_workers: WorkersOpt = None,
    deterministic: DeterministicOpt = None,
    device: DeviceTrainOpt = None,
    strategy: StrategyOpt = None,
    sequence_parallel: SequenceParallelOpt = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model repository (Hub id or folder) with vae/ and version folders.")] = None,
    pretrained: Annotated[str | None, typer.Option("--pretrained", help="Start from this transformer: a version folder of --model (e.g. 65x512x512) or a folder.")] = None,
    transformer_config: Annotated[str | None, typer.Option("--transformer-config", help="LatteT2V config.json for a fresh transformer.")] = None,
    vae: Annotated[str | None, typer.Option("--vae", help="VAE folder or repo id (default: the repository's vae/).")] = None,
    text_encoder: Annotated[str | None, typer.Option("--text-encoder", help="T5 encoder: repo id or folder (default: the --model repository's text_encoder/, else DeepFloyd/t5-v1_1-xxl).")] = None,
    image_data: Annotated[str | None, typer.Option("--image-data", help="Image list for joint training (default: frames of the video).")] = None,
    use_image_num: Annotated[int | None, typer.Option("--use-image-num", help="Images per video sample (joint image-video training).")] = None,
    cache_dir: Annotated[str | None, typer.Option("--cache-dir", help="Cache VAE latents and T5 states here (frozen encoders run once per sample).")] = None,
    text_dropout: Annotated[float | None, typer.Option("--text-dropout", help="Caption dropout for classifier-free guidance (0.1).")] = None,
    validate_every: Annotated[int | None, typer.Option("--validate-every", help="Write validation samples every N steps (0: never).")] = None,
    validation_prompt: Annotated[list[str] | None, typer.Option("--validation-prompt", help="Validation prompt (repeatable).")] = None,
    validation_steps: Annotated[int | None, typer.Option("--validation-steps", help="Sampler steps of validation samples.")] = None,
    set_values: SetOpt = None,
    print_config: PrintConfigOpt = False,
    json_out: JsonSummaryOpt = False,
) -> None:
    """Train the text-to-video transformer (IDDPM hybrid loss, v1.1.0 recipe); resumable."""
    from osp_core.train.config import T2VTrainConfig, config_to_dict, load_config

    overrides = common_overrides(
        data=data, output=output, frames=frames, stride=stride, size=size, max_steps=max_steps, batch_size=batch_size, lr=lr,
        seed=seed, mixed_precision=mixed_precision, checkpoint_every=checkpoint_every, keep_last=keep_last, resume=resume, overwrite=overwrite,
        log_every=log_every, report_to=report_to, ema=ema, gradient_checkpointing=gradient_checkpointing,
        num_workers=num_workers, deterministic=deterministic, device=device, strategy=strategy, sequence_parallel=sequence_parallel,
    )  # fmt: skip
    overrides.update({
        "model.model": model,
        "model.pretrained": pretrained,
        "model.config": transformer_config,
        "model.vae": vae,
        "model.text_encoder": text_encoder,
        "data.image_data": image_data,
        "data.use_image_num": use_image_num,
        "data.cache_dir": cache_dir,
        "diffusion.text_dropout": text_dropout,
        "validation.every": validate_every,
        "validation.prompts": validation_prompt or None,
        "validation.steps": validation_steps,
    })  # fmt: skip
    if pretrained and transformer_config:
        # --pretrained's own config.json sizes the model: a second config would be ignored
        from osp_core.errors import InputError

        raise InputError("--pretrained and --transformer-config both given", "pass --pretrained to continue a transformer, or --transformer-config for a fresh one")
    # a transformer source given on the command line replaces the preset's
    if pretrained or transformer_config:
        overrides.update({"model.pretrained": pretrained or "", "model.config": transformer_config or ""})
    config = load_config(T2VTrainConfig, preset, merge_overrides(T2VTrainConfig, overrides, set_values), group="t2v")
    if print_config:
        from osp_core.io.jsonfile import dumps

        typer.echo(dumps(config_to_dict(config), indent=2))
        return
    from osp_core.train.t2v_recipe import T2VRecipe
    from osp_core.train.trainer import Trainer

    summary = Trainer(config, T2VRecipe(config), reporter=console_reporter()).train()
    finish(summary, json_out)


if __name__ == "__main__":
    run_standalone(train, "train")
