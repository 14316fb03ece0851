"""Tile passes of one video decoded on two ranks, blended on the first: one process's video."""

from __future__ import annotations

from pathlib import Path

import torch

from osp_core.models.causal_vae import CausalVideoVAE
from osp_core.parallel.vae import decode_over_ranks

import pytest

from tests.distributed import run_ranks


def _decode(rank: int, world: int, vae_dir: str) -> tuple[int, float | None, list[int]]:
    vae = CausalVideoVAE.from_pretrained(vae_dir).eval()
    # 24 px tiles (3 latents, stride 2) over 4x4 latents and 2-latent-frame rollback windows
    # over 3 latent frames: 2 windows x 4 tiles
    vae.enable_tiling(tile_sample_size=24, tile_sample_frames=5, tile_overlap_factor=0.25)
    latents = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    passes = vae.num_tiles(latents.shape, latent=True)
    regions = [region for window in vae.tile_regions(latents.shape, latent=True) for row in window for region in row]
    decoded: list[int] = []  # which tile passes this rank ran
    decode_tile = vae.decode_tile

    def counting_decode_tile(z: torch.Tensor, region: object) -> torch.Tensor:
        decoded.append(regions.index(region))
        return decode_tile(z, region)

    vae.decode_tile = counting_decode_tile  # type: ignore[method-assign]
    with torch.no_grad():
        video = decode_over_ranks(vae, latents)
        mine = list(decoded)
        if rank != 0:
            return passes, None if video is None else -1.0, mine
        vae.decode_tile = decode_tile  # type: ignore[method-assign]
        expected = vae.decode(latents).sample
    return passes, float((video - expected).abs().max()), mine


@pytest.mark.distributed
def test_tiles_decoded_on_two_ranks_give_one_process_video(reference_dir):
    vae_dir = str(Path(reference_dir) / "pipeline" / "tiny-osp-v1.1.0" / "vae")
    (passes, error, first), (_, other, second) = run_ranks(_decode, 2, vae_dir)
    assert passes == 8
    assert (first, second) == ([0, 2, 4, 6], [1, 3, 5, 7])  # round-robin: each rank decodes half
    assert error == 0.0  # the same tile passes, blended in the same order
    assert other is None  # only the first rank holds the video
