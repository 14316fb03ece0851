"""`osp vae train`: train or continue the CausalVideoVAE (one process, DDP via torchrun or
`accelerate launch`). Register with `app.command("train")(vae_train.train)` in osp_cli/vae.py."""

from __future__ import annotations

from typing import Annotated

import typer

from .train import (
    BatchOpt, CkptEveryOpt, DataOpt, DeterministicOpt, DeviceTrainOpt, EmaOpt, FramesOpt, GradCkptOpt, JsonSummaryOpt,
    KeepOpt, LogEveryOpt, LrOpt, MaxStepsOpt, OutputOpt, OverwriteOpt, PrecisionOpt, PresetOpt, PrintConfigOpt, ReportOpt, ResumeOpt,
    SeedOpt, SetOpt, SizeOpt, StrategyOpt, StrideOpt, WorkersOpt, common_overrides, console_reporter, finish, merge_overrides, run_standalone,
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
    pretrained: Annotated[str | None, typer.Option("--pretrained", help="Continue from these VAE weights (repo id, folder, or folder with vae/).")] = None,
    model_config: Annotated[str | None, typer.Option("--model-config", help="CausalVideoVAE config.json for a fresh model.")] = None,
    init_from_2d_vae: Annotated[str | None, typer.Option("--init-from-2d-vae", help="Inflate a diffusers image VAE (repo id or folder) by tail init.")] = None,
    reset_mix_factor: Annotated[float | None, typer.Option("--reset-mix-factor", help="Set every temporal mix_factor to this first (stage 3: 0.5).")] = None,
    freeze_encoder: Annotated[bool | None, typer.Option("--freeze-encoder/--train-encoder", help="Train the decoder only (the latents stay exactly as they were; needs --pretrained weights).")] = None,
    perceptual_weight: Annotated[float | None, typer.Option("--perceptual-weight", help="LPIPS weight (0: no LPIPS, no weights needed).")] = None,
    lpips_weights: Annotated[str | None, typer.Option("--lpips-weights", help="LPIPS VGG16 weights: FILE.safetensors or REPO_ID:FILENAME.")] = None,
    kl_weight: Annotated[float | None, typer.Option("--kl-weight", help="KL weight (1e-6).")] = None,
    disc_start: Annotated[int | None, typer.Option("--disc-start", help="Step that switches the GAN loss on (2001).")] = None,
    disc_weight: Annotated[float | None, typer.Option("--disc-weight", help="Adaptive GAN weight scale (0.5).")] = None,
    set_values: SetOpt = None,
    print_config: PrintConfigOpt = False,
    json_out: JsonSummaryOpt = False,
) -> None:
    """Train the CausalVideoVAE: L1 + LPIPS, KL, 3D PatchGAN (v1.1.0 recipe); resumable."""
    from osp_core.train.config import VAETrainConfig, config_to_dict, load_config

    overrides = common_overrides(
        data=data, output=output, frames=frames, stride=stride, size=size, max_steps=max_steps, batch_size=batch_size, lr=lr,
        seed=seed, mixed_precision=mixed_precision, checkpoint_every=checkpoint_every, keep_last=keep_last, resume=resume, overwrite=overwrite,
        log_every=log_every, report_to=report_to, ema=ema, gradient_checkpointing=gradient_checkpointing,
        num_workers=num_workers, deterministic=deterministic, device=device, strategy=strategy,
    )  # fmt: skip
    overrides.update({
        "model.pretrained": pretrained,
        "model.config": model_config,
        "model.init_from_2d_vae": init_from_2d_vae,
        "model.reset_mix_factor": reset_mix_factor,
        "model.freeze_encoder": freeze_encoder,
        "loss.perceptual_weight": perceptual_weight,
        "loss.lpips_weights": lpips_weights,
        "loss.kl_weight": kl_weight,
        "loss.disc_start": disc_start,
        "loss.disc_weight": disc_weight,
    })  # fmt: skip
    # a model source given on the command line replaces the preset's (they exclude each other)
    sources = {"model.pretrained": pretrained, "model.config": model_config, "model.init_from_2d_vae": init_from_2d_vae}
    if any(sources.values()):
        overrides.update({key: value or "" for key, value in sources.items()})
    config = load_config(VAETrainConfig, preset, merge_overrides(VAETrainConfig, overrides, set_values), group="vae")
    if print_config:
        from osp_core.io.jsonfile import dumps

        typer.echo(dumps(config_to_dict(config), indent=2))
        return
    from osp_core.train.trainer import Trainer
    from osp_core.train.vae_recipe import VAERecipe

    summary = Trainer(config, VAERecipe(config), reporter=console_reporter()).train()
    finish(summary, json_out)


if __name__ == "__main__":
    run_standalone(train, "train")
