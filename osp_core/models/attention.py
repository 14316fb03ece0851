"""The one attention function every osp model calls, and the backends it can run on.

`attention(query, key, value, mask, backend)` computes softmax(q k^T / sqrt(d) + mask) v for
(B, H, L, D) tensors. The backend is chosen per run (`osp t2v sample --attention ...`) and set on
a model with `set_attention_backend(model, name)`:

- `sdpa`: PyTorch's scaled_dot_product_attention (picks a fused kernel itself; the default);
- `math`: plain matmul + softmax in float32, for debugging and as a readable definition;
- `flash`: the flash-attn package (CUDA, fp16/bf16);
- `npu`: on Ascend NPUs, `torch_npu.npu_fused_infer_attention_score` (Ascend's inference kernel)
  when no gradient is needed and the inputs are fp16/bf16, else `torch_npu.npu_fusion_attention`
  (the training kernel the original's NPU branch ran).

LatteT2V's diffusers `Attention` modules run through `AttentionProcessor` (a diffusers processor
that calls `attention`); the VAE's attention block calls `attention` itself.

Masks: a boolean mask (True = attend) or an additive float mask, broadcastable to
(B, H, Lq, Lk). `flash` and `npu` take keep/drop masks only, so an additive mask there must hold
0 (keep) and large negative values (drop, <= MASK_DROP); that is what LatteT2V's caption masks
are (0 / -10000).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..device import ATTENTION_BACKENDS, DEFAULT_BACKEND, attention_name
from ..errors import InputError

# an additive mask value at or below this drops the key (softmax weight exp(-1e4) == 0 in fp16,
# bf16 and fp32); between it and 0 the value is a real bias, which keep/drop kernels cannot take
MASK_DROP = -1e4


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    backend: str = DEFAULT_BACKEND,
) -> torch.Tensor:
    """softmax(query key^T / sqrt(D) + mask) value: (B, H, Lq, D), (B, H, Lk, D) -> (B, H, Lq, D).

    `mask`: None, bool (True = attend) or additive float, broadcastable to (B, H, Lq, Lk).
    """
    if backend == "sdpa":
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    if backend == "math":
        return _math_attention(query, key, value, mask)
    if backend == "flash":
        return _flash_attention(query, key, value, mask)
    if backend == "npu":
        return _npu_attention(query, key, value, mask)
    raise InputError(f"unknown attention backend '{backend}'", "use one of " + ", ".join(ATTENTION_BACKENDS))


def _math_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    scores = query.float() @ key.float().transpose(-1, -2) / math.sqrt(query.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return (scores.softmax(dim=-1) @ value.float()).to(query.dtype)


def keep_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean keep-mask (True = attend) from a boolean or a 0 / <= MASK_DROP additive mask."""
    if mask.dtype == torch.bool:
        return mask
    drop = mask <= MASK_DROP
    if not bool(((mask == 0) | drop).all()):
        raise InputError(
            "this attention backend takes keep/drop masks only, and the mask holds other biases",
            "use --attention sdpa (or math) for models with additive attention biases",
        )
    return ~drop


def _as_4d(mask: torch.Tensor) -> torch.Tensor:
    """A mask broadcastable to (B, H, Lq, Lk) with its leading 1-dims made explicit."""
    return mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))


# -- flash-attn (CUDA) ----------------------------------------------------------------------


def _flash_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    flash_attn = importlib.import_module("flash_attn")
    batch, heads, q_len, _ = query.shape
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # flash-attn's layout: (B, L, H, D)
    if mask is None:
        return flash_attn.flash_attn_func(q, k, v).transpose(1, 2)
    keep = _as_4d(keep_mask(mask))
    # one key set per batch item (caption padding): the varlen kernel over the kept keys
    if keep.shape[1] != 1 or keep.shape[2] != 1:
        raise InputError("flash attention takes a per-key mask (B, 1, 1, Lk) only", "use --attention sdpa")
    keep = keep[:, 0, 0].expand(batch, -1)
    k_lens = keep.sum(dim=1, dtype=torch.int32)
    index = keep.flatten().nonzero().squeeze(1)
    k_flat = k.reshape(-1, heads, k.shape[-1]).index_select(0, index)
    v_flat = v.reshape(-1, heads, v.shape[-1]).index_select(0, index)
    zero = torch.zeros(1, dtype=torch.int32, device=query.device)
    cu_k = torch.cat([zero, k_lens.cumsum(0, dtype=torch.int32)])
    cu_q = torch.arange(0, (batch + 1) * q_len, q_len, dtype=torch.int32, device=query.device)
    out = flash_attn.flash_attn_varlen_func(
        q.reshape(-1, heads, q.shape[-1]), k_flat, v_flat, cu_q, cu_k, q_len, int(k_lens.max())
    )
    return out.reshape(batch, q_len, heads, -1).transpose(1, 2)


# -- Ascend NPU -----------------------------------------------------------------------------


def _npu_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    torch_npu = importlib.import_module("torch_npu")
    batch, heads, q_len, head_dim = query.shape
    drop = None
    if mask is not None:
        # both kernels' atten_mask marks what is *dropped* (True / 1 = masked out), as
        # (B, N, Sq, Skv) or, shared by the heads, (B, 1, Sq, Skv)
        keep = _as_4d(keep_mask(mask))
        drop = (~keep).expand(batch, keep.shape[1], q_len, key.shape[-2]).contiguous()
    scale = 1.0 / math.sqrt(head_dim)
    if _npu_inference(query, key, value) and hasattr(torch_npu, "npu_fused_infer_attention_score"):
        return _npu_infer_call(torch_npu.npu_fused_infer_attention_score, query, key, value, heads, drop, scale)[0]
    return torch_npu.npu_fusion_attention(query, key, value, heads, input_layout="BNSD", atten_mask=drop, scale=scale, keep_prob=1.0)[0]


def _npu_inference(*tensors: torch.Tensor) -> bool:
    """The inference kernel has no backward and takes fp16/bf16 only."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return not needs_grad and all(t.dtype in (torch.float16, torch.bfloat16) for t in tensors)


def _npu_infer_call(kernel: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int, drop: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    # torch_npu 7 names the scale `scale`; torch_npu 6 called it `scale_value`
    common = {"atten_mask": drop, "num_heads": heads, "input_layout": "BNSD"}
    try:
        return kernel(query, key, value, scale=scale, **common)
    except TypeError as exc:
        if "scale" not in str(exc):
            raise
        return kernel(query, key, value, scale_value=scale, **common)


# -- choosing a backend ---------------------------------------------------------------------


def resolve_attention_backend(name: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The backend for `name` (auto or one of ATTENTION_BACKENDS) on `device` with models in
    `dtype`, checked: an unknown name, `flash` without flash-attn, off CUDA or in float32, and
    `npu` without torch_npu are one-line `InputError`s (raised before any model loads)."""
    key = attention_name(name)
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]  # "npu" needs torch_npu to parse
    if key == "auto":
        return "npu" if kind == "npu" else DEFAULT_BACKEND
    if key == "flash":
        if importlib.util.find_spec("flash_attn") is None:
            raise InputError("--attention flash needs the flash-attn package, which is not installed", "pip install flash-attn (CUDA), or use --attention sdpa")
        if kind != "cuda":
            raise InputError(f"--attention flash runs on CUDA GPUs only, not on {kind}", "use --attention sdpa, or --device cuda")
        if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
            raise InputError(f"--attention flash runs in fp16 or bf16, not {str(dtype).removeprefix('torch.')}", "pass --dtype bf16, or use --attention sdpa")
    if key == "npu":
        if importlib.util.find_spec("torch_npu") is None:
            raise InputError("--attention npu needs torch_npu, which is not installed", "pip install 'osp[ascend]' on an Ascend machine with CANN, or use --attention sdpa")
        if not hasattr(importlib.import_module("torch_npu"), "npu_fusion_attention"):
            raise InputError("this torch_npu has no npu_fusion_attention", "install torch_npu 2.1 or newer with CANN 8.0 or newer")
    return key


class AttentionProcessor:
    """A diffusers attention processor that runs `attention` with a chosen backend.

    Computes what diffusers' `AttnProcessor2_0` computes for the Attention configurations osp's
    models use; the mask is broadcast over heads instead of repeated per head. Keys for G items
    and queries for N = G * k items: each run of k consecutive query items attends to one key
    set (a video's frames to its caption), with that set's mask (G, 1, Lk).
    """

    def __init__(self, backend: str = DEFAULT_BACKEND) -> None:
        self.backend = backend

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        # keys from fewer items than the queries (LatteT2V's cross-attention: one caption per
        # video, the video's frames consecutive): each group of items shares one key set, so its
        # queries become one sequence and the keys and values are computed once per group, not
        # once per frame (softmax runs per query, so the result is the same)
        groups = batch
        if encoder_hidden_states is not None and encoder_hidden_states.shape[0] != batch and input_ndim == 3:
            groups = encoder_hidden_states.shape[0]
            if groups == 0 or batch % groups:
                raise ValueError(f"{batch} query items cannot share {groups} key sets in equal groups")
            hidden_states = hidden_states.reshape(groups, -1, hidden_states.shape[-1])

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(groups, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attention_mask is not None:
            # (B, Lk) or (B, Lq|1, Lk) -> (B, 1, Lq|1, Lk): one mask for every head (B: the groups)
            attention_mask = attention_mask.reshape(groups, 1, -1, attention_mask.shape[-1])

        hidden_states = attention(query, key, value, attention_mask, self.backend)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # projection, dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        if attn.rescale_output_factor != 1.0:  # dividing by 1 is a full-size kernel that changes nothing
            hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


def set_attention_backend(model: nn.Module, backend: str) -> None:
    """Run every attention of `model` (diffusers Attention modules and osp's own attention
    blocks, which carry an `attention_backend` attribute) on `backend`."""
    from diffusers.models.attention_processor import Attention

    if backend not in ATTENTION_BACKENDS:
        raise InputError(f"unknown attention backend '{backend}'", "use one of " + ", ".join(ATTENTION_BACKENDS))
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(AttentionProcessor(backend))
        elif hasattr(module, "attention_backend"):
            module.attention_backend = backend


def attention_backend_of(model: nn.Module) -> str | None:
    """The backend `model`'s attention runs on (None when it has no osp attention)."""
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, AttentionProcessor):
            return processor.backend
        if hasattr(module, "attention_backend"):
            return module.attention_backend
    return None
