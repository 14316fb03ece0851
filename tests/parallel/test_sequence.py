"""DSP against the unsharded LatteT2V, in a 2-process gloo group: outputs, gradients, traffic."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from osp_core.models.latte_t2v import LatteT2V
from osp_core.parallel.sequence import SequenceParallelLatte, shard_bounds, shard_sizes

from tests.models.test_latte_t2v import TINY as LATTE_TINY

from tests.distributed import run_ranks

# 6x2 latents: 3 patch positions, which do not divide by 2 ranks
TINY = {**LATTE_TINY, "sample_size": [6, 2]}
# (frames incl. images, latent height, width, images): 5 frames split unevenly over 2 ranks;
# 1 frame leaves rank 1 without frames
BATCH = 2
CASES = [(5, 6, 2, 0), (4, 6, 2, 1), (1, 6, 2, 0), (3, 4, 4, 0)]


def test_shard_sizes_cover_the_length_unevenly():
    assert shard_sizes(5, 2) == [3, 2] and shard_sizes(1, 2) == [1, 0] and shard_sizes(8, 4) == [2, 2, 2, 2]
    assert [shard_bounds(5, 2, r) for r in range(2)] == [(0, 3), (3, 5)]


def _inputs(frames: int, height: int, width: int, images: int) -> dict:
    g = torch.Generator().manual_seed(frames * 100 + height)
    captions = torch.randn(2, 1 + images, 7, TINY["caption_channels"], generator=g)
    mask = torch.ones(2, 1 + images, 7)
    mask[0, :, 5:] = 0  # padded caption tokens must stay masked in every shard
    return {
        "hidden_states": torch.randn(BATCH, 4, frames, height, width, generator=g),
        "timestep": torch.tensor([10, 700]),
        "encoder_hidden_states": captions if images else captions[:, 0],
        "encoder_attention_mask": mask if images else mask[:, 0],
        "use_image_num": images,
    }


def _compare(rank: int, world: int) -> tuple[list, float]:
    torch.manual_seed(0)
    model = LatteT2V(**TINY).eval()
    sharded = SequenceParallelLatte(model, dist.group.WORLD)
    results = []
    for case in CASES:
        inputs = _inputs(*case)
        with torch.no_grad():
            expected = model(**inputs, return_dict=False)[0]
            before = sharded.bytes_sent
            got = sharded(**inputs, return_dict=False)[0]
        results.append((case, float((got - expected).abs().max()), float(expected.abs().max()), sharded.bytes_sent - before))

    # gradients: every rank computes the same loss on the gathered output; the parameter
    # gradients summed over ranks equal the unsharded model's
    inputs = _inputs(*CASES[1])
    weights = torch.randn(2, 8, 4, 6, 2, generator=torch.Generator().manual_seed(3))
    model.zero_grad()
    (model(**inputs, return_dict=False)[0] * weights).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    (sharded(**inputs, return_dict=False)[0] * weights).sum().backward()
    # relative to the largest gradient: some are zero up to rounding (softmax ignores a key bias)
    scale = max(float(grad.abs().max()) for grad in expected_grads.values())
    grad_error = 0.0
    for name, grad in expected_grads.items():
        summed = model.get_parameter(name).grad.clone()
        dist.all_reduce(summed)
        grad_error = max(grad_error, float((summed - grad).abs().max()) / scale)
    return results, grad_error


@pytest.fixture(scope="module")
def two_rank_results():
    return [(rank, *result) for rank, result in enumerate(run_ranks(_compare, 2))]


@pytest.mark.distributed
def test_dsp_matches_the_unsharded_model(two_rank_results):
    for rank, results, _ in two_rank_results:
        for case, error, scale, _ in results:
            assert error <= 1e-5 * scale, f"rank {rank}, case {case}: max error {error} at scale {scale}"


@pytest.mark.distributed
def test_dsp_gradients_match_the_unsharded_model(two_rank_results):
    for rank, _, grad_error in two_rank_results:
        assert grad_error < 1e-4, f"rank {rank}: relative gradient error {grad_error}"


@pytest.mark.distributed
def test_dsp_traffic_is_what_the_shapes_say(two_rank_results):
    """Per layer pair each rank sends the tokens other ranks own: to the temporal layout and back."""
    dim = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    for rank, results, _ in two_rank_results:
        for (frames, height, width, _), _, _, sent in results:
            patches = (height // 2) * (width // 2)
            my_frames, my_patches = shard_sizes(frames, 2)[rank], shard_sizes(patches, 2)[rank]
            # to temporal: my frames x other ranks' patches; back: my patches x other ranks' frames
            elements = BATCH * (my_frames * (patches - my_patches) + my_patches * (frames - my_frames)) * dim
            assert sent == TINY["num_layers"] * elements * 4, (rank, frames, height, width)
