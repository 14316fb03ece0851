"""Training at scale on FSDP2 (`osp_core.train.parallelize`): memory per rank, step time, MFU.

  python benchmarks/fsdp.py memory [--shards 1 2 4 8]
      per-rank bytes of parameters, gradients and AdamW states of the full-size LatteT2V
      (v1.1.0: 28 layer pairs, width 1152, 1.06B parameters, fp32 master weights) sharded by
      the trainer's own `parallelize` over 1, 2, 4 and 8 gloo processes: the model is built on
      the meta device and the numbers are the real sizes of each rank's DTensor shards
      (FSDP2 pads dimension 0 to a multiple of the shards), plus the largest all-gathered
      block (bf16 under the bf16 policy), the transient working set of one block.
  python benchmarks/fsdp.py measure
      checks those numbers with real tensors: 2 gloo processes train the full-width model with
      1 layer pair for one AdamW step and sum what each rank holds (shards, gradients, optimizer
      states), against the meta-device count of the same configuration.
  python benchmarks/fsdp.py speed [--repeats 5]
      seconds per training step (forward, backward, AdamW) on 2 CPU processes of the
      full-width model with 1 layer pair, DDP and FSDP2 alternated step by step in one run.
  torchrun --standalone --nproc_per_node 1 benchmarks/fsdp.py device [--layers 28] [--frames 17] [--size 64] [--repeats 5]
      on a GPU (`benchmarks/gpu_fsdp.sh`): the full-size transformer, 65x512x512 latents, bf16
      FSDP2 with activation checkpointing of every block, one sample per step: seconds per
      step, peak memory, model FLOPs per step (counted by torch's FlopCounterMode on the meta
      device, without the recomputation) and MFU against the GPU's dense bf16 peak.
      `--lora RANK [--lora-targets all]`: the same step training LoRA adapters on the frozen
      model (`osp t2v train --lora`), AdamW over the adapters alone.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL = {
    "num_layers": 28, "attention_head_dim": 72, "num_attention_heads": 16, "caption_channels": 4096, "cross_attention_dim": 1152,
    "sample_size": [64, 64], "video_length": 17, "attention_mode": "math", "model_max_length": 300,
}  # fmt: skip
GiB = 2**30

# dense bf16 peak FLOP/s (no sparsity) of GPUs the script may meet, by name fragment
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def _model(**overrides):
    from osp_core.models.latte_t2v import LatteT2V

    return LatteT2V(**{**FULL, **overrides})


def _layout(world: int, rank: int, **parallel):
    from osp_core.train.parallelize import build_train_parallel, resolve_train_layout

    config = SimpleNamespace(strategy="fsdp", sequence_parallel=1, replicate=1, activation_checkpointing=0, compile=False, **parallel)
    return config, build_train_parallel(resolve_train_layout(config, world, rank), torch.device("cpu"))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _state_bytes(model, optimizer=None) -> dict[str, int]:
    """Bytes this rank holds: parameter shards, gradient shards, optimizer states (real tensors,
    or what they will be: AdamW keeps two fp32 moments per parameter element)."""
    params = sum(_local(p).numel() * _local(p).element_size() for p in model.parameters())
    if optimizer is None:
        return {"params": params, "grads": params, "adam": 2 * sum(_local(p).numel() * 4 for p in model.parameters())}
    grads = sum(_local(p.grad).numel() * _local(p.grad).element_size() for p in model.parameters() if p.grad is not None)
    adam = sum(_local(v).numel() * _local(v).element_size() for s in optimizer.state.values() for k, v in s.items() if k != "step")
    return {"params": params, "grads": grads, "adam": adam}


def _rank_main(rank: int, world: int, port: int, job: str, options: dict, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        queue.put((rank, JOBS[job](rank, world, **options)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(world: int, job: str, **options) -> list:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_rank_main, args=(rank, world, port, job, options, queue)) for rank in range(world)]
    for process in processes:
        process.start()
    results = sorted((queue.get(timeout=3600) for _ in processes), key=lambda item: item[0])
    for process in processes:
        process.join()
    return [result for _, result in results]


# --- memory -----------------------------------------------------------------------------------
def _meta_job(rank: int, world: int, layers: int) -> dict[str, int]:
    from osp_core.train.parallelize import parallelize, transformer_blocks

    with torch.device("meta"):
        model = _model(num_layers=layers)
    largest_block = max(sum(p.numel() for p in block.parameters()) for block in transformer_blocks(model))
    config, parallel = _layout(world, rank)
    model = parallelize(model, parallel, config, mixed_precision="bf16")
    return {**_state_bytes(model), "gathered_block_bf16": 2 * largest_block if world > 1 else 0}


def memory(args: argparse.Namespace) -> None:
    print("| shards | parameters (GiB) | gradients (GiB) | AdamW states (GiB) | total per rank (GiB) | vs 1 shard | largest gathered block, bf16 (GiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for shards in args.shards:
        per_rank = _spawn(shards, "meta", layers=FULL["num_layers"])
        worst = max(per_rank, key=lambda r: r["params"] + r["grads"] + r["adam"])
        total = worst["params"] + worst["grads"] + worst["adam"]
        base = base or total
        print(
            f"| {shards} | {worst['params'] / GiB:.2f} | {worst['grads'] / GiB:.2f} | {worst['adam'] / GiB:.2f} | {total / GiB:.2f} | "
            f"{base / total:.2f}x less | {worst['gathered_block_bf16'] / GiB:.3f} |"
        )


def _measure_job(rank: int, world: int) -> dict[str, int]:
    from osp_core.train.parallelize import parallelize

    torch.manual_seed(0)
    model = _model(num_layers=1, sample_size=[16, 16], video_length=5, model_max_length=16)
    config, parallel = _layout(world, rank)
    model = parallelize(model, parallel, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    x, captions = torch.randn(1, 4, 5, 16, 16, generator=g), torch.randn(1, 16, 4096, generator=g)
    out = model(x, torch.tensor([500]), encoder_hidden_states=captions, return_dict=False)[0]
    out.float().pow(2).mean().backward()
    optimizer.step()
    measured = _state_bytes(model, optimizer)
    with torch.device("meta"):
        meta = _model(num_layers=1, sample_size=[16, 16], video_length=5, model_max_length=16)
    config, parallel = _layout(world, rank)
    predicted = _state_bytes(parallelize(meta, parallel, config))
    return {"measured": measured, "predicted": predicted}


def measure(args: argparse.Namespace) -> None:
    print("| rank | parameters MB (measured / meta) | gradients MB | AdamW states MB |")
    print("|---:|---:|---:|---:|")
    for rank, result in enumerate(_spawn(2, "measure")):
        m, p = result["measured"], result["predicted"]
        print(f"| {rank} | {m['params'] / 2**20:.2f} / {p['params'] / 2**20:.2f} | {m['grads'] / 2**20:.2f} / {p['grads'] / 2**20:.2f} | {m['adam'] / 2**20:.2f} / {p['adam'] / 2**20:.2f} |")


# --- speed ------------------------------------------------------------------------------------
def _speed_job(rank: int, world: int, repeats: int) -> dict[str, float]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from osp_core.train.parallelize import parallelize

    kwargs = {"num_layers": 1, "sample_size": [16, 16], "video_length": 5, "model_max_length": 16}
    torch.manual_seed(0)
    ddp = DistributedDataParallel(_model(**kwargs))
    torch.manual_seed(0)
    config, parallel = _layout(world, rank)
    fsdp = parallelize(_model(**kwargs), parallel, config)
    runs = {"ddp": (ddp, torch.optim.AdamW(ddp.parameters(), lr=1e-4)), "fsdp": (fsdp, torch.optim.AdamW(fsdp.parameters(), lr=1e-4))}
    g = torch.Generator().manual_seed(1 + rank)
    x, captions = torch.randn(1, 4, 5, 16, 16, generator=g), torch.randn(1, 16, 4096, generator=g)
    seconds: dict[str, list[float]] = {"ddp": [], "fsdp": []}
    for _ in range(repeats + 1):  # the first round warms up
        for name, (model, optimizer) in runs.items():  # alternated: both see the same machine load
            dist.barrier()
            t0 = time.perf_counter()
            out = model(x, torch.tensor([500]), encoder_hidden_states=captions, return_dict=False)[0]
            out.float().pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            dist.barrier()
            seconds[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values[1:]) for name, values in seconds.items()}


def speed(args: argparse.Namespace) -> None:
    result = _spawn(2, "speed", repeats=args.repeats)[0]
    print("| strategy | s / step (median) | vs ddp |")
    print("|---|---:|---:|")
    for name in ("ddp", "fsdp"):
        print(f"| {name} | {result[name]:.3f} | {result[name] / result['ddp']:.2f}x |")


# --- device -----------------------------------------------------------------------------------
def _with_lora(model, rank: int | None, targets: str):
    """`model` frozen with trainable LoRA adapters (`osp t2v train --lora`), or as it is."""
    if rank:
        from osp_core.models.lora import add_lora

        add_lora(model, rank, None, 0.0, targets)
    return model


def model_flops(frames: int, size: int, layers: int = 28, tokens: int = 300, lora: int | None = None, targets: str = "all") -> float:
    """Forward + backward FLOPs of one sample, counted on the meta device (no recomputation);
    with LoRA the frozen weights' gradients are not computed, so fewer than full training."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = _with_lora(_model(num_layers=layers, video_length=frames, sample_size=[size, size]), lora, targets)
        x, captions = torch.randn(1, 4, frames, size, size), torch.randn(1, tokens, 4096)
        with FlopCounterMode(display=False) as counter:
            out = model(x, torch.tensor([500]), encoder_hidden_states=captions, return_dict=False)[0]
            out.float().pow(2).mean().backward()
    return float(counter.get_total_flops())


def device_check(args: argparse.Namespace) -> None:
    from osp_core.device import select_device
    from osp_core.parallel.layout import launched_world, process_group, rank_device
    from osp_core.train.parallelize import build_train_parallel, parallelize, resolve_train_layout

    rank, world, local_rank = launched_world()
    device = rank_device(select_device(None), local_rank)
    flops = model_flops(args.frames, args.size, args.layers, lora=args.lora, targets=args.lora_targets)
    cuda = device.type == "cuda"  # elsewhere (a CPU check of this code path) no peak memory or MFU
    with process_group(device):
        config = SimpleNamespace(strategy="fsdp", sequence_parallel=1, replicate=1, activation_checkpointing=1, compile=args.compile)
        parallel = build_train_parallel(resolve_train_layout(config, world, rank), device)
        if parallel.fsdp_mesh is None:
            # one GPU: FSDP2 still wraps (bf16 parameters, fp32 reduction), as it does on N
            parallel.fsdp_mesh = parallel.layout.build_fsdp_mesh(device.type)
        with torch.device(device):
            model = _with_lora(_model(num_layers=args.layers, video_length=args.frames, sample_size=[args.size, args.size]), args.lora, args.lora_targets)
        model = parallelize(model, parallel, config, mixed_precision="bf16")
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        sync = torch.cuda.synchronize if cuda else (lambda device: None)
        g = torch.Generator(device).manual_seed(rank)
        x = torch.randn(1, 4, args.frames, args.size, args.size, generator=g, device=device)
        captions = torch.randn(1, 300, 4096, generator=g, device=device)
        seconds = []
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.repeats + 1):
            sync(device)
            t0 = time.perf_counter()
            out = model(x, torch.tensor([500], device=device), encoder_hidden_states=captions, return_dict=False)[0]
            out.float().pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            seconds.append(time.perf_counter() - t0)
        step = statistics.median(seconds[1:])
        name = torch.cuda.get_device_name(device) if cuda else device.type
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        memory = f"{torch.cuda.max_memory_allocated(device) / GiB:.1f}" if cuda else "n/a"
        if rank == 0:
            trained = "full" if not args.lora else f"LoRA r{args.lora} {args.lora_targets}"
            print("| GPU | ranks | trains | latents | s / step | peak memory (GiB) | model TFLOPs / step | MFU |")
            print("|---|---:|---|---|---:|---:|---:|---:|")
            mfu = f"{flops / step / peak:.1%}" if peak else "unknown peak"
            print(f"| {name} | {world} | {trained} | 4x{args.frames}x{args.size}x{args.size} | {step:.2f} | {memory} | {flops / 1e12:.3g} | {mfu} |")


JOBS = {"meta": _meta_job, "measure": _measure_job, "speed": _speed_job}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("memory").add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8])
    sub.add_parser("measure")
    sub.add_parser("speed").add_argument("--repeats", type=int, default=5)
    device = sub.add_parser("device")
    device.add_argument("--layers", type=int, default=28)
    device.add_argument("--frames", type=int, default=17)
    device.add_argument("--size", type=int, default=64)
    device.add_argument("--repeats", type=int, default=5)
    device.add_argument("--compile", action="store_true")
    device.add_argument("--lora", type=int, default=None, help="train LoRA adapters of this rank on the frozen model")
    device.add_argument("--lora-targets", default="all")
    args = parser.parse_args()
    {"memory": memory, "measure": measure, "speed": speed, "device": device_check}[args.command](args)


if __name__ == "__main__":
    main()
