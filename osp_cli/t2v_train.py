"""`osp t2v train`: train or continue the LatteT2V transformer (one process, or torchrun with
--strategy ddp|fsdp and --sequence-parallel N). Register with
`app.command("train")(t2v_train.train)` in osp_cli/t2v.py."""

from __future__ import annotations

from typing import Annotated

import typer

from osp_core.train.options import TrainOptions

from .train import TextEncoderOpt, VaeOpt, run_standalone, run_training, train_command


@train_command()
def train(
    options: TrainOptions,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model repository (Hub id, folder or builtin:NAME) with vae/ and version folders.")] = None,
    pretrained: Annotated[str | None, typer.Option("--pretrained", help="Start from this transformer: a version folder of --model (e.g. 65x512x512) or a folder.")] = None,
    transformer_config: Annotated[str | None, typer.Option("--transformer-config", help="LatteT2V config.json for a fresh transformer.")] = None,
    vae: VaeOpt = None,
    text_encoder: TextEncoderOpt = None,
    image_data: Annotated[str | None, typer.Option("--image-data", help="Image list for joint training (default: frames of the video).")] = None,
    use_image_num: Annotated[int | None, typer.Option("--use-image-num", help="Images per video sample (joint image-video training).")] = None,
    cache_dir: Annotated[str | None, typer.Option("--cache-dir", help="Cache VAE latents and T5 states here (frozen encoders run once per sample).")] = None,
    buckets: Annotated[
        str | None,
        typer.Option("--buckets", help="Clips of mixed sizes and lengths: auto (each clip's aspect and length, at most --frames x --size) or FxHxW,FxHxW,...; each batch from one bucket."),
    ] = None,
    upscale: Annotated[bool | None, typer.Option("--upscale/--no-upscale", help="With --buckets: let a clip smaller than its bucket be resized up (default: it takes a smaller bucket).")] = None,
    fps: Annotated[float | None, typer.Option("--fps", help="Target frame rate: each clip's stride is its fps (annotation or file) / this, rounded (0: --stride for all).")] = None,
    text_dropout: Annotated[float | None, typer.Option("--text-dropout", help="Caption dropout for classifier-free guidance (0.1).")] = None,
    validate_every: Annotated[int | None, typer.Option("--validate-every", help="Write samples (samples/step-N/ and TensorBoard) before the first step and every N steps (0: never).")] = None,
    validation_prompt: Annotated[list[str] | None, typer.Option("--validation-prompt", help="Validation prompt (repeatable).")] = None,
    sample_prompts: Annotated[str | None, typer.Option("--sample-prompts", help="File of prompts to sample every --validate-every steps: one per line, lines starting with # skipped.")] = None,
    validation_steps: Annotated[int | None, typer.Option("--validation-steps", help="Sampler steps of validation samples.")] = None,
) -> None:
    """Train the text-to-video transformer (IDDPM hybrid loss, v1.1.0 recipe); resumable."""
    from osp_core.train.config import T2VTrainConfig

    own = {
        "model.model": model,
        "model.pretrained": pretrained,
        "model.config": transformer_config,
        "model.vae": vae,
        "model.text_encoder": text_encoder,
        "data.image_data": image_data,
        "data.use_image_num": use_image_num,
        "data.cache_dir": cache_dir,
        "data.buckets": buckets,
        "data.upscale": upscale,
        "data.fps": fps,
        "diffusion.text_dropout": text_dropout,
        "validation.every": validate_every,
        "validation.prompts": validation_prompt or None,
        "validation.prompts_file": sample_prompts,
        "validation.steps": validation_steps,
    }  # fmt: skip
    if validation_prompt and sample_prompts:
        from osp_core.errors import InputError

        raise InputError("--validation-prompt and --sample-prompts both given", "write every prompt in the --sample-prompts file")
    if pretrained and transformer_config:
        # --pretrained's own config.json sizes the model: a second config would be ignored
        from osp_core.errors import InputError

        raise InputError("--pretrained and --transformer-config both given", "pass --pretrained to continue a transformer, or --transformer-config for a fresh one")
    # a transformer source given on the command line replaces the preset's
    if pretrained or transformer_config:
        own.update({"model.pretrained": pretrained or "", "model.config": transformer_config or ""})
    run_training(options, T2VTrainConfig, "t2v", own, "osp_core.train.t2v_recipe:T2VRecipe")


if __name__ == "__main__":
    run_standalone(train, "train")
