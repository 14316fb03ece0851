"""`--lora-targets ...,text`: adapters on the T5 text encoder beside (or instead of) the
transformer's. The frozen encoder stays bitwise as it was, its adapter is a PEFT folder in
`text_encoder/` that PEFT loads on a T5EncoderModel, a resumed run continues bit-identically, 2
DDP ranks follow 1 process (the encoder's gradients are averaged by hand), prior preservation
holds the preserve captions' videos through the encoder's adapters, and sampling and merging
take the new part."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import assert_one_line_error
from tests.distributed import torchrun

from .helpers import run_module
from .test_lora import _adapter, _args, _config, _losses, _run

TARGETS = "cross,text"


@pytest.fixture(scope="module")
def text_run(clips, tiny_repo, tmp_path_factory):
    """4 steps of batch 2 in this process with transformer and text encoder adapters, prior
    preservation on, a checkpoint every step (as `test_lora`'s reference run)."""
    (tiny_repo / "captions.txt").write_text("a red ball rolls left\na blue cube falls\n")
    out = tmp_path_factory.mktemp("lora_text") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun ranks compared with it
    try:
        summary, trainer = _run(_config(clips, tiny_repo, out, **{"run.batch_size": 2, "lora.targets": TARGETS}))
    finally:
        torch.set_num_threads(threads)
    return out, summary, trainer


def _encoder(repo: Path):
    from transformers import T5EncoderModel

    return T5EncoderModel.from_pretrained(str(repo / "text_encoder")).eval()


def _states(encoder, text: str = "a green ball rolls right") -> torch.Tensor:
    return encoder(torch.tensor([[byte + 3 for byte in text.encode()] + [1]]))[0]  # ByT5: each byte + 3, then </s>


def test_the_encoder_stays_frozen_and_its_adapter_is_a_peft_folder(text_run, tiny_repo):
    from peft import PeftModel

    out, summary, trainer = text_run
    encoder = trainer.recipe.text_encoder
    base = load_file(str(tiny_repo / "text_encoder" / "model.safetensors"))
    weights = {name.replace(".base_layer.", "."): p for name, p in encoder.state_dict().items() if ".lora_" not in name}
    assert set(base) <= set(weights) and all(torch.equal(weights[k], base[k]) for k in base)  # bitwise unchanged
    trained = [name for name, p in encoder.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in name for name in trained)
    assert sum(len(g["params"]) for g in trainer.optimizers[0].param_groups) == len(trained) + sum(p.requires_grad for p in trainer.inner.parameters())
    # the memory check counted what the encoder keeps for backward: per clip its caption, a preserve caption, the empty one
    from osp_core.memory import text_encoder_train_activations

    cfg = trainer.recipe.config
    t5_config = json.loads((tiny_repo / "text_encoder" / "config.json").read_text())
    rows = cfg.run.batch_size * (1 + cfg.data.use_image_num + 2)
    assert trainer.recipe.memory_estimate.parts["text encoder activations"] == text_encoder_train_activations(t5_config, rows, cfg.model.max_text_tokens, torch.float32) > 0
    last = Path(summary["checkpoint"])
    assert sorted(p.name for p in (last / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "text_encoder"]
    assert sorted(p.name for p in (out / "lora" / "text_encoder").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    text = _adapter(out / "lora" / "text_encoder")
    assert all(text[k].abs().max() > 0 for k in text if ".lora_B." in k)  # it moved from B = 0
    peft = PeftModel.from_pretrained(_encoder(tiny_repo), str(out / "lora" / "text_encoder")).eval()
    with torch.no_grad():
        expected = _states(encoder.eval())
        torch.testing.assert_close(_states(peft.base_model.model), expected, rtol=0, atol=0)
        assert not torch.equal(_states(_encoder(tiny_repo)), expected)


def test_resume_continues_bit_identically(text_run, clips, tiny_repo, tmp_path):
    """From the step-2 checkpoint (both adapters and the optimizer's moments) to step 4: the
    adapters and losses of the uninterrupted run."""
    reference, _, _ = text_run
    out = tmp_path / "resumed"
    shutil.copytree(reference, out)
    for later in ("checkpoints/step-00000003", "checkpoints/step-00000004", "lora", "summary.json"):
        (shutil.rmtree if (out / later).is_dir() else Path.unlink)(out / later)
    proc = run_module("osp_cli.t2v_train", *_args(clips, tiny_repo, out, "--batch-size", "2", "--lora-targets", TARGETS, "--resume", "latest", "--json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["steps_this_run"] == 2
    for part in ("", "text_encoder"):
        a, b = _adapter(reference / "lora" / part), _adapter(out / "lora" / part)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), part
    assert _losses(reference / "checkpoints" / "step-00000004") == _losses(out / "checkpoints" / "step-00000004")


@pytest.mark.distributed
def test_two_ddp_ranks_follow_one_process(text_run, clips, tiny_repo, tmp_path):
    """torchrun, 2 CPU ranks of batch 1 against the 1-process run of batch 2: losses within 1e-6,
    both adapters within 5e-6 (the transformer's averaged by DDP, the encoder's by hand)."""
    proc = run_module("osp_cli.t2v_train", *_args(clips, tiny_repo, tmp_path / "two", "--batch-size", "1", "--lora-targets", TARGETS, "--json"), launcher=torchrun(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["ranks_in_sync"] is True
    reference, _, _ = text_run
    one, two = _losses(reference / "checkpoints" / "step-00000004"), _losses(tmp_path / "two" / "checkpoints" / "step-00000004")
    assert max(abs(x - y) / abs(x) for x, y in zip(one, two)) < 1e-6
    for part in ("", "text_encoder"):
        a, b = _adapter(reference / "lora" / part), _adapter(tmp_path / "two" / "lora" / part)
        assert max(float((a[k] - b[k]).abs().max()) / max(1.0, float(a[k].abs().max())) for k in a) < 5e-6, part


def test_preservation_holds_the_videos_through_the_encoder_adapters(text_run):
    """The preservation term is 0 while neither adapter changes anything (both B = 0); with the
    transformer's at 0 and only the encoder's moved it is positive, and its gradient reaches the
    encoder's adapters through the states (the target is the base with the frozen encoder's)."""
    _, _, trainer = text_run
    recipe = trainer.recipe
    batch = recipe.collate([recipe.dataset()[0], recipe.dataset()[1]])
    latents = recipe._inputs(batch)[0].detach()
    every_b = {name: p for name, p in [*recipe.model.named_parameters(), *(("text." + n, q) for n, q in recipe.text_encoder.named_parameters())] if ".lora_B." in name}
    saved = {name: p.detach().clone() for name, p in every_b.items()}
    try:
        with torch.no_grad():
            for p in every_b.values():
                p.zero_()
            assert float(recipe._preservation(batch, latents, 0)) == 0.0
            for name, p in every_b.items():
                if name.startswith("text."):
                    p.copy_(saved[name])
        term = recipe._preservation(batch, latents, 0)
        assert float(term.detach()) > 0.0
        for p in recipe.text_params:
            p.grad = None
        term.backward()
        assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in recipe.text_params)
    finally:
        with torch.no_grad():
            for name, p in every_b.items():
                p.copy_(saved[name])
        for p in recipe.text_params:
            p.grad = None


def test_sampling_applies_the_text_part_and_merge_refuses_it(text_run, tiny_repo, tmp_path, osp_in_process):
    out, _, _ = text_run
    args = ["t2v", "sample", "a gradient", "--model", str(tiny_repo), "--transformer", str(tiny_repo / "tiny"), "--frames", "5", "--height", "32", "--width", "32", "--steps", "4", "--seed", "1", "--json"]
    proc = osp_in_process(*args, "-o", str(tmp_path / "videos"), "--lora", str(out / "lora"))
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)["videos"][0]["models"]["lora"][0]
    assert record["parts"] == ["transformer", "text_encoder"]
    # a text-encoder-only adapter (the folder without the transformer's part) samples too
    only = tmp_path / "only_text"
    shutil.copytree(out / "lora" / "text_encoder", only / "text_encoder")
    proc = osp_in_process(*args, "-o", str(tmp_path / "videos2"), "--lora", str(only))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["videos"][0]["models"]["lora"][0]["parts"] == ["text_encoder"]
    proc = osp_in_process("t2v", "lora", "merge", "--lora", str(out / "lora"), "--model", str(tiny_repo), "--version", "tiny", "-o", str(tmp_path / "merged"))
    assert_one_line_error(proc, "also adapts the text encoder", "--lora PATH", code=2)
    assert not (tmp_path / "merged").exists()


def test_resuming_with_other_text_targets_is_one_line(text_run, clips, tiny_repo, tmp_path, osp_in_process):
    reference, _, _ = text_run
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "summary.json").unlink()
    proc = osp_in_process("t2v", "train", *_args(clips, tiny_repo, out, "--max-steps", "5", "--resume", "latest", "--lora-targets", "cross"))
    assert_one_line_error(proc, "holds an adapter of the text encoder", "--lora-targets", code=3)
    shutil.rmtree(out / "checkpoints" / "step-00000004" / "adapter" / "text_encoder")
    proc = osp_in_process("t2v", "train", *_args(clips, tiny_repo, out, "--max-steps", "5", "--resume", "latest", "--lora-targets", TARGETS))
    assert_one_line_error(proc, "holds no adapter of the text encoder", "--lora-targets", code=3)


def test_text_targets_under_fsdp_are_one_line_before_weights_load(clips, tiny_repo, tmp_path, monkeypatch, osp_in_process):
    from osp_core.train.t2v_recipe import T2VRecipe

    monkeypatch.setattr(T2VRecipe, "build", lambda self, accelerator: pytest.fail("a model loaded"))
    proc = osp_in_process("t2v", "train", *_args(clips, tiny_repo, tmp_path / "run", "--lora-targets", "text", "--strategy", "fsdp"))
    assert_one_line_error(proc, "data parallelism only", "--strategy fsdp", code=2)
    assert not (tmp_path / "run").exists()
