"""LoRA against full fine-tuning (benchmarks/README.md, "lora.py").

`python benchmarks/lora.py released`: trainable parameters and their training state (fp32
gradients and two AdamW moments, plus the fp32 adapter weights) of the released v1.1.0
transformer, built on the meta device, for ranks 16-128 and each `--lora-targets` set (and `text`:
the T5-XXL encoder's).

`python benchmarks/lora.py cpu DATA`: `osp t2v train` on `builtin:shapes` (17x64x64 clips of the
shapes world, e.g. from `osp data synth -n 16 -o DATA`, batch 8, latents and T5 states cached, one
thread), full fine-tuning and ranks 4, 16 and 64: CPU seconds per step (a 65-step run less a
5-step run, over 60: start-up and caching cancel; CPU time, not wall time, because the machine's
cores are shared), the peak resident memory of the run, and the adapter's size.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

RANKS = (16, 32, 64, 128)
TARGETS = ("spatial", "temporal", "cross", "all")


def released() -> None:
    import torch

    from osp_core.models.latte_t2v import LatteT2V
    from osp_core.models.lora import target_modules

    with torch.device("meta"):
        model = LatteT2V()  # the defaults are the released config
    total = sum(p.numel() for p in model.parameters())
    print(f"full fine-tuning: {total / 1e6:.1f} M trainable, {total * 16 / 2**30:.2f} GiB of weights + gradients + AdamW states\n")
    # `text`: the T5-XXL encoder the released model reads captions with (DeepFloyd/t5-v1_1-xxl's config)
    from transformers import T5Config, T5EncoderModel

    from osp_core.pipelines.lora_inputs import TEXT_PATTERN

    with torch.device("meta"):
        encoder = T5EncoderModel(T5Config(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu", vocab_size=32128))
    sets = [(targets, target_modules(model, targets)) for targets in TARGETS] + [("text (T5-XXL encoder)", target_modules(encoder, TEXT_PATTERN))]
    print("| targets | projections | " + " | ".join(f"rank {r}" for r in RANKS) + " |")
    print("|---|---:|" + "---:|" * len(RANKS))
    for label, modules in sets:
        cells = []
        for rank in RANKS:
            params = sum(rank * (m.in_features + m.out_features) for m in modules.values())
            cells.append(f"{params / 1e6:.1f} M, {params * 16 / 2**20:.0f} MiB")
        print(f"| {label} | {len(modules)} | " + " | ".join(cells) + " |")


def _train(data: Path, out: Path, steps: int, lora: int | None) -> tuple[float, int]:
    """(CPU seconds, peak resident KiB) of one `osp t2v train` run in a child process."""
    command = [
        sys.executable, "-m", "osp_cli", "t2v", "train", "--data", str(data / "data.txt"), "--model", "builtin:shapes", "--pretrained", "17x64x64",
        "--frames", "17", "--stride", "1", "--size", "64", "--batch-size", "8", "--max-steps", str(steps), "--checkpoint-every", "1000",
        "--cache-dir", str(data / "cache"), "--set", "data.random_start=false", "--set", "model.max_text_tokens=32", "--set", "run.num_workers=0",
        "--report-to", "none", "-o", str(out), "--overwrite", *(["--lora", str(lora)] if lora else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); u = resource.getrusage(resource.RUSAGE_CHILDREN); print(u.ru_utime + u.ru_stime, u.ru_maxrss)"
    seconds, peak = subprocess.run([sys.executable, "-c", script, *command], env=env, capture_output=True, text=True, check=True).stdout.split()
    return float(seconds), int(peak)


def cpu(data: Path) -> None:
    _train(data, data / "runs" / "warm", 2, None)  # fills the latent and T5 cache
    print("| run | CPU s / step | peak memory (MiB) | adapter file |")
    print("|---|---:|---:|---:|")
    for lora in (None, 4, 16, 64):
        name = f"rank {lora}" if lora else "full fine-tuning"
        short, _ = _train(data, data / "runs" / f"{lora}-short", 5, lora)
        long, peak = _train(data, data / "runs" / f"{lora}-long", 65, lora)
        adapter = data / "runs" / f"{lora}-long" / "lora" / "adapter_model.safetensors"
        size = f"{adapter.stat().st_size / 2**20:.2f} MiB" if lora else "(the transformer: 9.08 MiB)"
        print(f"| {name} | {(long - short) / 60:.3f} | {peak / 1024:.0f} | {size} |")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    {"released": lambda: released(), "cpu": lambda: cpu(Path(sys.argv[2]))}[sys.argv[1]]()
