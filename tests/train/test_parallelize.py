"""The parallelize step on one process: activation checkpointing and regional compilation change
neither parameter names nor numbers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from osp_core.models.latte_t2v import LatteT2V
from osp_core.train.parallelize import build_train_parallel, parallelize, resolve_train_layout, transformer_blocks

from .helpers import TINY_T2V


def _loss_and_grads(every: int, compile_blocks: bool = False) -> tuple[float, dict[str, torch.Tensor], list[str], list[int]]:
    """Loss, gradients, parameter names and, per block, how often its first attention ran
    (twice where backward recomputed it)."""
    torch.manual_seed(0)
    model = LatteT2V(**{**TINY_T2V, "num_layers": 2})
    config = SimpleNamespace(strategy="fsdp", sequence_parallel=1, replicate=1, activation_checkpointing=every, compile=compile_blocks)
    parallel = build_train_parallel(resolve_train_layout(config, 1, 0), torch.device("cpu"))
    model = parallelize(model, parallel, config)
    calls = [0] * len(transformer_blocks(model))
    for index, block in enumerate(transformer_blocks(model)):
        block.attn1.to_q.register_forward_hook(lambda *_, i=index: calls.__setitem__(i, calls[i] + 1))
    g = torch.Generator().manual_seed(1)
    x, captions = torch.randn(2, 4, 2, 4, 4, generator=g), torch.randn(2, 16, 16, generator=g)
    out = model(x, torch.tensor([10, 900]), encoder_hidden_states=captions, return_dict=False)[0]
    loss = out.pow(2).mean()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}, [n for n, _ in model.named_parameters()], calls


def test_blocks_are_the_models_repeated_blocks():
    model = LatteT2V(**{**TINY_T2V, "num_layers": 2})
    assert len(transformer_blocks(model)) == 4  # 2 spatial + 2 temporal


@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_keeps_names_and_gradients(every):
    plain_loss, plain_grads, names, plain_calls = _loss_and_grads(0)
    loss, grads, checkpointed_names, calls = _loss_and_grads(every)
    assert plain_calls == [1, 1, 1, 1]
    # blocks in model order: spatial 0, spatial 1, temporal 0, temporal 1; every k-th is recomputed
    assert calls == [2 if i % every == 0 else 1 for i in range(4)]
    assert checkpointed_names == names  # checkpoints keep their keys
    assert loss == plain_loss
    for name in names:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_regional_compile_keeps_names_and_gradients():
    plain_loss, plain_grads, names, _ = _loss_and_grads(0)
    loss, grads, compiled_names, _ = _loss_and_grads(0, compile_blocks=True)
    assert compiled_names == names
    assert abs(loss - plain_loss) <= 1e-5 * abs(plain_loss)
    for name in names:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6)
