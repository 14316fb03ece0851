"""Where a sampling step's time goes on this CPU: model FLOP utilisation and a profile by operator.

  python benchmarks/mfu.py [--layers 1] [--frames 17] [--size 32] [--dtype bf16,fp32] [--repeats 3] [--threads N]

For each dtype:

1. This machine's matmul peak: the best 4096x4096x4096 product (what the transformer's linear
   layers are made of, at their best shape), one before each timed step.
2. One denoising step of the full-width LatteT2V (width 1152, 16 heads, T5-XXL caption width
   4096, random weights, `--layers` spatial+temporal pairs: a step's cost is the same per pair,
   so a few stand for 28) on `--frames`x`--size`x`--size` latents (17x32x32: a 65x256x256
   video), batch 2 as under classifier-free guidance, 120 caption tokens with a padding mask:
   model FLOPs counted by torch's FlopCounterMode on the meta device, the best seconds of
   `--repeats` timed steps, MFU = FLOPs / seconds / peak. Peak and steps alternate and each
   takes its best run, so that other work on a shared machine slows both alike.
3. The step under torch.profiler, its three stages (embed, blocks, unpatchify) and the layout
   changes between the spatial and temporal blocks labelled: by operator, the calls, self CPU
   time and share, and the bytes written by copies and element-wise kernels; then every copy by
   where it comes from. Calls and bytes do not depend on the machine's load; times do.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL_WIDTH = {
    "attention_head_dim": 72, "num_attention_heads": 16, "caption_channels": 4096, "cross_attention_dim": 1152,
    "model_max_length": 300,
}  # fmt: skip
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
CAPTION_TOKENS, KEPT_TOKENS = 120, 100  # a caption padded to 120 T5 tokens, 100 of them real
# operators that only move or convert data
COPY_OPS = {"aten::copy_", "aten::cat"}
# element-wise kernels (their output is as large as their largest input)
ELEMENTWISE_OPS = {
    "aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::div", "aten::div_", "aten::sub", "aten::rsub",
    "aten::addcmul", "aten::addcmul_", "aten::gelu", "aten::silu", "aten::native_layer_norm", "aten::cos", "aten::sin",
    "aten::exp",
}  # fmt: skip
STAGES = ("embed", "blocks", "layout", "unpatchify")
PEAK_SIZE = 4096


def _matmul(dtype: torch.dtype, n: int = PEAK_SIZE):
    """An n x n x n matrix product in `dtype`, to call (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return lambda: torch.mm(a, b)


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
    make = (lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)) if g else (lambda *shape: torch.empty(*shape, device=device, dtype=dtype))
    mask = torch.zeros(2, CAPTION_TOKENS, dtype=torch.long, device=device)
    mask[:, :KEPT_TOKENS] = 1
    return {
        "hidden_states": make(2, 4, args.frames, args.size, args.size),
        "timestep": torch.tensor([500, 500], device=device),
        "encoder_hidden_states": make(2, CAPTION_TOKENS, 4096),
        "encoder_attention_mask": mask,
        "return_dict": False,
    }


def step_flops(args: argparse.Namespace) -> tuple[float, dict[str, float]]:
    """A step's FLOPs, in total and by operator (matrix products, attention, convolution)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(args, "meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**_inputs(args, torch.float32, "meta"))
    by_op = {str(op).split(".")[-1]: float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), by_op


class _LabelledLayout:
    """The model's own layout change, under a profiler label (so its copies can be told apart)."""

    def __init__(self) -> None:
        from osp_core.models.latte_t2v import CONTIGUOUS_LAYOUT

        self.inner = CONTIGUOUS_LAYOUT

    def to_temporal(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        with torch.profiler.record_function("layout"):
            return self.inner.to_temporal(x, batch)

    def to_spatial(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        with torch.profiler.record_function("layout"):
            return self.inner.to_spatial(x, batch)


def labelled_step(model, inputs: dict) -> torch.Tensor:
    """`model.forward`'s three stages, each under a profiler label."""
    kwargs = {k: v for k, v in inputs.items() if k != "return_dict"}
    with torch.profiler.record_function("embed"):
        block_inputs = model.embed(**kwargs)
    with torch.profiler.record_function("blocks"):
        x = model.run_blocks(block_inputs, _LabelledLayout())
    with torch.profiler.record_function("unpatchify"):
        return model.unpatchify(x, block_inputs)


def _bytes_written(event) -> int:
    """Bytes an event's output holds: the destination of a copy, the allocation of a cat (whose
    tensor-list inputs the profiler does not record), else the largest input."""
    if event.name == "aten::cat":
        return max(event.cpu_memory_usage, 0)
    sizes = []
    for shape, dtype in zip(event.input_shapes, event.input_dtypes or []):
        if not shape or not dtype:
            continue
        itemsize = torch.empty((), dtype=getattr(torch, _dtype_name(dtype))).element_size()
        sizes.append(_numel(shape) * itemsize)
    if not sizes:
        return 0
    return sizes[0] if event.name == "aten::copy_" else max(sizes)


def _dtype_name(profiler_dtype: str) -> str:
    names = {"float": "float32", "c10::BFloat16": "bfloat16", "c10::Half": "float16", "double": "float64", "long int": "int64", "int": "int32", "bool": "bool"}
    return names.get(profiler_dtype, "float32")


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _ancestors(event) -> list:
    chain, parent = [], event.cpu_parent
    while parent is not None:
        chain.append(parent)
        parent = parent.cpu_parent
    return chain


def copy_origin(event) -> str:
    """Where a copy comes from: a labelled stage and the operator that asked for it."""
    chain = _ancestors(event)
    stage = next((e.name for e in chain if e.name in STAGES), "?")
    callers = [e.name for e in chain if e.name not in STAGES and e.name not in ("aten::clone", "aten::copy_", "aten::_to_copy")]
    if stage == "layout":
        return "layout: spatial <-> temporal rearrange (ours, chosen: see docs)"
    if event.name == "aten::cat":
        return f"{stage}: aten::cat"
    caller = callers[0] if callers else "aten::clone"
    if caller == "aten::addmm":
        return f"{stage}: bias broadcast inside aten::addmm (ATen's linear)"
    if any(e.name == "aten::_to_copy" for e in chain[:2]):
        return f"{stage}: dtype cast ({caller})"
    return f"{stage}: {caller}"


def profile_tables(prof) -> tuple[list[tuple], list[tuple], dict[str, float]]:
    """(operator rows, copy-origin rows, totals) from a profiled step."""
    self_ms: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    written: dict[str, int] = defaultdict(int)
    origins: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for event in prof.events():
        if event.name in STAGES:
            continue
        self_ms[event.name] += event.self_cpu_time_total / 1e3
        calls[event.name] += 1
        if event.name in COPY_OPS or event.name in ELEMENTWISE_OPS:
            written[event.name] += _bytes_written(event)
        if event.name in COPY_OPS:
            origin = origins[copy_origin(event)]
            origin[0] += 1
            origin[1] += _bytes_written(event)
    total = sum(self_ms.values()) or 1.0
    rows = sorted(((name, calls[name], ms, ms / total, written.get(name)) for name, ms in self_ms.items()), key=lambda r: -r[2])
    copy_rows = sorted(((name, n, b) for name, (n, b) in origins.items()), key=lambda r: -r[2])
    totals = {
        "copies": sum(calls[n] for n in COPY_OPS),
        "copy_bytes": sum(written[n] for n in COPY_OPS),
        "elementwise": sum(calls[n] for n in ELEMENTWISE_OPS),
        "elementwise_bytes": sum(written[n] for n in ELEMENTWISE_OPS),
        "copy_share": sum(self_ms[n] for n in COPY_OPS) / total,
        "elementwise_share": sum(self_ms[n] for n in ELEMENTWISE_OPS) / total,
        "self_ms": total,
        "addmm_ms": self_ms.get("aten::addmm", 0.0),
    }
    return rows, copy_rows, totals


def measure(args: argparse.Namespace, name: str, flops: float, by_op: dict[str, float]) -> None:
    """Peak, MFU and the profile of one step in dtype `name`, printed as markdown."""
    from torch.profiler import ProfilerActivity, profile

    dtype = DTYPES[name]
    torch.manual_seed(0)
    model = _model(args).to(dtype)
    inputs = _inputs(args, dtype)
    product, n = _matmul(dtype), PEAK_SIZE
    with torch.no_grad():
        product(), model(**inputs)  # warm-up
        products, seconds = [], []
        for _ in range(args.repeats):
            products.append(_timed(product))
            seconds.append(_timed(lambda: model(**inputs)))
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, profile_memory=True) as prof:
            labelled_step(model, inputs)
    peak, step = 2 * n**3 / min(products), min(seconds)
    rows, copy_rows, totals = profile_tables(prof)
    linear = by_op.get("addmm", 0.0) + by_op.get("mm", 0.0)
    print(f"\n### {name}: {torch.get_num_threads()} threads, {args.layers} layer pairs, latents 2x4x{args.frames}x{args.size}x{args.size}, {CAPTION_TOKENS} caption tokens\n")
    print(f"seconds per step: {', '.join(f'{s:.2f}' for s in seconds)}; per 4096^3 product: {', '.join(f'{s:.2f}' for s in products)}\n")
    print("| matmul peak (TFLOP/s) | model GFLOPs / step | of which linear | seconds / step (best) | achieved TFLOP/s | MFU | linear layers' own TFLOP/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    own = linear / (totals["addmm_ms"] / 1e3) / 1e12 if totals["addmm_ms"] else float("nan")
    print(f"| {peak / 1e12:.3f} | {flops / 1e9:.1f} | {linear / flops:.1%} | {step:.3f} | {flops / step / 1e12:.3f} | {flops / step / peak:.1%} | {own:.3f} |")
    print("\nFLOPs by operator: " + ", ".join(f"{op} {n / 1e9:.1f} G" for op, n in sorted(by_op.items(), key=lambda kv: -kv[1])))
    print(
        f"\nProfiled step: {totals['self_ms']:.0f} ms self CPU; copies {totals['copies']} calls, {totals['copy_bytes'] / 2**20:.1f} MiB, "
        f"{totals['copy_share']:.1%} of the time; element-wise kernels {totals['elementwise']} calls, "
        f"{totals['elementwise_bytes'] / 2**20:.1f} MiB written, {totals['elementwise_share']:.1%} of the time\n"
    )
    print("| operator | calls | self CPU ms | share | MiB written |")
    print("|---|---:|---:|---:|---:|")
    for op, n, ms, share, nbytes in rows[: args.top]:
        print(f"| `{op}` | {n} | {ms:.1f} | {share:.1%} | {'' if nbytes is None else f'{nbytes / 2**20:.1f}'} |")
    print("\n| copy from | calls | MiB written |")
    print("|---|---:|---:|")
    for origin, n, nbytes in copy_rows:
        print(f"| {origin} | {n} | {nbytes / 2**20:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--dtype", default="bf16,fp32", help="comma-separated: bf16, fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    names = [n.strip() for n in args.dtype.split(",") if n.strip()]
    unknown = [n for n in names if n not in DTYPES]
    if unknown or not names:
        parser.error(f"--dtype takes {', '.join(DTYPES)}, not {','.join(unknown) or 'nothing'}")
    if args.threads:
        torch.set_num_threads(args.threads)
    flops, by_op = step_flops(args)
    for name in names:
        measure(args, name, flops, by_op)


if __name__ == "__main__":
    main()
