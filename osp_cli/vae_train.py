"""`osp vae train`: train or continue the CausalVideoVAE (one process, DDP via torchrun or
`accelerate launch`). Register with `app.command("train")(vae_train.train)` in osp_cli/vae.py."""

from __future__ import annotations

from typing import Annotated

import typer

from osp_core.train.options import LORA_OPTIONS, LORA_REFUSED, TrainOptions

from .train import run_standalone, run_training, train_command


@train_command(
    without=("sequence_parallel",),
    refuse=(LORA_OPTIONS, LORA_REFUSED),
    help={
        "data": "Data list (ROOT,ANNOTATION.json lines), an annotation .json/.jsonl, or a video folder.",
        "strategy": "ddp (whole model per rank); fsdp is refused: the VAE's activations, not its 3.8 GiB of weights and optimizer states, fill the memory.",
    },
)
def train(
    options: TrainOptions,
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
) -> None:
    """Train the CausalVideoVAE: L1 + LPIPS, KL, 3D PatchGAN (v1.1.0 recipe); resumable."""
    from osp_core.train.config import VAETrainConfig

    own = {
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
    }  # fmt: skip
    # a model source given on the command line replaces the preset's (they exclude each other)
    sources = {"model.pretrained": pretrained, "model.config": model_config, "model.init_from_2d_vae": init_from_2d_vae}
    if any(sources.values()):
        own.update({key: value or "" for key, value in sources.items()})
    run_training(options, VAETrainConfig, "vae", own, "osp_core.train.vae_recipe:VAERecipe")


if __name__ == "__main__":
    run_standalone(train, "train")
