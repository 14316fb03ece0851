"""A stand-in for `torch_npu` (no Ascend NPU exists on CI): only its two attention kernels,
`npu_fusion_attention` (training) and `npu_fused_infer_attention_score` (inference), computed with
plain torch by their documented contracts, so osp's NPU attention path (kernel choice, layout,
scale, mask polarity, head count, return value) is tested on the CPU. Tests put this folder on
sys.path.

Contract (torch_npu.npu_fusion_attention, CANN 8): query/key/value in `input_layout` (BNSD:
(B, N, S, D); BSND: (B, S, N, D); BSH: (B, S, N*D); SBH: (S, B, N*D)); `head_num` heads;
`atten_mask` bool/uint8 where True/1 marks a position that is *not* attended, shaped (B, N, Sq,
Skv), (B, 1, Sq, Skv), (1, 1, Sq, Skv) or (Sq, Skv); `scale` multiplies q k^T; `keep_prob` is
1 - dropout. Returns (attention_out, softmax_max, softmax_sum, softmax_out, seed, offset, numels);
attention_out has the query's layout.

Contract (torch_npu.npu_fused_infer_attention_score, torch_npu 7): keyword-only after q, k, v;
`num_heads`, `scale`, `input_layout` (default BSH; BSH, BSND, BNSD), `atten_mask` with the same
polarity (True = not attended; (B, 1, Sq, Skv), (1, 1, Sq, Skv), (B, Sq, Skv) or (Sq, Skv));
query/key/value fp16 or bf16 only; no backward. Returns (attention_out, softmax_lse).
"""

from __future__ import annotations

import torch

calls: list[dict] = []  # what each call received, for tests to inspect


def _to_bnsd(x: torch.Tensor, layout: str, heads: int) -> torch.Tensor:
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    if layout == "BSH":
        b, s, h = x.shape
        return x.reshape(b, s, heads, h // heads).transpose(1, 2)
    if layout == "SBH":
        s, b, h = x.shape
        return x.reshape(s, b, heads, h // heads).permute(1, 2, 0, 3)
    raise ValueError(f"unsupported input_layout {layout}")


def _from_bnsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    b, n, s, d = x.shape
    if layout == "BSH":
        return x.transpose(1, 2).reshape(b, s, n * d)
    return x.permute(2, 0, 1, 3).reshape(s, b, n * d)  # SBH


def npu_fusion_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    head_num: int,
    input_layout: str,
    pse: torch.Tensor | None = None,
    padding_mask: torch.Tensor | None = None,
    atten_mask: torch.Tensor | None = None,
    scale: float = 1.0,
    keep_prob: float = 1.0,
    pre_tockens: int = 2147483647,
    next_tockens: int = 2147483647,
    inner_precise: int = 0,
    prefix: list[int] | None = None,
    sparse_mode: int = 0,
    **unused: object,
):
    calls.append({"kernel": "fusion", "layout": input_layout, "head_num": head_num, "scale": scale, "mask_shape": None if atten_mask is None else tuple(atten_mask.shape), "mask_dtype": None if atten_mask is None else atten_mask.dtype})
    if keep_prob != 1.0 or pse is not None or sparse_mode != 0:
        raise NotImplementedError("the stand-in covers keep_prob=1, no pse, sparse_mode=0")
    empty = torch.empty(0)
    return (_attend(query, key, value, head_num, input_layout, atten_mask, scale), empty, empty, empty, 0, 0, 0)


def npu_fused_infer_attention_score(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    pse_shift: torch.Tensor | None = None,
    atten_mask: torch.Tensor | None = None,
    actual_seq_lengths: list[int] | None = None,
    actual_seq_lengths_kv: list[int] | None = None,
    num_heads: int = 1,
    scale: float = 1.0,
    pre_tokens: int = 2147483647,
    next_tokens: int = 2147483647,
    input_layout: str = "BSH",
    num_key_value_heads: int = 0,
    sparse_mode: int = 0,
    inner_precise: int = 0,
    softmax_lse_flag: bool = False,
    **unused: object,
):
    calls.append({"kernel": "infer", "layout": input_layout, "head_num": num_heads, "scale": scale, "mask_shape": None if atten_mask is None else tuple(atten_mask.shape), "mask_dtype": None if atten_mask is None else atten_mask.dtype})
    if pse_shift is not None or actual_seq_lengths is not None or actual_seq_lengths_kv is not None or sparse_mode != 0 or num_key_value_heads not in (0, num_heads):
        raise NotImplementedError("the stand-in covers no pse_shift, no actual lengths, sparse_mode=0, no GQA")
    if query.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"npu_fused_infer_attention_score takes fp16 or bf16, got {query.dtype}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise RuntimeError("npu_fused_infer_attention_score has no backward")
    mask = atten_mask
    if mask is not None and mask.ndim == 3:  # (B, Sq, Skv): one mask for every head
        mask = mask[:, None]
    return _attend(query, key, value, num_heads, input_layout, mask, scale), torch.empty(0)


def _attend(query, key, value, heads: int, layout: str, atten_mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    q, k, v = (_to_bnsd(t, layout, heads).float() for t in (query, key, value))
    if q.shape[1] != heads:
        raise ValueError(f"head count {heads} does not match the query's {q.shape[1]} heads")
    scores = torch.einsum("bnqd,bnkd->bnqk", q, k) * scale
    if atten_mask is not None:
        if atten_mask.dtype not in (torch.bool, torch.uint8):
            raise TypeError(f"atten_mask must be bool or uint8, got {atten_mask.dtype}")
        mask = atten_mask.bool()
        if mask.ndim == 2:
            mask = mask[None, None]
        if mask.shape[1] not in (1, heads) or mask.shape[-2:] != scores.shape[-2:]:
            raise ValueError(f"atten_mask of shape {tuple(atten_mask.shape)} does not fit scores {tuple(scores.shape)}")
        scores = scores.masked_fill(mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    out = torch.einsum("bnqk,bnkd->bnqd", weights, v).to(query.dtype)
    return _from_bnsd(out, layout)
