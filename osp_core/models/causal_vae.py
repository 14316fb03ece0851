"""CausalVideoVAE: the Open-Sora-Plan v1.1.0 video autoencoder.

Video (B, 3, T, H, W) in [-1, 1], T = 4k + 1, is compressed 4x in time and 8x8 in space to
(B, 4, k + 1, H/8, W/8). Convolutions over time are causal: they pad the front with copies of
the first frame, so the first frame is coded like an image.

Reads bottom-up: convolutions -> blocks -> encoder/decoder -> the model (with tiling).
Block types are named by strings in the config, exactly as the released `config.json`
names them, and parameter names equal the released state dict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from ..errors import InputError, ModelLoadError
from .attention import DEFAULT_BACKEND, attention
from .loading import StrictLoadingMixin


def _norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """silu(norm(x)) with one fused kernel, in place on the norm output when no graph is recorded."""
    return F.silu(norm(x), inplace=not torch.is_grad_enabled())


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _per_frame(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame of (B, C, T, H, W)."""
    t = x.shape[2]
    y = module(rearrange(x, "b c t h w -> (b t) c h w"))
    return rearrange(y, "(b t) c h w -> b c t h w", t=t)


class PerFrame:
    """A 2D module applied to every frame. `forward_frames` takes ((B*T), C, H, W); the encoder
    and decoder keep runs of such modules in that layout instead of refolding per module."""

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _per_frame(self.forward_frames, x) if x.ndim == 5 else self.forward_frames(x)


# ---------------------------------------------------------------------------------------------
# Convolutions


class CausalConv3d(nn.Module):
    """3D convolution that pads time only at the front, with copies of the first frame."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0) -> None:
        super().__init__()
        kernel = tuple(kernel_size) if isinstance(kernel_size, Sequence) else (kernel_size,) * 3
        pad = tuple(padding) if isinstance(padding, Sequence) else (padding,) * 3
        self.time_pad = kernel[0] - 1
        # Spatial padding stays in the conv (zeros); temporal padding is causal (replicate).
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=(0, pad[1], pad[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            # One replicate-pad kernel instead of the original's repeat + cat (two copies).
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0), mode="replicate")
        return self.conv(x)


class FrameConv2d(PerFrame, nn.Conv2d):
    """A 2D convolution applied to each frame (the released `Conv2d` block type)."""

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Conv2d.forward(self, x)


# ---------------------------------------------------------------------------------------------
# Blocks


def _residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm-silu-conv twice plus the shortcut, one statement per step so each intermediate is
    freed as soon as the next exists (at most three activations alive at once)."""
    h = _norm_silu(block.norm1, x)
    h = block.conv1(h)
    h = _norm_silu(block.norm2, h)
    h = block.conv2(block.dropout(h))
    # In place: autograd does not need a conv's output.
    return h.add_(block.nin_shortcut(x) if hasattr(block, "nin_shortcut") else x)


class ResnetBlock2D(PerFrame, nn.Module):
    """Per-frame residual block (GroupNorm statistics per frame)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        return _residual(self, x)


class ResnetBlock3D(nn.Module):
    """Causal 3D residual block (GroupNorm statistics over the whole clip)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _residual(self, x)


class AttnBlock3DFix(nn.Module):
    """Single-head spatial self-attention within each frame (the v1.1.0 'Fix' variant)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = CausalConv3d(channels, channels, 1)
        self.k = CausalConv3d(channels, channels, 1)
        self.v = CausalConv3d(channels, channels, 1)
        self.proj_out = CausalConv3d(channels, channels, 1)
        self.attention_backend = DEFAULT_BACKEND  # set_attention_backend() changes it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, t, height, width = x.shape
        q, k, v = (rearrange(proj(h), "b c t h w -> (b t) 1 (h w) c") for proj in (self.q, self.k, self.v))
        out = attention(q, k, v, backend=self.attention_backend)  # scale 1/sqrt(c), as the original
        out = rearrange(out, "(b t) 1 (h w) c -> b c t h w", b=b, h=height)
        return self.proj_out(out).add_(x)


class Downsample(PerFrame, nn.Module):
    """Per-frame 2x spatial downsampling: pad right/bottom by one, 3x3 conv with stride 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class SpatialUpsample2x(nn.Module):
    """Nearest 2x spatial upsampling then a (1, 3, 3) causal conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, (1, 3, 3), padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return self.conv(x)


class TimeDownsampleRes2x(nn.Module):
    """2x causal time downsampling: sigmoid(mix_factor) * avg-pool + (1 - it) * strided conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, mix_factor: float = 2.0) -> None:
        super().__init__()
        self.time_pad = kernel_size - 1
        self.kernel_size = kernel_size
        # A plain Conv3d (not causal): causal padding is applied once for both branches.
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=(2, 1, 1), padding=(0, 1, 1))
        self.mix_factor = nn.Parameter(torch.tensor([mix_factor]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0), mode="replicate")
        # lerp(conv, pool, alpha) = alpha * pool + (1 - alpha) * conv, one fused kernel
        conv = self.conv(x)
        # Under autocast the conv runs in low precision and the pool does not: mix in one dtype.
        return torch.lerp(conv, self._time_avg_pool(x).to(conv.dtype), alpha.to(conv.dtype))

    def _time_avg_pool(self, x: torch.Tensor) -> torch.Tensor:
        """AvgPool3d((k, 1, 1), stride (2, 1, 1)) as strided slices: works in every dtype
        (CPU has no bf16 avg_pool3d kernel)."""
        n = (x.shape[2] - self.kernel_size) // 2 + 1
        total = x[:, :, 0 : 2 * n - 1 : 2]
        for tap in range(1, self.kernel_size):
            total = total + x[:, :, tap : tap + 2 * n - 1 : 2]
        return total / self.kernel_size


class TimeUpsampleRes2x(nn.Module):
    """2x time upsampling of all frames but the first: sigmoid(mix_factor) * interpolation + (1 - it) * causal conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, mix_factor: float = 2.0) -> None:
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, kernel_size, padding=1)
        self.mix_factor = nn.Parameter(torch.tensor([mix_factor]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        if x.shape[2] > 1:
            first, rest = x[:, :, :1], x[:, :, 1:]
            rest = F.interpolate(rest, scale_factor=(2.0, 1.0, 1.0), mode="trilinear")
            x = torch.cat([first, rest], dim=2)
        conv = self.conv(x)
        return torch.lerp(conv, x.to(conv.dtype), alpha.to(conv.dtype))


def _conv_in_out(name: str, in_channels: int, out_channels: int) -> nn.Module:
    if name == "Conv2d":
        return FrameConv2d(in_channels, out_channels, 3, padding=1)
    if name == "CausalConv3d":
        return CausalConv3d(in_channels, out_channels, 3, padding=1)
    raise ModelLoadError(f"unknown conv type '{name}' in the VAE config", "use Conv2d or CausalConv3d")


BLOCK_TYPES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (ResnetBlock2D, ResnetBlock3D, AttnBlock3DFix, Downsample, SpatialUpsample2x, TimeDownsampleRes2x, TimeUpsampleRes2x)
}


def _block(name: str, *args: int, **kwargs: float) -> nn.Module:
    try:
        return BLOCK_TYPES[name](*args, **kwargs)
    except KeyError:
        raise ModelLoadError(f"unknown block type '{name}' in the VAE config", "supported: " + ", ".join(sorted(BLOCK_TYPES))) from None


# ---------------------------------------------------------------------------------------------
# Encoder / decoder


class _Stage(nn.Module):
    """One resolution level: resnet blocks (+ optional attention), then optional resampling
    (`downsample`/`time_downsample` in the encoder, `upsample`/`time_upsample` in the decoder)."""

    RESAMPLERS = ("downsample", "time_downsample", "upsample", "time_upsample")

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def run(self, run: "_LayoutRunner") -> None:
        for i, block in enumerate(self.block):
            run(block, checkpoint=True)
            if len(self.attn):
                run(self.attn[i])
        for name in self.RESAMPLERS:
            if hasattr(self, name):
                run(getattr(self, name))


class _Mid(nn.Module):
    def __init__(self, resnet: str, attention: str, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = _block(resnet, channels, channels, dropout=dropout)
        self.attn_1 = _block(attention, channels)
        self.block_2 = _block(resnet, channels, channels, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _LayoutRunner:
    """Runs a sequence of modules on a clip, keeping it in frame layout ((B*T), C, H, W) across
    consecutive per-frame modules and in video layout (B, C, T, H, W) otherwise: one refold
    per boundary instead of two per 2D module. Checkpoints when the owner asks for it."""

    def __init__(self, owner: nn.Module, x: torch.Tensor) -> None:
        self.owner, self.h, self.frames = owner, x, x.shape[2]

    def __call__(self, module: nn.Module, checkpoint: bool = False) -> None:
        if isinstance(module, PerFrame):
            if self.h.ndim == 5:
                self.frames = self.h.shape[2]
                self.h = rearrange(self.h, "b c t h w -> (b t) c h w")
            fn = module.forward_frames
        else:
            self.h = self.video()
            fn = module
        if checkpoint and self.owner.gradient_checkpointing and torch.is_grad_enabled():
            self.h = self.owner._gradient_checkpointing_func(fn, self.h)
        else:
            self.h = fn(self.h)

    def video(self) -> torch.Tensor:
        if self.h.ndim == 4:
            return rearrange(self.h, "(b t) c h w -> b c t h w", t=self.frames)
        return self.h


class Encoder(nn.Module):
    def __init__(
        self,
        z_channels: int,
        hidden_size: int,
        hidden_size_mult: Sequence[int],
        attn_resolutions: Sequence[int],
        conv_in: str,
        conv_out: str,
        attention: str,
        resnet_blocks: Sequence[str],
        spatial_downsample: Sequence[str],
        temporal_downsample: Sequence[str],
        mid_resnet: str,
        dropout: float,
        resolution: int,
        num_res_blocks: int,
        double_z: bool,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        self.conv_in = _conv_in_out(conv_in, 3, hidden_size)
        self.down = nn.ModuleList()
        channels, res = hidden_size, resolution
        for level, mult in enumerate(hidden_size_mult):
            stage = _Stage()
            out_channels = hidden_size * mult
            for _ in range(num_res_blocks):
                stage.block.append(_block(resnet_blocks[level], channels, out_channels, dropout=dropout))
                channels = out_channels
                if res in attn_resolutions:
                    stage.attn.append(_block(attention, channels))
            if spatial_downsample[level]:
                stage.downsample = _block(spatial_downsample[level], channels, channels)
                res //= 2
            if temporal_downsample[level]:
                stage.time_downsample = _block(temporal_downsample[level], channels, channels)
            self.down.append(stage)
        self.mid = _Mid(mid_resnet, attention, channels, dropout)
        self.norm_out = _group_norm(channels)
        self.conv_out = _conv_in_out(conv_out, channels, 2 * z_channels if double_z else z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run = _LayoutRunner(self, x)
        run(self.conv_in)
        for stage in self.down:
            stage.run(run)
        run(self.mid, checkpoint=True)
        return self.conv_out(_norm_silu(self.norm_out, run.video()))


class Decoder(nn.Module):
    def __init__(
        self,
        z_channels: int,
        hidden_size: int,
        hidden_size_mult: Sequence[int],
        attn_resolutions: Sequence[int],
        conv_in: str,
        conv_out: str,
        attention: str,
        resnet_blocks: Sequence[str],
        spatial_upsample: Sequence[str],
        temporal_upsample: Sequence[str],
        mid_resnet: str,
        dropout: float,
        resolution: int,
        num_res_blocks: int,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        levels = len(hidden_size_mult)
        channels = hidden_size * hidden_size_mult[-1]
        res = resolution // 2 ** (levels - 1)
        self.conv_in = _conv_in_out(conv_in, z_channels, channels)
        self.mid = _Mid(mid_resnet, attention, channels, dropout)
        stages: list[_Stage] = []
        for level in reversed(range(levels)):
            stage = _Stage()
            out_channels = hidden_size * hidden_size_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(_block(resnet_blocks[level], channels, out_channels, dropout=dropout))
                channels = out_channels
                if res in attn_resolutions:
                    stage.attn.append(_block(attention, channels))
            if spatial_upsample[level]:
                stage.upsample = _block(spatial_upsample[level], channels, channels)
                res *= 2
            if temporal_upsample[level]:
                stage.time_upsample = _block(temporal_upsample[level], channels, channels)
            stages.insert(0, stage)
        # Indexed by level (0 = full resolution), run from the deepest level up.
        self.up = nn.ModuleList(stages)
        self.norm_out = _group_norm(channels)
        self.conv_out = _conv_in_out(conv_out, channels, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        run = _LayoutRunner(self, z)
        run(self.conv_in)
        run(self.mid, checkpoint=True)
        for stage in reversed(self.up):
            stage.run(run)
        return self.conv_out(_norm_silu(self.norm_out, run.video()))


# ---------------------------------------------------------------------------------------------
# Tiling helpers


def _blend_weights(extent: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear ramps (1 - y/extent, y/extent) for y < extent, computed in float64 like the original."""
    ramp = torch.arange(extent, dtype=torch.float64) / extent
    return (1 - ramp).to(like), ramp.to(like)


def _blend(prev: torch.Tensor, cur: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Blend the last `extent` rows/columns of `prev` into the first of `cur` (in place on `cur`)."""
    extent = min(prev.shape[dim], cur.shape[dim], extent)
    if extent <= 0:
        return cur
    keep, take = _blend_weights(extent, cur)
    shape = [1] * cur.ndim
    shape[dim] = extent
    head = cur.narrow(dim, 0, extent)
    head.copy_(prev.narrow(dim, prev.shape[dim] - extent, extent) * keep.view(shape) + head * take.view(shape))
    return cur


def _temporal_windows(length: int, window: int) -> list[tuple[int, int]]:
    """Rollback windows over `length` frames: each starts on the last frame of the one before."""
    starts = list(range(0, length, window - 1))
    if len(starts) == 1:
        return [(0, length)]
    spans = [(starts[i], starts[i + 1] + 1) for i in range(len(starts) - 1)]
    if spans[-1][1] > length:
        spans[-1] = (spans[-1][0], length)
    elif spans[-1][1] < length:
        spans.append((starts[-1], length))
    return spans


# ---------------------------------------------------------------------------------------------
# The model


class CausalVideoVAE(StrictLoadingMixin, ModelMixin, ConfigMixin):
    """Open-Sora-Plan v1.1.0 CausalVideoVAE (`_class_name: CausalVAEModel` in released configs).

    `encode(video).latent_dist` gives a diagonal Gaussian over (B, 4, (T-1)/4+1, H/8, W/8);
    `decode(latents).sample` gives (B, 3, T, H, W). Latents for diffusion are
    `latent_dist.sample() * config.scaling_factor`.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ResnetBlock3D", "ResnetBlock2D", "AttnBlock3DFix"]
    # Released training checkpoints carry LPIPS/discriminator weights under `loss.`;
    # they are read by the trainer (`read_loss_state_dict`), not by this model.
    _keys_to_ignore_on_load_unexpected = [r"^loss\."]

    @register_to_config
    def __init__(
        self,
        hidden_size: int = 128,
        z_channels: int = 4,
        hidden_size_mult: Sequence[int] = (1, 2, 4, 4),
        attn_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
        resolution: int = 256,
        double_z: bool = True,
        embed_dim: int = 4,
        num_res_blocks: int = 2,
        q_conv: str = "CausalConv3d",
        encoder_conv_in: str = "Conv2d",
        encoder_conv_out: str = "CausalConv3d",
        encoder_attention: str = "AttnBlock3DFix",
        encoder_resnet_blocks: Sequence[str] = ("ResnetBlock2D", "ResnetBlock2D", "ResnetBlock3D", "ResnetBlock3D"),
        encoder_spatial_downsample: Sequence[str] = ("Downsample", "Downsample", "Downsample", ""),
        encoder_temporal_downsample: Sequence[str] = ("", "TimeDownsampleRes2x", "TimeDownsampleRes2x", ""),
        encoder_mid_resnet: str = "ResnetBlock3D",
        decoder_conv_in: str = "CausalConv3d",
        decoder_conv_out: str = "CausalConv3d",
        decoder_attention: str = "AttnBlock3DFix",
        decoder_resnet_blocks: Sequence[str] = ("ResnetBlock3D",) * 4,
        decoder_spatial_upsample: Sequence[str] = ("", "SpatialUpsample2x", "SpatialUpsample2x", "SpatialUpsample2x"),
        decoder_temporal_upsample: Sequence[str] = ("", "", "TimeUpsampleRes2x", "TimeUpsampleRes2x"),
        decoder_mid_resnet: str = "ResnetBlock3D",
        scaling_factor: float = 0.18215,
    ) -> None:
        super().__init__()
        levels = len(hidden_size_mult)
        lists = {
            "encoder_resnet_blocks": encoder_resnet_blocks,
            "encoder_spatial_downsample": encoder_spatial_downsample,
            "encoder_temporal_downsample": encoder_temporal_downsample,
            "decoder_resnet_blocks": decoder_resnet_blocks,
            "decoder_spatial_upsample": decoder_spatial_upsample,
            "decoder_temporal_upsample": decoder_temporal_upsample,
        }
        for key, value in lists.items():
            if len(value) != levels:
                raise ModelLoadError(f"VAE config '{key}' has {len(value)} entries, hidden_size_mult has {levels}", "give one entry per level")
        self.encoder = Encoder(
            z_channels, hidden_size, hidden_size_mult, attn_resolutions, encoder_conv_in, encoder_conv_out,
            encoder_attention, encoder_resnet_blocks, encoder_spatial_downsample, encoder_temporal_downsample,
            encoder_mid_resnet, dropout, resolution, num_res_blocks, double_z,
        )  # fmt: skip
        self.decoder = Decoder(
            z_channels, hidden_size, hidden_size_mult, attn_resolutions, decoder_conv_in, decoder_conv_out,
            decoder_attention, decoder_resnet_blocks, decoder_spatial_upsample, decoder_temporal_upsample,
            decoder_mid_resnet, dropout, resolution, num_res_blocks,
        )  # fmt: skip
        if q_conv != "CausalConv3d":
            raise ModelLoadError(f"unknown q_conv '{q_conv}' in the VAE config", "use CausalConv3d")
        self.quant_conv = CausalConv3d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = CausalConv3d(embed_dim, z_channels, 1)

        self.spatial_compression = 2 ** sum(1 for s in encoder_spatial_downsample if s)
        self.temporal_compression = 2 ** sum(1 for s in encoder_temporal_downsample if s)
        self.use_tiling = False
        self.enable_tiling(use_tiling=False)

    # -- shapes ---------------------------------------------------------------------------------

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(frames, height, width) of the latents of a video of the given size."""
        return (num_frames - 1) // self.temporal_compression + 1, height // self.spatial_compression, width // self.spatial_compression

    def video_frames(self, latent_frames: int) -> int:
        """Frames decoded from `latent_frames` latent frames."""
        return (latent_frames - 1) * self.temporal_compression + 1

    def check_video(self, x: torch.Tensor) -> None:
        """Raise `InputError` unless `x` is (B, 3, T, H, W) with T = 4k+1 and H, W multiples of 8."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise InputError(f"expected a video tensor (B, 3, T, H, W), got shape {tuple(x.shape)}", "stack RGB frames as (B, 3, T, H, W)")
        t, h, w = x.shape[2:]
        tc, sc = self.temporal_compression, self.spatial_compression
        if (t - 1) % tc:
            lower = (t - 1) // tc * tc + 1
            raise InputError(f"frame count {t} is not {tc}k+1", f"use {lower} or {lower + tc} frames")
        if h % sc or w % sc:
            raise InputError(f"frame size {h}x{w} is not a multiple of {sc}", f"resize to e.g. {h // sc * sc}x{w // sc * sc}")

    # -- tiling ---------------------------------------------------------------------------------

    def enable_tiling(
        self,
        tile_sample_size: int = 256,
        tile_sample_frames: int = 65,
        tile_overlap_factor: float = 0.25,
        use_tiling: bool = True,
    ) -> None:
        """Encode/decode in spatial tiles blended over an overlap and in temporal rollback windows,
        whenever the input exceeds a tile. Latent tile sizes follow from the compression."""
        if (tile_sample_frames - 1) % self.temporal_compression or tile_sample_size % self.spatial_compression:
            raise InputError(
                f"tile of {tile_sample_frames}x{tile_sample_size} does not match the VAE compression",
                f"use frames = {self.temporal_compression}k+1 and a size that is a multiple of {self.spatial_compression}",
            )
        self.use_tiling = use_tiling
        self.tile_sample_min_size = tile_sample_size
        self.tile_sample_min_size_t = tile_sample_frames
        self.tile_latent_min_size = tile_sample_size // self.spatial_compression
        self.tile_latent_min_size_t = (tile_sample_frames - 1) // self.temporal_compression + 1
        self.tile_overlap_factor = tile_overlap_factor

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def needs_tiling(self, shape: Sequence[int], latent: bool) -> bool:
        """Whether a (.., T, H, W) input exceeds the tile (so a tiled pass would be used)."""
        size, frames = (self.tile_latent_min_size, self.tile_latent_min_size_t) if latent else (self.tile_sample_min_size, self.tile_sample_min_size_t)
        return shape[-1] > size or shape[-2] > size or shape[-3] > frames

    def num_tiles(self, shape: Sequence[int], latent: bool) -> int:
        """How many tile passes an encode (latent=False) or decode (latent=True) of `shape` runs."""
        if not (self.use_tiling and self.needs_tiling(shape, latent)):
            return 1
        return sum(len(regions) for window in self.tile_regions(shape, latent) for regions in window)

    # -- encode / decode ------------------------------------------------------------------------

    def _encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def _decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def encode(self, x: torch.Tensor, return_dict: bool = True, progress: Callable[[], None] | None = None) -> AutoencoderKLOutput | tuple:
        """Video (B, 3, T, H, W) in [-1, 1] -> posterior over latents. `progress` is called once per tile."""
        if self.use_tiling and self.needs_tiling(x.shape, latent=False):
            moments = self._tiled(x, latent=False, progress=progress)
        else:
            moments = self._encode_moments(x)
            if progress:
                progress()
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, progress: Callable[[], None] | None = None) -> DecoderOutput | tuple:
        """Latents (B, 4, t, h, w) (unscaled) -> video (B, 3, 4(t-1)+1, 8h, 8w)."""
        if self.use_tiling and self.needs_tiling(z.shape, latent=True):
            video = self._tiled(z, latent=True, progress=progress)
        else:
            video = self._decode_latents(z)
            if progress:
                progress()
        return DecoderOutput(sample=video) if return_dict else (video,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None, return_dict: bool = True) -> DecoderOutput | tuple:
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)

    def get_last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last conv (for the GAN loss's adaptive weight)."""
        return self.decoder.conv_out.conv.weight

    def tile_regions(self, shape: Sequence[int], latent: bool) -> list[list[list[tuple[slice, slice, slice]]]]:
        """The input regions (frames, rows, columns) of every tile pass of a tiled encode
        (latent=False) or decode (latent=True) of a (.., T, H, W) input: per temporal rollback
        window, per row, per column, in the order the tiled pass runs them."""
        window = self.tile_latent_min_size_t if latent else self.tile_sample_min_size_t
        size = self.tile_latent_min_size if latent else self.tile_sample_min_size
        stride = int(size * (1 - self.tile_overlap_factor))
        return [
            [[(slice(start, end), slice(top, top + size), slice(left, left + size)) for left in range(0, shape[4], stride)] for top in range(0, shape[3], stride)]
            for start, end in _temporal_windows(shape[2], window)
        ]

    def decode_tile(self, z: torch.Tensor, region: tuple[slice, slice, slice]) -> torch.Tensor:
        """One tile pass of a tiled decode: the latents in `region` (from `tile_regions`) decoded."""
        return self._decode_latents(z[(slice(None), slice(None), *region)])

    def decode_tiled(self, z: torch.Tensor, tiles: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """A tiled decode of `z` from tile passes computed elsewhere: `tiles(i)` is the decoded
        i-th region of `tile_regions(z.shape, latent=True)` flattened (e.g. by other processes)."""
        return self._tiled(z, latent=True, progress=None, tiles=tiles)

    def _tiled(self, x: torch.Tensor, latent: bool, progress: Callable[[], None] | None, tiles: Callable[[int], torch.Tensor] | None = None) -> torch.Tensor:
        """Temporal rollback windows, each window tiled spatially: every window after the first
        starts on the previous window's last frame and drops its first output frame. Within a
        window each tile is blended with its (already blended) top and left neighbours, then
        cropped; only the previous row of tiles is kept in memory."""
        in_size, out_size = (self.tile_latent_min_size, self.tile_sample_min_size) if latent else (self.tile_sample_min_size, self.tile_latent_min_size)
        run = self._decode_latents if latent else self._encode_moments
        blend_extent = int(out_size * self.tile_overlap_factor)
        keep = out_size - blend_extent
        pieces = []
        passes = 0
        for index, window in enumerate(self.tile_regions(x.shape, latent)):
            rows_out = []
            prev_row: list[torch.Tensor] = []
            for regions in window:
                row: list[torch.Tensor] = []
                for j, region in enumerate(regions):
                    tile = tiles(passes) if tiles is not None else run(x[(slice(None), slice(None), *region)])
                    passes += 1
                    if progress:
                        progress()
                    if prev_row:
                        _blend(prev_row[j], tile, blend_extent, dim=3)
                    if row:
                        _blend(row[-1], tile, blend_extent, dim=4)
                    row.append(tile)
                rows_out.append(torch.cat([t[:, :, :, :keep, :keep] for t in row], dim=4))
                prev_row = row
            out = torch.cat(rows_out, dim=3)
            pieces.append(out if index == 0 else out[:, :, 1:])
        return torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]


def read_loss_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The `loss.*` tensors (LPIPS heads, discriminator) a released VAE checkpoint may carry,
    with the prefix removed; empty when the checkpoint has none."""
    from safetensors import safe_open

    path = Path(model_dir) / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as handle:
        return {key[len("loss."):]: handle.get_tensor(key) for key in handle.keys() if key.startswith("loss.")}
