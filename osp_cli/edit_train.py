"""`osp edit train`: train the edit control module (ReVideo) beside a frozen LatteT2V. Register
with `app.command("train")(edit_train.train)` in osp_cli/edit.py."""

from __future__ import annotations

from typing import Annotated

import typer

from osp_core.train.options import LORA_OPTIONS, LORA_REFUSED, TrainOptions

from .train import TextEncoderOpt, VaeOpt, run_standalone, run_training, train_command


@train_command(without=("ema", "strategy", "sequence_parallel"), refuse=(LORA_OPTIONS, LORA_REFUSED))
def train(
    options: TrainOptions,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model repository (Hub id, folder or builtin:NAME) with vae/ and the transformer's version folder.")] = None,
    version: Annotated[str | None, typer.Option("--version", help="The frozen transformer: a version folder of --model (e.g. 17x64x64) or a LatteT2V folder.")] = None,
    stage: Annotated[int | None, typer.Option("--stage", help="1: motion only; 2: content and motion (decoupled); 3: the control blocks' temporal attention (seams).")] = None,
    edit_module: Annotated[str | None, typer.Option("--edit-module", help="Control module folder to continue from (the previous stage's checkpoint model/).")] = None,
    vae: VaeOpt = None,
    text_encoder: TextEncoderOpt = None,
    cache_dir: Annotated[str | None, typer.Option("--cache-dir", help="Cache VAE latents and T5 states here (data with annotated objects only: others need their frames for tracking).")] = None,
) -> None:
    """Train the edit control module self-supervised on videos (ReVideo's stages); resumable. Copy a checkpoint's model/ to MODEL/edit/ for `osp edit --model MODEL`."""
    from osp_core.train.config import EditTrainConfig

    own = {
        "model.model": _builtin_path(model),
        "model.pretrained": version,
        "model.vae": vae,
        "model.text_encoder": text_encoder,
        "data.cache_dir": cache_dir,
        "edit.stage": stage,
        "edit.pretrained": edit_module,
    }  # fmt: skip
    run_training(options, EditTrainConfig, "edit", own, "osp_core.train.edit_recipe:EditRecipe")


def _builtin_path(model: str | None) -> str | None:
    """builtin:NAME as its folder (the trainers read folders and Hub ids)."""
    if model is None:
        return None
    from osp_core.hub import BUILTIN_PREFIX, resolve_model_dir

    return str(resolve_model_dir(model, subfolders=[])) if model.startswith(BUILTIN_PREFIX) else model


if __name__ == "__main__":
    run_standalone(train, "train")
