"""Sequence parallelism of LatteT2V: bytes moved per denoising step and seconds per step.

  python benchmarks/parallel.py traffic [--ranks 2 4 8]
      bytes every rank together sends per denoising step (one forward of the CFG batch of 2)
      for DSP (`osp_core.parallel.sequence`) and a Ulysses-style split of the same model, at
      65 and 221 frames of 512x512 (17 / 56 latent frames, 32x32 patch positions, width 1152,
      28 layer pairs, bf16), from the shapes; then a real 2-process gloo run of DSP at full
      width (few layers, smaller video) whose counted all-to-all bytes must equal the formula.
  python benchmarks/parallel.py speed [--processes 1 2 4] [--layers 2] [--frames 17] [--size 16] [--repeats 3]
      seconds per denoising step (one forward of the CFG batch) of the full-width model with
      random weights on 1, 2 and 4 CPU processes (DSP over gloo), float32; every process gets
      max(1, cores // processes) threads.

  torchrun --standalone --nproc_per_node N benchmarks/parallel.py device [--layers 28] [--frames 17] [--size 64] [--repeats 5]
      on accelerators (NCCL / HCCL, `osp_core.device`): the full-size model, bf16, 65x512x512
      latents by default; checks the DSP output against the plain model on every rank and
      prints seconds per step of both (`benchmarks/gpu_parallel.sh` runs it on one GPU).

Prints markdown tables. Ulysses-style: the sequence stays sharded, and each self-attention
(spatial and temporal) switches to head sharding and back with four all-to-alls (q, k, v
forward, the output back), as the DSP paper accounts for it; cross-attention needs none in
either scheme (its keys are the caption, on every rank).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from osp_core.parallel.sequence import shard_sizes  # noqa: E402

WIDTH, HEADS, LAYERS, CAPTION_WIDTH = 1152, 16, 28, 4096
PATCHES_512 = (512 // 8 // 2) ** 2  # 64x64 latents, patch 2 -> 32x32 positions
CFG_BATCH = 2


def latent_frames(frames: int) -> int:
    return (frames - 1) // 4 + 1


def dsp_bytes(batch: int, frames: int, patches: int, width: int, layers: int, world: int, element_size: int) -> int:
    """What all ranks together send in one forward: per layer pair, each rank sends its frames'
    tokens at other ranks' patch positions, and back its positions' tokens of other ranks' frames."""
    frame_sizes, patch_sizes = shard_sizes(frames, world), shard_sizes(patches, world)
    per_layer = sum(f * (patches - p) + p * (frames - f) for f, p in zip(frame_sizes, patch_sizes))
    return layers * batch * per_layer * width * element_size


def ulysses_bytes(batch: int, frames: int, patches: int, width: int, layers: int, world: int, element_size: int) -> int:
    """Four all-to-alls (q, k, v, output) per self-attention, two self-attentions per layer pair;
    each all-to-all keeps 1/world of the (B, F*P, D) activation on its rank."""
    activation = batch * frames * patches * width
    return layers * 2 * 4 * (activation - activation // world) * element_size


def traffic_table(ranks: list[int]) -> None:
    print("| frames | latent frames x positions | ranks | DSP MB / step | Ulysses-style MB / step | DSP / Ulysses |")
    print("|---:|---|---:|---:|---:|---:|")
    for frames in (65, 221):
        f = latent_frames(frames)
        for world in ranks:
            dsp = dsp_bytes(CFG_BATCH, f, PATCHES_512, WIDTH, LAYERS, world, 2)
            uly = ulysses_bytes(CFG_BATCH, f, PATCHES_512, WIDTH, LAYERS, world, 2)
            print(f"| {frames} | {f} x {PATCHES_512} | {world} | {dsp / 1e6:,.0f} | {uly / 1e6:,.0f} | {dsp / uly:.3f} |")


def _wide_model(layers: int, frames: int, size: int) -> torch.nn.Module:
    from osp_core.models.latte_t2v import LatteT2V

    torch.manual_seed(0)
    return LatteT2V(
        num_layers=layers, attention_head_dim=WIDTH // HEADS, num_attention_heads=HEADS, caption_channels=CAPTION_WIDTH,
        cross_attention_dim=WIDTH, sample_size=[size, size], video_length=frames, attention_mode="math",
    ).eval()  # fmt: skip


def _wide_inputs(frames: int, size: int) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(CFG_BATCH, 4, frames, size, size, generator=g),
        "timestep": torch.tensor([500, 500]),
        "encoder_hidden_states": torch.randn(CFG_BATCH, 120, CAPTION_WIDTH, generator=g),
    }


def _rank_run(rank: int, world: int, port: int, mode: str, layers: int, frames: int, size: int, repeats: int, queue) -> None:
    import torch.distributed as dist

    from osp_core.parallel.sequence import SequenceParallelLatte

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _wide_model(layers, frames, size)
    run = SequenceParallelLatte(model, dist.group.WORLD) if world > 1 else model
    inputs = _wide_inputs(frames, size)
    seconds = []
    with torch.no_grad():
        for _ in range(1 if mode == "traffic" else repeats + 1):  # the first call warms up
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
            run(**inputs, return_dict=False)
            seconds.append(time.perf_counter() - t0)
    sent = torch.tensor([run.bytes_sent if world > 1 else 0])
    if world > 1:
        dist.all_reduce(sent)
        dist.destroy_process_group()
    if rank == 0:
        queue.put((statistics.median(seconds[1:] or seconds), int(sent)))


def _spawn(world: int, *args) -> tuple[float, int]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_rank_run, args=(rank, world, port, *args, queue)) for rank in range(world)]
    for process in processes:
        process.start()
    result = queue.get(timeout=3600)
    for process in processes:
        process.join()
    return result


def traffic(args: argparse.Namespace) -> None:
    traffic_table(args.ranks)
    layers, frames, size = 2, 17, 16
    _, counted = _spawn(2, "traffic", layers, frames, size, 1)
    expected = dsp_bytes(CFG_BATCH, frames, (size // 2) ** 2, WIDTH, layers, 2, 4)
    print(f"\ncounted in a 2-process gloo run (width {WIDTH}, {layers} layer pairs, {frames} latent frames x {(size // 2) ** 2} positions, fp32): "
          f"{counted:,} bytes; formula: {expected:,} bytes; {'equal' if counted == expected else 'DIFFERENT'}")  # fmt: skip
    if counted != expected:
        sys.exit(1)


def speed(args: argparse.Namespace) -> None:
    print(f"cores: {os.cpu_count()}, torch {torch.__version__}, width {WIDTH}, {args.layers} layer pairs, {args.frames} latent frames x {(args.size // 2) ** 2} positions, CFG batch {CFG_BATCH}, fp32")
    print("| processes | threads each | s / step | vs 1 process |")
    print("|---:|---:|---:|---:|")
    base = None
    for world in args.processes:
        seconds, _ = _spawn(world, "speed", args.layers, args.frames, args.size, args.repeats)
        base = base or seconds
        print(f"| {world} | {max(1, (os.cpu_count() or 1) // world)} | {seconds:.2f} | {base / seconds:.2f}x |", flush=True)


def device_check(args: argparse.Namespace) -> None:
    """The sp code path on accelerators under torchrun (1 rank still runs every all-to-all)."""
    import torch.distributed as dist

    from osp_core.device import select_device
    from osp_core.parallel.layout import launched_world, process_group, rank_device
    from osp_core.parallel.sequence import SequenceParallelLatte

    rank, world, local_rank = launched_world()
    device = rank_device(select_device(None), local_rank)
    with process_group(device):
        model = _wide_model(args.layers, args.frames, args.size).to(device, torch.bfloat16)
        sharded = SequenceParallelLatte(model, dist.group.WORLD)
        inputs = {k: v.to(device) for k, v in _wide_inputs(args.frames, args.size).items()}
        inputs["hidden_states"] = inputs["hidden_states"].to(torch.bfloat16)

        def timed(run) -> tuple[float, torch.Tensor]:
            seconds = []
            with torch.no_grad():
                for _ in range(args.repeats + 1):
                    dist.barrier()
                    sync = getattr(torch, device.type, None)
                    t0 = time.perf_counter()
                    out = run(**inputs, return_dict=False)[0]
                    if sync is not None and hasattr(sync, "synchronize"):
                        sync.synchronize()
                    seconds.append(time.perf_counter() - t0)
            return statistics.median(seconds[1:]), out

        plain_seconds, expected = timed(model)
        dsp_seconds, got = timed(sharded)
        error = float((got.float() - expected.float()).abs().max() / expected.float().abs().max())
        if rank == 0:
            print(f"{device} x {world}, bf16, width {WIDTH}, {args.layers} layer pairs, {args.frames} latent frames x {(args.size // 2) ** 2} positions, CFG batch {CFG_BATCH}")
            print(f"plain model: {plain_seconds:.3f} s / step; DSP over {world} rank(s): {dsp_seconds:.3f} s / step; "
                  f"max |DSP - plain| / max |plain| = {error:.2e}; bytes sent by rank 0 per step: {sharded.bytes_sent // (args.repeats + 1):,}")  # fmt: skip
            peak = getattr(getattr(torch, device.type, None), "max_memory_allocated", None)
            if peak is not None:
                print(f"peak memory on rank 0: {peak() / 2**30:.1f} GiB")
        if error > 2e-2:  # bf16: a few units in the last place of the output scale
            sys.exit(f"rank {rank}: DSP output differs from the plain model by {error:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("traffic")
    t.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    s = sub.add_parser("speed")
    s.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    s.add_argument("--layers", type=int, default=2)
    s.add_argument("--frames", type=int, default=17)
    s.add_argument("--size", type=int, default=16)
    s.add_argument("--repeats", type=int, default=3)
    d = sub.add_parser("device")
    d.add_argument("--layers", type=int, default=LAYERS)
    d.add_argument("--frames", type=int, default=17)
    d.add_argument("--size", type=int, default=64)
    d.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    {"traffic": traffic, "speed": speed, "device": device_check}[args.command](args)


if __name__ == "__main__":
    main()
