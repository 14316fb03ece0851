"""LatteT2V: the Open-Sora-Plan v1.1.0 text-to-video transformer.

Spatial blocks (self-attention over the patches of one frame, cross-attention to the caption)
alternate with temporal blocks (self-attention over the frames at one patch position). The
blocks are diffusers' Latte blocks; what this file adds over `LatteTransformer3DModel`:

- the released config keys (`video_length`, `sample_size` as [h, w], `attention_mode`, ...),
- the original temporal position table (interpolation scale from `video_length`, see
  `temporal_interpolation_scale`),
- the persistent buffer `caption_projection.y_embedding`, so released files load strictly,
- caption masks (1 = keep) turned into attention biases,
- the joint image-video forward of training: `use_image_num` images after the video frames,
  one caption per image, temporal attention over the video frames only.

Shapes: latents (B, C, F, h, w), captions (B, L, D_text) or (B, 1 + n, L, D_text).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import PatchEmbed, PixArtAlphaTextProjection, get_1d_sincos_pos_embed_from_grid
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormSingle
from diffusers.utils import BaseOutput
from einops import rearrange, repeat
from torch import nn

from ..errors import ModelLoadError
from .attention import DEFAULT_BACKEND, set_attention_backend
from .loading import StrictLoadingMixin

# number of caption tokens in the PixArt-style null-caption table `y_embedding` (kept for file
# compatibility: the v1.1.0 sampler never reads it)
Y_EMBEDDING_TOKENS = 120
# the bias that masked caption tokens get in cross-attention, as in the original
MASK_BIAS = -10000.0


@dataclass
class LatteBlockInputs:
    """What `LatteT2V.embed` prepares for the block stack (and `unpatchify` reads back).

    `hidden_states` (B*(F+n), P, D) patch tokens per frame; `modulation_spatial` (B*(F+n), 6D)
    and `modulation_temporal` (B*P, 6D) the AdaLN-single modulation per block row;
    `captions` (B, L, D) and `caption_bias` (B, 1, L) or None: one caption per video, shared
    by its frames (the cross-attention computes its keys and values once, not once per frame);
    with images (n > 0) one per spatial item, (B*(F+n), L, D) and (B*(F+n), 1, L). A
    sequence-parallel shard holds some of the frames in the per-frame fields (and in the
    captions, when they are per item) and some of the patch positions in `modulation_temporal`;
    `num_frames` and `use_image_num` always count the whole video.
    """

    hidden_states: torch.Tensor
    batch: int
    num_frames: int
    use_image_num: int
    grid: tuple[int, int]
    modulation_spatial: torch.Tensor
    modulation_temporal: torch.Tensor
    embedded_timestep: torch.Tensor
    captions: torch.Tensor
    caption_bias: torch.Tensor | None
    enable_temporal_attentions: bool


class BlockLayout(Protocol):
    """How `run_blocks` switches between the spatial layout (B*F', P, D) (all patches of one
    frame per item, for F' of the frames) and the temporal layout (B*P', F, D) (all frames at
    one patch position per item, for P' of the positions); one process: F' = F, P' = P."""

    def to_temporal(self, x: torch.Tensor, batch: int) -> torch.Tensor: ...

    def to_spatial(self, x: torch.Tensor, batch: int) -> torch.Tensor: ...


class ContiguousLayout:
    """Both layouts whole in one process: a rearrange, made contiguous once here (every linear
    layer of a block would otherwise copy its input and write its output back permuted)."""

    def to_temporal(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        return rearrange(x, "(b f) p d -> (b p) f d", b=batch).contiguous()

    def to_spatial(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        return rearrange(x, "(b p) f d -> (b f) p d", b=batch).contiguous()


CONTIGUOUS_LAYOUT = ContiguousLayout()


@dataclass
class LatteT2VOutput(BaseOutput):
    """`sample`: (B, out_channels, F, h, w): predicted noise, then the learned variance."""

    sample: torch.Tensor


def temporal_interpolation_scale(video_length: int) -> int:
    """The original's rule: 16 latent frames have scale 1; odd lengths drop the causal first frame."""
    scale = (video_length - 1) // 16 if video_length % 2 == 1 else video_length // 16
    return max(scale, 1)


def temporal_position_table(dim: int, num_frames: int, scale: int) -> torch.Tensor:
    """(num_frames, dim) sin-cos table at positions arange(num_frames) / scale, float32."""
    # positions in float32 like the original's numpy grid, the table itself in float64
    positions = torch.arange(num_frames, dtype=torch.float32) / scale
    table = get_1d_sincos_pos_embed_from_grid(dim, positions.to(torch.float64), output_type="pt")
    return table.float()


class LatteT2V(StrictLoadingMixin, ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Latte text-to-video transformer with the v1.1.0 config and weight layout.

    Only the configuration that v1.1.0 released is supported (patch embedding, AdaLN-single,
    no RoPE, no KV compression); other values raise `ModelLoadError`. `from_pretrained` is
    strict: a file missing a released tensor (or with a mis-shaped one) is an error. `attention_mode`
    is kept for config compatibility: every attention runs through `models.attention` (SDPA
    unless `set_attention_backend` picks another backend).

    `forward` is `unpatchify(run_blocks(embed(...)))`; caches that skip the block stack
    (TeaCache) compose the same three stages. `PeftAdapterMixin` gives diffusers' adapter
    methods (`load_lora_adapter`, `add_adapter`); osp's own LoRA code is `models.lora`.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "PatchEmbed"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm"]

    @classmethod
    def options_of(cls, config: dict) -> dict:
        """The LatteT2V options in `config`, without what other writers put beside them (a
        model_ema/ config also holds EMAModel's decay, optimization_step, ...)."""
        options = inspect.signature(cls.__init__).parameters
        return {k: v for k, v in config.items() if k in options}

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        patch_size_t: int = 1,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        out_channels: int | None = 8,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = 1152,
        attention_bias: bool = True,
        sample_size: int | list[int] | tuple[int, int] = (64, 64),
        num_vector_embeds: int | None = None,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: int | None = 1000,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_single",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        attention_type: str = "default",
        caption_channels: int = 4096,
        video_length: int = 17,
        attention_mode: str = "xformers",
        use_rope: bool = False,
        model_max_length: int = 300,
        rope_scaling_type: str = "linear",
        compress_kv_factor: int = 1,
    ) -> None:
        super().__init__()
        _check_supported(norm_type, patch_size_t, num_vector_embeds, use_rope, compress_kv_factor, caption_channels, attention_type)
        inner_dim = num_attention_heads * attention_head_dim
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        self.out_channels = in_channels if out_channels is None else out_channels

        # 1. patches + 2D sin-cos positions; 64 latent pixels (512 px) have interpolation scale 1
        self.pos_embed = PatchEmbed(
            height=height,
            width=width,
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=inner_dim,
            interpolation_scale=max(height // 64, 1),
        )

        # 2. spatial blocks (self-attention in a frame + cross-attention to the caption) and
        # temporal blocks (self-attention across frames); both conditioned by AdaLN-single
        block_kwargs = dict(
            dropout=dropout,
            activation_fn=activation_fn,
            num_embeds_ada_norm=num_embeds_ada_norm,
            attention_bias=attention_bias,
            only_cross_attention=only_cross_attention,
            upcast_attention=upcast_attention,
            norm_type=norm_type,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
            attention_type=attention_type,
        )
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim,
                num_attention_heads,
                attention_head_dim,
                cross_attention_dim=cross_attention_dim,
                double_self_attention=double_self_attention,
                **block_kwargs,
            )
            for _ in range(num_layers)
        )
        self.temporal_transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim=None, **block_kwargs)
            for _ in range(num_layers)
        )

        # 3. output: final AdaLN modulation, then patch -> pixels projection
        self.norm_out = nn.LayerNorm(inner_dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, inner_dim) / inner_dim**0.5)
        self.proj_out = nn.Linear(inner_dim, patch_size * patch_size * self.out_channels)

        # 4. timestep and caption conditioning
        self.adaln_single = AdaLayerNormSingle(inner_dim, use_additional_conditions=False)
        self.caption_projection = PixArtAlphaTextProjection(in_features=caption_channels, hidden_size=inner_dim)
        # released checkpoints carry this (unused) null-caption table as a persistent buffer
        self.caption_projection.register_buffer(
            "y_embedding", torch.randn(Y_EMBEDDING_TOKENS, caption_channels) / caption_channels**0.5, persistent=True
        )

        # 5. temporal positions, recomputed (not stored) like the original
        self.temporal_scale = temporal_interpolation_scale(video_length)
        self.register_buffer(
            "temp_pos_embed", temporal_position_table(inner_dim, video_length, self.temporal_scale), persistent=False
        )

        self.gradient_checkpointing = False
        set_attention_backend(self, DEFAULT_BACKEND)

    # -- helpers -----------------------------------------------------------------------------

    def _temporal_positions(self, num_frames: int, like: torch.Tensor) -> torch.Tensor:
        """(1, num_frames, D) positions for the video frames (longer videos extend the table)."""
        if num_frames <= self.temp_pos_embed.shape[0]:
            table = self.temp_pos_embed[:num_frames]
        else:
            table = temporal_position_table(self.temp_pos_embed.shape[1], num_frames, self.temporal_scale)
        return table.to(device=like.device, dtype=like.dtype).unsqueeze(0)

    def _caption_inputs(
        self,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        num_frames: int,
        use_image_num: int,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Captions and cross-attention bias: (B, L, D), (B, 1, L) for videos alone (the F frames
        share their video's caption), else per spatial item: (B * (F + n), L, D), (B * (F + n), 1, L),
        image i with caption 1 + i.
        """
        captions = encoder_hidden_states if encoder_hidden_states.ndim == 4 else encoder_hidden_states.unsqueeze(1)
        if captions.shape[1] != 1 + use_image_num:
            raise ValueError(
                f"expected 1 + use_image_num = {1 + use_image_num} captions per sample, got encoder_hidden_states "
                f"of shape {tuple(encoder_hidden_states.shape)}"
            )
        captions = self.caption_projection(captions.to(dtype))
        mask = None
        if encoder_attention_mask is not None:
            mask = encoder_attention_mask if encoder_attention_mask.ndim == 3 else encoder_attention_mask.unsqueeze(1)
        if use_image_num == 0:
            return captions[:, 0], None if mask is None else (1 - mask[:, :1].to(dtype)) * MASK_BIAS
        per_frame = torch.cat([repeat(captions[:, :1], "b 1 l d -> b f l d", f=num_frames), captions[:, 1:]], dim=1)
        per_frame = rearrange(per_frame, "b f l d -> (b f) l d")

        if mask is None:
            return per_frame, None
        bias = (1 - mask.to(dtype)) * MASK_BIAS  # 1 = keep -> +0, 0 = drop -> -10000
        bias = torch.cat([repeat(bias[:, :1], "b 1 l -> b f l", f=num_frames), bias[:, 1:]], dim=1)
        return per_frame, rearrange(bias, "b f l -> (b f) 1 l")

    def _run_block(self, block: nn.Module, hidden_states: torch.Tensor, *args: torch.Tensor | None) -> torch.Tensor:
        # BasicTransformerBlock(hidden, attention_mask, encoder_hidden, encoder_mask, timestep)
        if hidden_states.shape[0] == 0:  # a sequence-parallel shard without items (the block cannot reshape 0 rows)
            return hidden_states
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, hidden_states, *args)
        return block(hidden_states, *args)

    # -- forward, in three stages: embed -> blocks -> output ---------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        use_image_num: int = 0,
        enable_temporal_attentions: bool = True,
        return_dict: bool = True,
    ) -> LatteT2VOutput | tuple[torch.Tensor]:
        """Predict noise and variance for noisy latents.

        Args:
            hidden_states: (B, C, F + n, h, w) latents; the last `use_image_num` = n frames are
                independent images (joint training).
            timestep: (B,) or scalar diffusion step.
            encoder_hidden_states: (B, L, D_text) caption states, or (B, 1 + n, L, D_text) with
                one caption for the video and one per image.
            encoder_attention_mask: (B, L) or (B, 1 + n, L), 1 = keep, 0 = padding.
            use_image_num: number of images appended after the video frames.
            enable_temporal_attentions: False runs the spatial blocks only (image generation).

        Returns:
            (B, out_channels, F + n, h, w) in `LatteT2VOutput.sample` (or a 1-tuple).
        """
        inputs = self.embed(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, use_image_num, enable_temporal_attentions)
        out = self.unpatchify(self.run_blocks(inputs), inputs)
        if not return_dict:
            return (out,)
        return LatteT2VOutput(sample=out)

    def embed(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        use_image_num: int = 0,
        enable_temporal_attentions: bool = True,
    ) -> LatteBlockInputs:
        """Patches, timestep modulation and captions: what the block stack consumes."""
        batch, _, total_frames, height, width = hidden_states.shape
        num_frames = total_frames - use_image_num
        if num_frames < 1:
            raise ValueError(f"use_image_num={use_image_num} leaves no video frames in {total_frames} frames")
        patch = self.config.patch_size
        grid = (height // patch, width // patch)
        dtype = self.pos_embed.proj.weight.dtype

        x = self.pos_embed(rearrange(hidden_states, "b c f h w -> (b f) c h w").to(dtype))  # (B*(F+n), P, D)

        timestep = torch.as_tensor(timestep, device=x.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        # modulation (B, 6D) for the blocks; embedded_timestep (B, D) for the output layer
        modulation, embedded_timestep = self.adaln_single(timestep, None, batch_size=batch, hidden_dtype=x.dtype)
        captions, caption_bias = self._caption_inputs(encoder_hidden_states, encoder_attention_mask, num_frames, use_image_num, x.dtype)
        return LatteBlockInputs(
            hidden_states=x,
            batch=batch,
            num_frames=num_frames,
            use_image_num=use_image_num,
            grid=grid,
            modulation_spatial=repeat(modulation, "b d -> (b f) d", f=total_frames),
            modulation_temporal=repeat(modulation, "b d -> (b p) d", p=grid[0] * grid[1]),
            embedded_timestep=embedded_timestep,
            captions=captions,
            caption_bias=caption_bias,
            enable_temporal_attentions=enable_temporal_attentions,
        )

    def run_blocks(
        self,
        inputs: LatteBlockInputs,
        layout: BlockLayout | None = None,
        after_pair: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
        pairs: slice = slice(None),
        hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The spatial and temporal block pairs: (B*(F+n), P, D) -> the same shape.

        `layout` switches between the spatial and temporal layouts (default: one rearrange
        in memory); a sequence-parallel layout hands in a frame shard of `inputs` and moves
        tokens between processes instead (`osp_core.parallel.sequence`). `after_pair(index, x)`
        may replace the tokens after each pair (the edit control module adds its residuals).
        `pairs` runs some of the pairs, from tokens `hidden_states` (default: the embedded
        ones): a cache runs the first pair alone, then the rest or not.
        """
        x = inputs.hidden_states if hidden_states is None else hidden_states
        every = list(zip(self.transformer_blocks, self.temporal_transformer_blocks))
        for index in range(len(every))[pairs]:
            spatial_block, temporal_block = every[index]
            x = self.run_pair(index, spatial_block, temporal_block, x, inputs, layout)
            if after_pair is not None:
                x = after_pair(index, x)
        return x

    def run_pair(self, index: int, spatial_block: nn.Module, temporal_block: nn.Module, x: torch.Tensor, inputs: LatteBlockInputs, layout: BlockLayout | None = None) -> torch.Tensor:
        """Block pair `index` (these blocks: this model's, or a trainable copy's) on tokens `x`
        in the spatial layout."""
        layout = layout or CONTIGUOUS_LAYOUT
        num_frames = inputs.num_frames
        x = self._run_block(spatial_block, x, None, inputs.captions, inputs.caption_bias, inputs.modulation_spatial)
        if not inputs.enable_temporal_attentions:
            return x
        x = layout.to_temporal(x, inputs.batch)
        # images ride along untouched: temporal attention sees the video frames only
        video, images = x[:, :num_frames], x[:, num_frames:]
        if index == 0:
            video = video + self._temporal_positions(num_frames, video)
        video = self._run_block(temporal_block, video, None, None, None, inputs.modulation_temporal)
        x = torch.cat([video, images], dim=1) if inputs.use_image_num else video
        return layout.to_spatial(x, inputs.batch)

    def unpatchify(self, x: torch.Tensor, inputs: LatteBlockInputs) -> torch.Tensor:
        """Final modulation and projection, patches back to latents: -> (B, out_channels, F + n, h, w)."""
        total_frames = inputs.num_frames + inputs.use_image_num
        embedded_timestep = repeat(inputs.embedded_timestep, "b d -> (b f) d", f=total_frames)
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        x = self.norm_out(x) * (1 + scale) + shift
        x = self.proj_out(x)
        patch = self.config.patch_size
        return rearrange(
            x,
            "(b f) (gh gw) (ph pw c) -> b c f (gh ph) (gw pw)",
            b=inputs.batch,
            gh=inputs.grid[0],
            gw=inputs.grid[1],
            ph=patch,
            pw=patch,
            c=self.out_channels,
        )


def _check_supported(
    norm_type: str,
    patch_size_t: int,
    num_vector_embeds: int | None,
    use_rope: bool,
    compress_kv_factor: int,
    caption_channels: int | None,
    attention_type: str,
) -> None:
    """Reject config values the v1.1.0 weights never used (each would change the architecture)."""
    unsupported = {
        "norm_type": (norm_type, "ada_norm_single"),
        "patch_size_t": (patch_size_t, 1),
        "num_vector_embeds": (num_vector_embeds, None),
        "use_rope": (use_rope, False),
        "compress_kv_factor": (compress_kv_factor, 1),
        "attention_type": (attention_type, "default"),
    }
    for key, (value, expected) in unsupported.items():
        if value != expected:
            raise ModelLoadError(
                f"LatteT2V config has {key}={value!r}, which this implementation does not support",
                f"only the Open-Sora-Plan v1.1.0 layout ({key}={expected!r}) is implemented",
            )
    if caption_channels is None:
        raise ModelLoadError("LatteT2V config has no caption_channels", "set caption_channels (4096 for T5-XXL)")
