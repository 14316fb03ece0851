"""Device, dtype and backend selection, with a stand-in `torch_npu` (no NPU exists here)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from osp_core import device as dev
from osp_core.errors import DeviceError


@pytest.fixture()
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    monkeypatch.setattr(dev.importlib.util, "find_spec", lambda name, *a: None if name == "torch_npu" else object())


@pytest.fixture()
def fake_npu(monkeypatch):
    """A stand-in torch_npu: importing it registers `torch.npu`, as the real one does."""
    module = types.ModuleType("torch_npu")
    imported = []

    def register():
        imported.append(True)
        # The real torch_npu names the privateuse1 backend "npu" (once per process) ...
        if not hasattr(torch, "_osp_test_npu_renamed"):
            torch.utils.rename_privateuse1_backend("npu")
            torch._osp_test_npu_renamed = True
        # ... and registers the torch.npu module.
        monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: True), raising=False)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev.importlib.util, "find_spec", lambda name, *a: object())
    real_import = dev.importlib.import_module

    def import_module(name, *args):
        if name == "torch_npu":
            register()
            return module
        return real_import(name, *args)

    monkeypatch.setattr(dev.importlib, "import_module", import_module)
    return imported


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


def test_npu_when_torch_npu_is_installed(fake_npu):
    assert dev.select_device().type == "npu"
    assert fake_npu, "torch_npu was not imported"
    assert dev.default_dtype("npu") == torch.bfloat16
    assert dev.distributed_backend("npu") == "hccl"
    assert dev.select_device("npu:1") == torch.device("npu:1")


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
