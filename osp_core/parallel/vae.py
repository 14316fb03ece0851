"""CausalVideoVAE decoding of one video over a process group: the tile passes of a tiled decode
(spatial tiles of every temporal rollback window) shared round-robin between the ranks, then
gathered, blended and cropped on the group's first rank exactly as one process would.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..models.causal_vae import CausalVideoVAE


def decode_over_ranks(vae: CausalVideoVAE, latents: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor | None:
    """(B, C, t, h, w) unscaled latents -> the (B, 3, T, H, W) video on the group's first rank,
    None on the others. A video that fits one tile (or tiling off) is decoded by the first rank
    alone. The first rank holds every decoded tile before blending (one process keeps a row)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if not (vae.use_tiling and vae.needs_tiling(latents.shape, latent=True)):
        return vae.decode(latents).sample if rank == 0 else None
    regions = [region for window in vae.tile_regions(latents.shape, latent=True) for row in window for region in row]
    # on the CPU: object collectives pickle, and a CUDA tensor would unpickle onto the sender's device index
    mine = {index: vae.decode_tile(latents, regions[index]).cpu() for index in range(rank, len(regions), world)}
    gathered: list[dict[int, torch.Tensor]] | None = [{} for _ in range(world)] if rank == 0 else None
    dist.gather_object(mine, gathered, dst=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    if gathered is None:
        return None
    tiles = {index: tile.to(latents.device) for part in gathered for index, tile in part.items()}
    return vae.decode_tiled(latents, tiles.__getitem__)
