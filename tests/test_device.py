"""Device, dtype and backend selection, with a stand-in `torch_npu` (no NPU exists here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from osp_core import device as dev
from osp_core.errors import DeviceError


@pytest.fixture()
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    monkeypatch.setattr(dev.importlib.util, "find_spec", lambda name, *a: None if name == "torch_npu" else object())


FAKE_TORCH_NPU = """
# A stand-in for Huawei's torch_npu: importing it does what the real one does for device
# selection: names the privateuse1 backend "npu" and registers a `torch.npu` module.
import types
import torch

torch.utils.rename_privateuse1_backend("npu")
torch.npu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 1)
"""


def _in_process_with_fake_npu(tmp_path, code: str) -> str:
    """Run `code` in a fresh interpreter that can import the stand-in torch_npu (renaming the
    privateuse1 backend cannot be undone, so it must not happen in the test process)."""
    (tmp_path / "torch_npu").mkdir()
    (tmp_path / "torch_npu" / "__init__.py").write_text(FAKE_TORCH_NPU)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_cpu_when_nothing_else(no_accelerators):
    assert dev.select_device() == torch.device("cpu")
    assert dev.default_dtype("cpu") == torch.float32
    assert dev.distributed_backend("cpu") == "gloo"


def test_cuda_first(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.select_device().type == "cuda"
    assert dev.distributed_backend("cuda") == "nccl"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.default_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dev.default_dtype("cuda") == torch.float16


def test_npu_when_torch_npu_is_installed(tmp_path):
    out = _in_process_with_fake_npu(tmp_path, (
        "import sys, torch\n"
        "from osp_core import device as d\n"
        "assert 'torch_npu' not in sys.modules  # imported lazily, on first use\n"
        "dev = d.select_device()\n"
        "print(dev.type, d.default_dtype(dev), d.distributed_backend(dev), d.select_device('npu:1'), 'torch_npu' in sys.modules)"
    ))  # fmt: skip
    assert out == "npu torch.bfloat16 hccl npu:1 True"


def test_torch_npu_is_not_imported_when_absent(no_accelerators, monkeypatch):
    calls = []
    monkeypatch.setattr(dev.importlib, "import_module", lambda name, *a: calls.append(name))
    assert not dev.npu_available() and calls == []
    assert "torch_npu" not in sys.modules


def test_mps_before_cpu(no_accelerators, monkeypatch):
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.select_device().type == "mps"


def test_overrides_and_errors(no_accelerators):
    assert dev.resolve("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    assert dev.parse_dtype("auto", "cpu") == torch.float32
    with pytest.raises(DeviceError, match="not available"):
        dev.select_device("cuda")
    with pytest.raises(DeviceError, match="torch_npu"):
        dev.select_device("npu")
    with pytest.raises(DeviceError, match="unknown device"):
        dev.select_device("tpu")
    with pytest.raises(DeviceError, match="fp32, fp16, bf16"):
        dev.parse_dtype("int8", "cpu")


def test_training_auto_precision_is_bf16_only_where_it_runs_natively(monkeypatch):
    # a CPU without AMX runs bf16 autocast far slower than fp32 (docs/training.md, "Mixed precision")
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert dev.native_mixed_precision("cpu") == "no"
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert dev.native_mixed_precision("cpu") == "bf16"
    for supported, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert dev.native_mixed_precision("cuda") == expected
    assert dev.native_mixed_precision("mps") == "no"
