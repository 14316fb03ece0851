"""Inflate a diffusers image VAE (`AutoencoderKL`) into a CausalVideoVAE by tail init.

Every 2D kernel goes to the last temporal tap of its causal 3D kernel, zeros elsewhere; since a
causal convolution's last tap sees the current frame, each inflated layer computes, on a video
whose frames are all equal, exactly what the 2D layer computes on one frame. Layers the image
VAE does not have (the temporal down/upsampling convolutions) get the identity at their last
tap, for the same reason: with both of their branches returning the frame itself, a static
video passes through them unchanged. Attention projections (Linear in diffusers) become 1x1x1
convolutions. So the inflated VAE reconstructs every frame of a static video as the image VAE
reconstructs the image, and training starts from the image VAE's quality.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ModelLoadError

_RULES = [
    (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.", r"\1.mid.attn_1.norm."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_q\.", r"\1.mid.attn_1.q."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_k\.", r"\1.mid.attn_1.k."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_v\.", r"\1.mid.attn_1.v."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.", r"\1.mid.attn_1.proj_out."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
]


def _target_name(name: str, levels: int) -> str:
    match = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)$", name)
    if match:
        # diffusers counts decoder blocks from the deepest level, the causal VAE from full resolution
        level = levels - 1 - int(match.group(1))
        inner = f"block.{match.group(3)}" if match.group(3) is not None else "upsample"
        name = f"decoder.up.{level}.{inner}.{match.group(4)}"
    for pattern, replacement in _RULES:
        name = re.sub(pattern, replacement, name)
    return name


def causal_config_from_2d(vae_2d) -> dict:
    """A CausalVideoVAE config (v1.1.0 block layout) with the image VAE's widths and depth."""
    cfg = vae_2d.config
    widths = list(cfg.block_out_channels)
    hidden = widths[0]
    if any(w % hidden for w in widths) or len(widths) != 4:
        raise ModelLoadError(f"cannot inflate an image VAE with block widths {widths}", "the causal VAE has 4 levels whose widths are multiples of the first")
    return {
        "hidden_size": hidden,
        "hidden_size_mult": [w // hidden for w in widths],
        "num_res_blocks": cfg.layers_per_block,
        "z_channels": cfg.latent_channels,
        "embed_dim": cfg.latent_channels,
        "scaling_factor": float(getattr(cfg, "scaling_factor", 0.18215) or 0.18215),
    }


@torch.no_grad()
def inflate_state_dict(state_2d: dict[str, torch.Tensor], target: torch.nn.Module, levels: int = 4) -> dict[str, torch.Tensor]:
    """The causal VAE's state dict built from an image VAE's `state_2d` (see module doc)."""
    wanted = target.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, value in state_2d.items():
        base = _target_name(name, levels)
        stem, _, leaf = base.rpartition(".")
        # a causal conv keeps its Conv3d in `.conv`
        candidates = [base, f"{stem}.conv.{leaf}"]
        key = next((c for c in candidates if c in wanted), None)
        if key is None:
            raise ModelLoadError(f"image VAE tensor '{name}' has no place in the causal VAE (looked for {candidates[0]})", "inflate a diffusers AutoencoderKL with the SD layout")
        shape = wanted[key].shape
        if value.ndim == 2 and len(shape) == 5:  # Linear -> 1x1x1 conv
            value = value[:, :, None, None, None]
        elif value.ndim == 4 and len(shape) == 5:  # tail init
            kernel = torch.zeros(shape, dtype=value.dtype)
            kernel[:, :, -1] = value
            value = kernel
        if tuple(value.shape) != tuple(shape):
            raise ModelLoadError(f"image VAE tensor '{name}' has shape {tuple(value.shape)}, '{key}' needs {tuple(shape)}", "the two VAEs have different widths")
        out[key] = value
    for key, value in wanted.items():
        if key in out:
            continue
        if re.search(r"\.time_(down|up)sample\.conv\.(conv\.)?weight$", key):
            # identity at the last temporal tap, spatial centre
            kernel = torch.zeros_like(value)
            centre_h, centre_w = value.shape[3] // 2, value.shape[4] // 2
            for channel in range(min(value.shape[0], value.shape[1])):
                kernel[channel, channel, -1, centre_h, centre_w] = 1.0
            out[key] = kernel
        elif re.search(r"\.time_(down|up)sample\.conv\.(conv\.)?bias$", key):
            out[key] = torch.zeros_like(value)
        elif key.endswith("mix_factor"):
            out[key] = value.clone()
        else:
            raise ModelLoadError(f"the image VAE has no tensor for '{key}'", "inflate a diffusers AutoencoderKL with the SD layout")
    return out


def inflate_2d_vae(source: str, config_overrides: dict | None = None):
    """A CausalVideoVAE tail-initialised from a diffusers AutoencoderKL: a folder (with or without
    a `vae/` subfolder) or a Hub repo id (only the VAE files are fetched)."""
    from diffusers import AutoencoderKL

    from ..errors import HubUnavailableError

    local = Path(source).expanduser()
    if local.is_dir():
        attempts = [(str(local), "vae")] if (local / "vae" / "config.json").is_file() else [(str(local), None)]
    else:
        attempts = [(source, None), (source, "vae")]  # an image-VAE repo, or a pipeline repo's vae/
    last: Exception | None = None
    for where, sub in attempts:
        try:
            return inflate_from_module(AutoencoderKL.from_pretrained(where, subfolder=sub), config_overrides)
        except (OSError, ValueError) as exc:
            last = exc
    message = str(last).splitlines()[0] if last and str(last) else type(last).__name__
    from huggingface_hub import constants

    if not local.is_dir() and (constants.HF_HUB_OFFLINE or "offline" in message.lower() or "connect" in message.lower()):
        raise HubUnavailableError(f"image VAE '{source}' is not cached and the Hub cannot be reached", "download it first or pass a local folder")
    raise ModelLoadError(f"cannot load an image VAE from '{source}': {message}", "pass a diffusers AutoencoderKL (e.g. stabilityai/sd-vae-ft-mse)")


def inflate_from_module(vae_2d, config_overrides: dict | None = None):
    from ..models.causal_vae import CausalVideoVAE

    config = {**causal_config_from_2d(vae_2d), **(config_overrides or {})}
    model = CausalVideoVAE(**config)
    model.load_state_dict(inflate_state_dict(vae_2d.state_dict(), model, levels=len(config["hidden_size_mult"])), strict=True)
    return model
