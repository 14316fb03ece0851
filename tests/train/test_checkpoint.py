"""Checkpoints: atomic folders, keep-last-K, `latest`, diffusers-format model/."""

from __future__ import annotations

import pytest
import torch

from osp_core.errors import InputError
from osp_core.train.checkpoint import CheckpointManager, list_checkpoints


@pytest.fixture()
def setup(tmp_path):
    from accelerate import Accelerator
    from diffusers.models.modeling_utils import ModelMixin
    from diffusers.configuration_utils import ConfigMixin, register_to_config

    class Tiny(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    accelerator = Accelerator(cpu=True)
    model = Tiny()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer, CheckpointManager(accelerator, tmp_path, keep_last=2), Tiny


def test_keep_last_latest_and_stale_temporaries(setup, tmp_path):
    accelerator, model, optimizer, manager, _ = setup
    for step in (1, 2, 3):
        manager.save(step, model, {"data": {"consumed_per_rank": step}})
    root = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-00000002", "step-00000003"]
    # a run killed while writing leaves a temporary folder (and maybe a folder without its state file)
    (root / ".step-00000004.tmp" / "model").mkdir(parents=True)
    (root / "step-00000009").mkdir()
    assert manager.resolve("latest").name == "step-00000003"
    assert manager.resolve(str(tmp_path)).name == "step-00000003"  # an output folder: its newest
    manager.save(4, model, {"data": {"consumed_per_rank": 4}})
    assert not list(root.glob(".*.tmp"))
    assert manager.resolve("latest").name == "step-00000004"
    assert manager.resolve("") is None
    with pytest.raises(InputError, match="not a complete checkpoint"):
        manager.resolve(str(root / "step-00000009"))


def test_model_is_saved_in_diffusers_format_and_restored(setup, tmp_path):
    accelerator, model, optimizer, manager, cls = setup
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    path = manager.save(7, model, {"data": {"consumed_per_rank": 7}, "note": "x"})
    assert sorted(p.name for p in (path / "model").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert not (path / "accelerate" / "model.safetensors").exists()  # no second copy of the weights
    reloaded = cls.from_pretrained(str(path / "model"))
    assert torch.equal(reloaded.proj.weight, saved["proj.weight"])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    state = manager.load(path, model)
    assert state["step"] == 7 and state["note"] == "x"
    assert torch.equal(model.state_dict()["proj.weight"], saved["proj.weight"])
    assert optimizer.state_dict()["state"][0]["step"] == 1


def test_dcp_metadata_is_read_with_only_dcp_record_types(tmp_path):
    """DCP unpickles a checkpoint's `.metadata`; ours allows only DCP's own records, so a
    folder from elsewhere cannot run code on resume, while a real checkpoint still loads."""
    import pickle
    import warnings

    import torch.distributed.checkpoint as dcp

    from osp_core.train.checkpoint import _dcp_reader

    model = torch.nn.Linear(3, 4).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp_path / "good"))
        restored = {"model": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}}
        dcp.load(restored, storage_reader=_dcp_reader(tmp_path / "good"))
    assert all(torch.equal(restored["model"][k], v) for k, v in model.state_dict().items())

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        _dcp_reader(tmp_path / "evil").read_metadata()
    assert not marker.exists()
