"""Device, dtype and distributed-backend selection: CUDA, Ascend NPU, MPS, CPU.

`torch_npu` is imported lazily and only when installed: importing it registers `torch.npu`.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from .errors import DeviceError, InputError

if TYPE_CHECKING:
    import torch

# names checked without torch, so a misspelt option is refused before torch loads (seconds)
DTYPES: dict[str, str] = {  # --dtype name -> torch attribute
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}
DEVICE_KINDS = ("cuda", "npu", "mps", "cpu")
ATTENTION_BACKENDS = ("sdpa", "math", "flash", "npu")
DEFAULT_BACKEND = "sdpa"


def check_device_name(requested: str | None) -> None:
    """`DeviceError` for a --device that names no known kind (cuda, cuda:N, npu, npu:N, mps, cpu)."""
    if requested and requested.strip().lower().split(":")[0] not in DEVICE_KINDS:
        raise DeviceError(f"unknown device '{requested}'", "use cuda, cuda:N, npu, npu:N, mps or cpu")


def check_dtype_name(name: str | None) -> None:
    """`DeviceError` for a --dtype that is none of fp32/fp16/bf16 (and their long names) or auto."""
    if name is not None and name != "auto" and name.lower() not in DTYPES:
        raise DeviceError(f"unknown dtype '{name}'", "use fp32, fp16, bf16 or auto")


def attention_name(name: str) -> str:
    """`name` lowered when it is auto or one of `ATTENTION_BACKENDS`, else an `InputError`."""
    key = name.strip().lower()
    if key != "auto" and key not in ATTENTION_BACKENDS:
        raise InputError(f"unknown attention backend '{name}'", "use auto, " + ", ".join(ATTENTION_BACKENDS))
    return key


def npu_available() -> bool:
    """True when `torch_npu` is installed and an Ascend NPU is visible."""
    import torch

    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        importlib.import_module("torch_npu")
    except Exception:  # a broken CANN install must not break CPU/GPU users
        return False
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(requested: str | None = None) -> torch.device:
    """The device to run on: `requested` if given, else CUDA, NPU, MPS, CPU in that order."""
    import torch

    check_device_name(requested)
    if requested:
        name = requested.strip().lower()
        kind = name.split(":")[0]
        if kind == "npu":
            if not npu_available():
                raise DeviceError(
                    f"device '{requested}' is not available",
                    "install torch_npu (pip install 'osp[ascend]') on an Ascend machine, or pick --device cpu",
                )
        elif kind == "cuda":
            if not torch.cuda.is_available():
                raise DeviceError(f"device '{requested}' is not available", "no CUDA GPU is visible; use --device cpu")
        elif kind == "mps":
            if not _mps_available():
                raise DeviceError(f"device '{requested}' is not available", "MPS needs Apple silicon; use --device cpu")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if npu_available():
        return torch.device("npu")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on NPU and bf16-capable CUDA, fp16 on older CUDA and MPS, fp32 on CPU."""
    import torch

    kind = torch.device(device).type
    if kind == "npu":
        return torch.bfloat16
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.float32


def parse_dtype(name: str | None, device: torch.device | str) -> torch.dtype:
    """`name` (fp32/fp16/bf16, or None/'auto' for the device default) as a torch dtype."""
    import torch

    check_dtype_name(name)
    if name is None or name == "auto":
        return default_dtype(device)
    return getattr(torch, DTYPES[name.lower()])


def cpu_has_native_bf16() -> bool:
    """The CPU has bf16 matrix tiles (AMX), on which bf16 matmuls run 2-2.5x faster than fp32.
    AVX512-BF16 alone is not enough: there oneDNN's bf16 products run at about half the fp32
    rate (benchmarks/mfu.py, docs/speed-and-memory.md)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def native_mixed_precision(device: torch.device | str) -> str:
    """What training's `mixed_precision: auto` autocasts to on `device`: bf16 where bf16 products
    run natively (NPU, bf16-capable CUDA, CPUs with AMX), else no (fp32). On a CPU without AMX
    bf16 autocast is far slower than fp32, not faster (docs/training.md, "Mixed precision")."""
    import torch

    kind = torch.device(device).type
    if kind == "npu":
        return "bf16"
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if kind == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"


def dtype_name(dtype: torch.dtype) -> str:
    """The short name osp uses for `dtype` (fp32, fp16, bf16)."""
    import torch

    return next(name for name, value in DTYPES.items() if getattr(torch, value) == dtype)


def distributed_backend(device: torch.device | str) -> str:
    """The torch.distributed backend for `device`: nccl, hccl or gloo."""
    import torch

    kind = torch.device(device).type
    return {"cuda": "nccl", "npu": "hccl"}.get(kind, "gloo")


def resolve(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """Device and dtype from user options (None picks the defaults)."""
    dev = select_device(device)
    return dev, parse_dtype(dtype, dev)
