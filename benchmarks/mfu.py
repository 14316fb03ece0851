"""Where a sampling step's time goes on this CPU: model FLOP utilisation and a profile by operator.

  python benchmarks/mfu.py [--layers 4] [--frames 17] [--size 32] [--dtype bf16] [--repeats 3]

1. This machine's matmul peak in the dtype: the best of several 4096x4096x4096 products
   (what the transformer's linear layers are made of, at their best shape).
2. One denoising step of the full-width LatteT2V (width 1152, 16 heads, T5-XXL caption width,
   `--layers` spatial+temporal pairs: a step's cost is the same per pair, so 4 stand for 28) on
   `--frames`x`--size`x`--size` latents (17x32x32: a 65x256x256 video), batch 2 as under
   classifier-free guidance: model FLOPs counted by torch's FlopCounterMode on the meta device,
   the median seconds of `--repeats` timed steps, MFU = FLOPs / seconds / peak.
3. The step under torch.profiler: self CPU time by operator, the top rows.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL_WIDTH = {
    "attention_head_dim": 72, "num_attention_heads": 16, "caption_channels": 4096, "cross_attention_dim": 1152,
    "model_max_length": 300,
}  # fmt: skip
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matrix product in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up (kernel selection, page faults)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _model(args: argparse.Namespace, device: str = "cpu"):
    from osp_core.models.latte_t2v import LatteT2V

    with torch.device(device):
        return LatteT2V(**FULL_WIDTH, num_layers=args.layers, sample_size=[args.size, args.size], video_length=args.frames).eval()


def _inputs(args: argparse.Namespace, dtype: torch.dtype, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(0) if device == "cpu" else None
    make = (lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)) if g else (lambda *shape: torch.empty(*shape, device=device, dtype=dtype))  # noqa: E731
    return {
        "hidden_states": make(2, 4, args.frames, args.size, args.size),
        "timestep": torch.tensor([500, 500], device=device),
        "encoder_hidden_states": make(2, 120, 4096),
        "return_dict": False,
    }


def step_flops(args: argparse.Namespace) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(args, "meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**_inputs(args, torch.float32, "meta"))
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]

    peak = matmul_peak(dtype)
    flops = step_flops(args)
    torch.manual_seed(0)
    model = _model(args).to(dtype)
    inputs = _inputs(args, dtype)
    with torch.no_grad():
        model(**inputs)  # warm-up
        seconds = [_timed(lambda: model(**inputs)) for _ in range(args.repeats)]
        step = statistics.median(seconds)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(**inputs)
    print(f"{torch.get_num_threads()} threads, {args.dtype}, full-width LatteT2V with {args.layers} layer pairs, latents 2x4x{args.frames}x{args.size}x{args.size}, 120 caption tokens")
    print("| matmul peak (TFLOP/s) | model GFLOPs / step | seconds / step (median) | achieved TFLOP/s | MFU |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {peak / 1e12:.3f} | {flops / 1e9:.1f} | {step:.3f} | {flops / step / 1e12:.3f} | {flops / step / peak:.1%} |")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    print()
    print("| operator | calls | self CPU ms | share |")
    print("|---|---:|---:|---:|")
    for e in events[: args.top]:
        print(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e3:.1f} | {e.self_cpu_time_total / total:.1%} |")


if __name__ == "__main__":
    main()
