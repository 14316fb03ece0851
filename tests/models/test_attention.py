"""The attention seam: every backend computes what SDPA computes, and picking one is checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from osp_core.errors import InputError
from osp_core.models.attention import AttentionProcessor, attention, attention_backend_of, keep_mask, resolve_attention_backend, set_attention_backend

STAND_INS = Path(__file__).resolve().parents[1] / "stand_ins"


@pytest.fixture()
def torch_npu_stand_in(monkeypatch):
    """`import torch_npu` finds the stand-in (plain-torch npu_fusion_attention)."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    import torch_npu

    torch_npu.calls.clear()
    yield torch_npu
    sys.modules.pop("torch_npu", None)


def _qkv(batch=2, heads=3, q_len=5, k_len=7, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, dim, generator=g) for n in (q_len, k_len, k_len))


def _caption_bias(batch=2, k_len=7):
    """LatteT2V's cross-attention mask: 0 keeps a token, -10000 drops it, one row per item."""
    keep = torch.ones(batch, k_len)
    keep[1, 4:] = 0
    return ((1 - keep) * -10000.0).reshape(batch, 1, 1, k_len)


@pytest.mark.parametrize("backend", ["math", "npu"])
@pytest.mark.parametrize("masked", [False, True])
def test_backend_equals_sdpa(backend, masked, torch_npu_stand_in):
    q, k, v = _qkv()
    mask = _caption_bias() if masked else None
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = attention(q, k, v, mask, backend)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5


def test_npu_call_layout_scale_and_mask_polarity(torch_npu_stand_in):
    q, k, v = _qkv(dim=16)
    attention(q, k, v, _caption_bias(), "npu")
    call = torch_npu_stand_in.calls[-1]
    assert call["layout"] == "BNSD" and call["head_num"] == 3
    assert call["scale"] == pytest.approx(1 / 16**0.5)
    # one (B, 1, Sq, Skv) boolean mask shared by the heads, True = dropped
    assert call["mask_shape"] == (2, 1, 5, 7) and call["mask_dtype"] == torch.bool
    # a boolean keep-mask (True = attend, SDPA's polarity) gives the same result as the bias
    keep = _caption_bias() == 0
    assert torch.equal(attention(q, k, v, keep, "npu"), attention(q, k, v, _caption_bias(), "npu"))


def test_npu_runs_the_inference_kernel_when_no_gradient_is_needed(torch_npu_stand_in):
    q, k, v = (t.to(torch.bfloat16) for t in _qkv(dim=16))
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=_caption_bias())
    with torch.no_grad():
        got = attention(q, k, v, _caption_bias(), "npu")
    call = torch_npu_stand_in.calls[-1]
    assert call["kernel"] == "infer" and call["layout"] == "BNSD" and call["head_num"] == 3
    assert call["scale"] == pytest.approx(1 / 16**0.5) and call["mask_shape"] == (2, 1, 5, 7)
    assert (got.float() - expected).abs().max() <= 2e-2  # bf16 output
    # training: the inputs need gradients, so the training kernel runs and backward works
    q.requires_grad_(True)
    attention(q, k, v, _caption_bias(), "npu").float().sum().backward()
    assert torch_npu_stand_in.calls[-1]["kernel"] == "fusion" and q.grad is not None
    # fp32 (the inference kernel takes fp16/bf16 only): the training kernel, also under no_grad
    with torch.no_grad():
        attention(*_qkv(), None, "npu")
    assert torch_npu_stand_in.calls[-1]["kernel"] == "fusion"


def test_npu_inference_kernel_under_its_older_keyword(torch_npu_stand_in, monkeypatch):
    """torch_npu 6 spells the scale `scale_value`: the call falls back to that keyword."""
    newer = torch_npu_stand_in.npu_fused_infer_attention_score

    def older(query, key, value, *, scale_value=1.0, **kwargs):
        return newer(query, key, value, scale=scale_value, **kwargs)

    monkeypatch.setattr(torch_npu_stand_in, "npu_fused_infer_attention_score", older)
    q, k, v = (t.to(torch.float16) for t in _qkv(dim=16))
    with torch.no_grad():
        got = attention(q, k, v, None, "npu")
    assert torch_npu_stand_in.calls[-1]["kernel"] == "infer" and torch_npu_stand_in.calls[-1]["scale"] == pytest.approx(0.25)
    assert (got.float() - torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())).abs().max() <= 1e-2


def test_boolean_and_additive_masks_agree_with_sdpa():
    q, k, v = _qkv()
    keep = _caption_bias() == 0
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert (attention(q, k, v, keep, "math") - expected).abs().max() <= 1e-5
    assert (attention(q, k, v, _caption_bias(), "sdpa") - expected).abs().max() <= 1e-5


def test_keep_drop_backends_refuse_real_biases():
    assert torch.equal(keep_mask(_caption_bias()), _caption_bias() == 0)
    with pytest.raises(InputError, match="keep/drop masks only"):
        keep_mask(torch.full((1, 1, 1, 4), -0.5))


def test_processor_is_bit_identical_to_diffusers_sdpa_processor():
    """With the default backend LatteT2V computes exactly what diffusers' AttnProcessor2_0
    computed before the seam existed (self- and masked cross-attention)."""
    torch.manual_seed(0)
    self_attn = Attention(query_dim=16, heads=2, dim_head=8, bias=True)
    cross_attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8, bias=True)
    x, context = torch.randn(3, 10, 16), torch.randn(3, 7, 12)
    bias = torch.zeros(3, 1, 7)
    bias[2, :, 5:] = -10000.0
    for attn, kwargs in ((self_attn, {}), (cross_attn, {"encoder_hidden_states": context, "attention_mask": bias})):
        attn.set_processor(AttnProcessor2_0())
        before = attn(x, **kwargs)
        attn.set_processor(AttentionProcessor("sdpa"))
        assert torch.equal(attn(x, **kwargs), before)


def _small_latte(reference_dir):
    from osp_core.models.latte_t2v import LatteT2V

    config = {k: v for k, v in json.loads((reference_dir / "t2v_small.json").read_text())["config"].items() if not k.startswith("_")}
    torch.manual_seed(0)
    return LatteT2V(**config).eval(), config


@pytest.mark.parametrize("backend", ["math", "npu"])
def test_latte_and_vae_on_each_backend_match_sdpa(reference_dir, backend, torch_npu_stand_in):
    from osp_core.models.causal_vae import CausalVideoVAE

    model, config = _small_latte(reference_dir)
    assert attention_backend_of(model) == "sdpa"
    x = torch.randn(2, 4, config["video_length"], 8, 8)
    captions = torch.randn(2, 6, config["caption_channels"])
    mask = torch.ones(2, 6)
    mask[0, 3:] = 0
    with torch.no_grad():
        expected = model(x, torch.tensor([3, 700]), captions, mask, return_dict=False)[0]
        set_attention_backend(model, backend)
        assert attention_backend_of(model) == backend
        got = model(x, torch.tensor([3, 700]), captions, mask, return_dict=False)[0]
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())

    vae_config = {k: v for k, v in json.loads((reference_dir / "vae_small.json").read_text())["config"].items() if not k.startswith("_")}
    vae = CausalVideoVAE(**vae_config).eval()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = vae.decode(vae.encode(video).latent_dist.mode()).sample
        set_attention_backend(vae, backend)
        assert attention_backend_of(vae) == backend
        got = vae.decode(vae.encode(video).latent_dist.mode()).sample
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())


def test_choosing_a_backend(monkeypatch):
    assert resolve_attention_backend("auto", "cpu") == "sdpa"
    assert resolve_attention_backend("auto", "npu") == "npu"
    assert resolve_attention_backend("MATH", "cpu") == "math"
    with pytest.raises(InputError, match="unknown attention backend 'xformers'"):
        resolve_attention_backend("xformers", "cpu")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(InputError, match="needs the flash-attn package"):
        resolve_attention_backend("flash", "cuda")
    with pytest.raises(InputError, match="needs torch_npu"):
        resolve_attention_backend("npu", "cpu")


def test_npu_backend_with_the_stand_in_resolves(torch_npu_stand_in):
    assert resolve_attention_backend("npu", "cpu") == "npu"
