"""EditControl: ReVideo's control module for LatteT2V (Mou et al. 2024, "ReVideo: Remake a
Video with Motion and Content Control"), beside a frozen LatteT2V.

Conditions, at the latent grid (B, C, t, h, w):
- content: the source latents with the region blanked, the edited first frame's latent as the
  first latent frame (4 channels);
- motion: per-frame 2-channel displacement maps written at the tracked points and Gaussian
  blurred (`motion_maps`), folded space-to-depth onto the latent grid (2 * s * s channels, so
  the point's position inside a latent cell is kept).

Spatiotemporal adaptive fusion: w = sigmoid(conv([region mask, timestep embedding])),
fused = motion * w + content * (1 - w), then patch-embedded to tokens. A ControlNet-style
trainable copy of the first `num_layers` LatteT2V block pairs runs on (transformer tokens +
fused tokens); after pair i its tokens go through a zero-initialised projection and are added
to the frozen pair i's output. Untrained, the module changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from .attention import DEFAULT_BACKEND, set_attention_backend

# ReVideo blurs the trajectory maps with a 51-tap, sigma-10 Gaussian at 512 px
REVIDEO_KERNEL, REVIDEO_SIGMA, REVIDEO_SIZE = 51, 10.0, 512


def motion_maps(tracks: torch.Tensor, height: int, width: int, temporal: int = 4, spatial: int = 8) -> torch.Tensor:
    """(K, T, 2) tracks (x, y pixels) -> (2 * spatial**2, t, h, w) motion condition.

    Frame f >= 1 gets each point's displacement since frame f - 1 (dx, dy) at the point's
    pixel, blurred with ReVideo's Gaussian scaled to the frame (peak kept at the point's value);
    latent frame i sums its pixel frames' maps (frame 0 has none), folded space-to-depth.
    """
    frames = tracks.shape[1]
    maps = torch.zeros(frames, 2, height, width)
    if tracks.shape[0]:
        step = torch.zeros_like(tracks)
        step[:, 1:] = tracks[:, 1:] - tracks[:, :-1]
        xs = tracks[..., 0].round().long().clamp(0, width - 1)
        ys = tracks[..., 1].round().long().clamp(0, height - 1)
        for k in range(tracks.shape[0]):
            for f in range(1, frames):
                maps[f, :, ys[k, f], xs[k, f]] += step[k, f]
        maps = gaussian_blur(maps, height, width)
    groups = [maps[:1]] + ([maps[1:].reshape(-1, temporal, 2, height, width).sum(dim=1)] if frames > 1 else [])
    latent = torch.cat(groups)  # (t, 2, H, W)
    folded = F.pixel_unshuffle(latent, spatial)  # (t, 2 * s * s, h, w)
    return folded.permute(1, 0, 2, 3).contiguous()


def blur_size(height: int, width: int) -> tuple[int, float]:
    """(kernel taps, sigma) of the motion-map blur: ReVideo's 51 / 10 at 512 px, scaled."""
    scale = min(height, width) / REVIDEO_SIZE
    return max(3, int(round(REVIDEO_KERNEL * scale)) | 1), REVIDEO_SIGMA * scale


def gaussian_blur(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, C, H, W) blurred with `blur_size`'s Gaussian (peak 1: a point keeps its value)."""
    size, sigma = blur_size(height, width)
    r = torch.arange(size, dtype=maps.dtype) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    channels = maps.shape[1]
    x = F.conv2d(maps, g.view(1, 1, 1, size).expand(channels, 1, 1, size), padding=(0, size // 2), groups=channels)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(channels, 1, size, 1), padding=(size // 2, 0), groups=channels)


class AdaptiveFusion(nn.Module):
    """fused = motion * w + content * (1 - w), w = sigmoid(conv([region, timestep embedding]))."""

    def __init__(self, content_channels: int, motion_channels: int, channels: int, timestep_dim: int, timestep_channels: int = 8) -> None:
        super().__init__()
        self.content_in = nn.Conv3d(content_channels, channels, 3, padding=1)
        self.motion_in = nn.Conv3d(motion_channels, channels, 3, padding=1)
        self.timestep_in = nn.Linear(timestep_dim, timestep_channels)
        self.weight = nn.Conv3d(1 + timestep_channels, channels, 3, padding=1)

    def gate(self, region: torch.Tensor, embedded_timestep: torch.Tensor) -> torch.Tensor:
        """w (B, channels, t, h, w) from the region (B, 1, t, h, w) and the timestep (B, D)."""
        b, _, t, h, w = region.shape
        temb = self.timestep_in(embedded_timestep)[:, :, None, None, None].expand(b, -1, t, h, w)
        return torch.sigmoid(self.weight(torch.cat([region, temb], dim=1)))

    def forward(self, content: torch.Tensor, motion: torch.Tensor, region: torch.Tensor, embedded_timestep: torch.Tensor) -> torch.Tensor:
        w = self.gate(region, embedded_timestep)
        return self.motion_in(motion) * w + self.content_in(content) * (1 - w)


class EditControl(ModelMixin, ConfigMixin):
    """The trainable control branch (see the module docstring). Its config mirrors the LatteT2V
    it was copied from (`from_transformer`), whose first `num_layers` pairs it copies."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_layers: int = 2,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        cross_attention_dim: int = 1152,
        in_channels: int = 4,
        patch_size: int = 2,
        spatial_compression: int = 8,
        fusion_channels: int = 64,
        activation_fn: str = "gelu-approximate",
        attention_bias: bool = True,
        num_embeds_ada_norm: int | None = 1000,
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        upcast_attention: bool = False,
        double_self_attention: bool = False,
        only_cross_attention: bool = False,
    ) -> None:
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        block_kwargs = dict(
            activation_fn=activation_fn,
            num_embeds_ada_norm=num_embeds_ada_norm,
            attention_bias=attention_bias,
            only_cross_attention=only_cross_attention,
            upcast_attention=upcast_attention,
            norm_type="ada_norm_single",
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
        )
        self.fusion = AdaptiveFusion(in_channels, 2 * spatial_compression**2, fusion_channels, inner_dim)
        self.condition_in = nn.Conv2d(fusion_channels, inner_dim, patch_size, patch_size)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim=cross_attention_dim, double_self_attention=double_self_attention, **block_kwargs)
            for _ in range(num_layers)
        )
        self.temporal_transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim=None, **block_kwargs) for _ in range(num_layers)
        )
        self.zero_projections = nn.ModuleList(nn.Linear(inner_dim, inner_dim) for _ in range(num_layers))
        for projection in self.zero_projections:  # ControlNet: untrained, the branch adds nothing
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)
        set_attention_backend(self, DEFAULT_BACKEND)

    @classmethod
    def from_transformer(cls, transformer: nn.Module, num_layers: int = 2, fusion_channels: int = 64, spatial_compression: int = 8) -> EditControl:
        """A control branch for `transformer` (a LatteT2V) whose blocks start as copies of its
        first `num_layers` pairs."""
        c = transformer.config
        if not 1 <= num_layers <= c.num_layers:
            raise ValueError(f"num_layers must be in 1..{c.num_layers}, got {num_layers}")
        control = cls(
            num_layers=num_layers,
            num_attention_heads=c.num_attention_heads,
            attention_head_dim=c.attention_head_dim,
            cross_attention_dim=c.cross_attention_dim,
            in_channels=c.in_channels,
            patch_size=c.patch_size,
            spatial_compression=spatial_compression,
            fusion_channels=fusion_channels,
            activation_fn=c.activation_fn,
            attention_bias=c.attention_bias,
            num_embeds_ada_norm=c.num_embeds_ada_norm,
            norm_elementwise_affine=c.norm_elementwise_affine,
            norm_eps=c.norm_eps,
            upcast_attention=c.upcast_attention,
            double_self_attention=c.double_self_attention,
            only_cross_attention=c.only_cross_attention,
        )
        for index in range(num_layers):
            control.transformer_blocks[index].load_state_dict(copy.deepcopy(transformer.transformer_blocks[index].state_dict()))
            control.temporal_transformer_blocks[index].load_state_dict(copy.deepcopy(transformer.temporal_transformer_blocks[index].state_dict()))
        return control if transformer.dtype == torch.float32 else control.to(transformer.dtype)

    def condition_tokens(self, content: torch.Tensor, motion: torch.Tensor, region: torch.Tensor, embedded_timestep: torch.Tensor) -> torch.Tensor:
        """Fused conditions (B, *, t, h, w) -> tokens (B*t, P, D) in the transformer's layout."""
        dtype = self.condition_in.weight.dtype
        fused = self.fusion(content.to(dtype), motion.to(dtype), region.to(dtype), embedded_timestep.to(dtype))
        tokens = self.condition_in(rearrange(fused, "b c t h w -> (b t) c h w"))
        return rearrange(tokens, "n d gh gw -> n (gh gw) d")

    def residual_hook(self, transformer: nn.Module, inputs: object, content: torch.Tensor, motion: torch.Tensor, region: torch.Tensor) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """`after_pair` for `transformer.run_blocks(inputs, after_pair=...)`: runs pair i of the
        copy and adds its zero-projected tokens to the frozen pair i's output."""
        state = {"c": inputs.hidden_states + self.condition_tokens(content, motion, region, inputs.embedded_timestep).to(inputs.hidden_states.dtype)}

        def after_pair(index: int, x: torch.Tensor) -> torch.Tensor:
            if index >= len(self.transformer_blocks):
                return x
            c = transformer.run_pair(index, self.transformer_blocks[index], self.temporal_transformer_blocks[index], state["c"], inputs)
            state["c"] = c
            return x + self.zero_projections[index](c).to(x.dtype)

        return after_pair

    def forward(
        self,
        transformer: nn.Module,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        content: torch.Tensor,
        motion: torch.Tensor,
        region: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        enable_temporal_attentions: bool = True,
    ) -> torch.Tensor:
        """The transformer's prediction (B, out_channels, t, h, w) with this control added.

        content (B, in_channels, t, h, w), motion (B, 2 * s * s, t, h, w) and region
        (B, 1, t, h, w) are broadcast over a larger batch (classifier-free guidance)."""
        batch = hidden_states.shape[0]
        content, motion, region = (x.expand(batch, *x.shape[1:]) if x.shape[0] != batch else x for x in (content, motion, region))
        inputs = transformer.embed(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, 0, enable_temporal_attentions)
        hook = self.residual_hook(transformer, inputs, content, motion, region)
        return transformer.unpatchify(transformer.run_blocks(inputs, after_pair=hook), inputs)

