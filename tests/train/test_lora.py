"""`osp t2v train --lora`: adapters learn on a frozen base, checkpoints hold the adapter in PEFT's
format (PEFT and diffusers load it), a SIGKILLed run resumes bit-identically, FSDP2 with sequence
parallel follows 1 process (2 DDP ranks: `test_lora_text`, transformer and text encoder adapters
at once), and the options' refusals that need the model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from osp_core.train.config import T2VTrainConfig, load_config
from osp_core.train.t2v_recipe import T2VRecipe
from osp_core.train.trainer import Trainer
from tests.conftest import assert_one_line_error
from tests.distributed import torchrun

from .helpers import run_module

RANK = 4
KILL_TRIES = 5
# Adam eps as the parallel tests use it (tests/train/test_fsdp.py says why)
# the runs compared below keep prior preservation on (the base repository's captions.txt), so
# resume and rank-count equality cover its draws too
SETTINGS = {"run.max_steps": 4, "run.checkpoint_every": 1, "run.keep_last": 0, "run.deterministic": True, "optim.eps": 1e-6, "lora.rank": RANK, "lora.alpha": 8.0, "lora.preserve_captions": "model"}
PRESERVED = ["a red ball rolls left", "a blue cube falls", "a white star spins"]


@pytest.fixture(scope="module", autouse=True)
def _repo_captions(tiny_repo):
    """The tiny repository's own captions (`--lora-preserve model` reads them)."""
    (tiny_repo / "captions.txt").write_text("\n".join(PRESERVED) + "\n")


def _args(clips: Path, repo: Path, out: Path, *extra: str) -> list[str]:
    """The command line of `SETTINGS` (what the kill and 2-rank runs launch)."""
    return [
        "--preset", "debug", "--data", str(clips), "--model", str(repo), "--pretrained", "tiny", "--text-encoder", str(repo), "-o", str(out),
        "--max-steps", "4", "--checkpoint-every", "1", "--set", "run.keep_last=0", "--deterministic", "--set", "optim.eps=1e-6",
        "--lora", str(RANK), "--lora-alpha", "8", "--lora-preserve", "model", *extra,
    ]  # fmt: skip


def _config(data: Path, repo: Path, out: Path, **extra):
    overrides = {"data.data": str(data), "run.output_dir": str(out), "model.model": str(repo), "model.pretrained": "tiny", "model.text_encoder": str(repo), **SETTINGS, **extra}
    return load_config(T2VTrainConfig, "debug", overrides, group="t2v")


def _run(cfg) -> tuple[dict, Trainer]:
    trainer = Trainer(cfg, T2VRecipe(cfg), reporter=lambda event, payload: None)
    return trainer.train(), trainer


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def straight(clips, tiny_repo, tmp_path_factory):
    """The reference LoRA run: 4 steps of batch 2 in this process, a checkpoint every step."""
    out = tmp_path_factory.mktemp("lora") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command-line runs compared with it (set up before the per-test fixture that does this)
    try:
        summary, trainer = _run(_config(clips, tiny_repo, out, **{"run.batch_size": 2}))
    finally:
        torch.set_num_threads(threads)
    return out, summary, trainer


def _losses(checkpoint: Path) -> list[float]:
    return json.loads((checkpoint / "trainer_state.json").read_text())["loss_history"]


def test_the_base_stays_frozen_and_only_the_adapter_trains(straight, tiny_repo):
    out, summary, trainer = straight
    base = load_file(str(tiny_repo / "tiny" / "diffusion_pytorch_model.safetensors"))
    weights = {name.replace(".base_layer.", "."): p for name, p in trainer.inner.state_dict().items() if ".lora_" not in name}
    assert set(weights) == set(base)
    assert all(torch.equal(weights[k], base[k]) for k in base)  # bitwise unchanged
    trained = [p for name, p in trainer.inner.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in name for name, p in trainer.inner.named_parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in trainer.optimizers[0].param_groups) == len(trained)
    # the adapters moved away from their start (B = 0)
    adapter = _adapter(out / "lora")
    assert all(adapter[k].abs().max() > 0 for k in adapter if ".lora_B." in k)
    # checkpoints hold the adapter and the trainer state, not the frozen transformer
    last = Path(summary["checkpoint"])
    assert sorted(p.name for p in last.iterdir()) == ["accelerate", "adapter", "trainer_state.json"]
    assert sorted(p.name for p in (out / "lora").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert all(torch.equal(adapter[k], _adapter(last / "adapter")[k]) for k in adapter)


def test_the_adapter_loads_in_peft_and_diffusers(straight, tiny_repo):
    from peft import PeftModel, set_peft_model_state_dict

    from osp_core.models.latte_t2v import LatteT2V

    out, _, trainer = straight
    torch.manual_seed(0)
    x, t, captions = torch.randn(1, 4, 2, 4, 4), torch.tensor([500]), torch.randn(1, 16, 16)
    trained = trainer.inner.eval()
    expected = trained(x, t, captions, return_dict=False)[0]

    def base():
        # the base as the run built it (sized for its clips), with the repository's weights
        model = LatteT2V.from_config(dict(trained.config))
        model.load_state_dict(load_file(str(tiny_repo / "tiny" / "diffusion_pytorch_model.safetensors")))
        return model.eval()

    peft = PeftModel.from_pretrained(base(), str(out / "lora")).eval()
    assert peft.peft_config["default"].r == RANK and peft.peft_config["default"].lora_alpha == 8.0
    torch.testing.assert_close(peft(x, t, captions, return_dict=False)[0], expected, rtol=0, atol=0)
    diffusers = base()
    diffusers.load_lora_adapter(str(out / "lora"), prefix="base_model.model", weight_name="adapter_model.safetensors", adapter_name="mine")
    torch.testing.assert_close(diffusers(x, t, captions, return_dict=False)[0], expected, rtol=0, atol=0)
    # set_peft_model_state_dict into a model given the same adapter layers
    from osp_core.models.lora import add_lora

    model = base()
    add_lora(model, RANK, 8.0, 0.0, "all")
    tensors = {k.removeprefix("base_model.model."): v for k, v in _adapter(out / "lora").items()}
    set_peft_model_state_dict(model, tensors)
    torch.testing.assert_close(model.eval()(x, t, captions, return_dict=False)[0], expected, rtol=0, atol=0)


def test_the_run_adapter_samples_with_osp_t2v_sample(straight, tiny_repo, tmp_path, osp_in_process):
    out, _, _ = straight
    args = ["t2v", "sample", "a gradient", "--model", str(tiny_repo), "--transformer", str(tiny_repo / "tiny"), "--frames", "5", "--height", "32", "--width", "32", "--steps", "4", "--seed", "1", "--json"]
    proc = osp_in_process(*args, "-o", str(tmp_path / "videos"), "--lora", f"{out / 'lora'}:0.5")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)["videos"][0]
    assert record["models"]["lora"][0]["scale"] == 0.5 and record["models"]["lora"][0]["path"] == str((out / "lora").absolute())


def test_loss_goes_down_on_a_fixed_batch(one_clip, tiny_repo, tmp_path):
    from peft import PeftModel

    from osp_core.models.latte_t2v import LatteT2V

    from .test_t2v_trainer import _fixed_eval_loss

    extra = {"run.max_steps": 30, "run.checkpoint_every": 100, "run.deterministic": False, "data.random_start": False, "diffusion.text_dropout": 0.0, "optim.lr": 1e-2, "lora.rank": 8}
    summary, trainer = _run(_config(one_clip, tiny_repo, tmp_path, **extra))
    recipe = trainer.recipe
    batch = recipe.collate([recipe.dataset()[0]])
    start = LatteT2V.from_pretrained(str(tiny_repo / "tiny")).eval()
    adapted = PeftModel.from_pretrained(LatteT2V.from_pretrained(str(tiny_repo / "tiny")), str(tmp_path / "lora")).eval()
    before, after = _fixed_eval_loss(recipe, start, batch), _fixed_eval_loss(recipe, adapted, batch)
    assert after < 0.9 * before, (before, after)


def test_sigkill_then_resume_is_bit_identical(straight, clips, tiny_repo, tmp_path):
    """The CLI run is SIGKILLed once its step-2 checkpoint is complete; --resume latest finishes
    it with the adapter, losses and OUTPUT/lora/ of the uninterrupted run."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for attempt in range(KILL_TRIES):  # a kill can come too late for a run of 4 tiny steps: try again
        out = tmp_path / f"killed{attempt}"
        args = _args(clips, tiny_repo, out, "--batch-size", "2")
        proc = subprocess.Popen([sys.executable, "-m", "osp_cli.t2v_train", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        marker = out / "checkpoints" / "step-00000002" / "trainer_state.json"
        deadline = time.monotonic() + 240
        while not marker.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if proc.returncode == -signal.SIGKILL and not (out / "summary.json").exists():
            break
    assert proc.returncode == -signal.SIGKILL and not (out / "summary.json").exists(), f"no kill landed before the end in {KILL_TRIES} tries"
    assert not (out / "lora").exists()
    resumed = run_module("osp_cli.t2v_train", *args, "--batch-size", "2", "--resume", "latest", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["steps_this_run"] < 4
    reference, _, _ = straight
    a, b = _adapter(reference / "lora"), _adapter(out / "lora")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(reference / "checkpoints" / "step-00000004") == _losses(out / "checkpoints" / "step-00000004")


@pytest.mark.distributed
def test_fsdp_with_sequence_parallel_follows_one_process(straight, clips, tiny_repo, tmp_path):
    """FSDP2 with the frozen base (its shards are not checkpointed: the run rebuilds them) and
    each sample's tokens over 2 ranks: the same numbers, and validation samples from the
    gathered adapters."""
    out = tmp_path / "fsdp"
    proc = run_module("osp_cli.t2v_train", *_args(clips, tiny_repo, out, "--batch-size", "2", "--strategy", "fsdp", "--sequence-parallel", "2", "--validate-every", "4"), launcher=torchrun(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parallel"]["strategy"] == "fsdp" and summary["parallel"]["sequence_parallel"] == 2
    last = out / "checkpoints" / "step-00000004"
    assert sorted(p.name for p in last.iterdir()) == ["adapter", "dcp", "rng", "trainer_state.json"]
    from osp_core.train.checkpoint import _dcp_reader

    saved = [k for k in _dcp_reader(last / "dcp").read_metadata().state_dict_metadata if k.startswith("model.")]
    assert any(".lora_A." in k for k in saved) and not any(".base_layer." in k for k in saved)  # no frozen shards
    assert [p.name for p in (out / "samples" / "step-00000004").glob("*.mp4")] == ["00.mp4"]
    reference, _, _ = straight
    one, two = _losses(reference / "checkpoints" / "step-00000004"), _losses(last)
    assert max(abs(x - y) / abs(x) for x, y in zip(one, two)) < 1e-6
    a, b = _adapter(reference / "lora"), _adapter(out / "lora")
    assert max(float((a[k] - b[k]).abs().max()) / max(1.0, float(a[k].abs().max())) for k in a) < 5e-6


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (("--lora-targets", r"nothing\.here"), ("--lora-targets", "matches no module")),
        (("--lora-targets", "proj_out|pos_embed.proj"), ("not a linear projection",)),
        (("--lora", "17"), ("--lora 17 is above the width", "--lora 16 or less")),
        (("--lora-preserve", "nothing.txt"), ("prompt file 'nothing.txt' does not exist",)),
        (("--set", "lora.preserve_weight=0"), ("lora.preserve_weight must be a finite number above 0",)),
    ],
)
def test_options_that_need_the_model_are_one_line_before_weights_load(extra, needles, clips, tiny_repo, tmp_path, monkeypatch, osp_in_process):
    monkeypatch.setattr(T2VRecipe, "build", lambda self, accelerator: pytest.fail("a model loaded"))
    args = ["t2v", "train", *_args(clips, tiny_repo, tmp_path / "run")]
    proc = osp_in_process(*args, *extra)
    assert_one_line_error(proc, *needles, code=2)
    assert not (tmp_path / "run").exists()


def test_prior_preservation_pulls_toward_the_frozen_base(straight):
    """The term is exactly 0 while the adapters change nothing (B = 0) and positive once they
    do; its captions come from the repository's captions.txt."""
    _, _, trainer = straight
    recipe = trainer.recipe
    assert recipe.preserve == PRESERVED
    batch = recipe.collate([recipe.dataset()[0], recipe.dataset()[1]])
    latents = recipe._inputs(batch)[0]
    with torch.no_grad():
        trained = float(recipe._preservation(batch, latents, 0))
    lora_b = [p for name, p in recipe.model.named_parameters() if ".lora_B." in name]
    saved = [p.detach().clone() for p in lora_b]
    with torch.no_grad():
        for p in lora_b:
            p.zero_()
    try:
        with torch.no_grad():
            assert float(recipe._preservation(batch, latents, 0)) == 0.0
    finally:
        with torch.no_grad():
            for p, value in zip(lora_b, saved):
                p.copy_(value)
    assert trained > 0.0


def test_preserve_captions_bad_input(tmp_path):
    from osp_core.errors import InputError
    from osp_core.train.plan import preserve_captions

    cfg = load_config(T2VTrainConfig, "debug", {"lora.rank": 4, "lora.preserve_captions": "model"}, group="t2v")
    with pytest.raises(InputError, match="ships no captions.txt"):
        preserve_captions(cfg, tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n")
    for source, needle in ((str(tmp_path / "missing.txt"), "does not exist"), (str(empty), "has no prompts"), (str(tmp_path), "is a directory")):
        cfg = load_config(T2VTrainConfig, "debug", {"lora.rank": 4, "lora.preserve_captions": source}, group="t2v")
        with pytest.raises(InputError, match=needle):
            preserve_captions(cfg, None)


def test_validation_samples_with_the_adapters(straight, tmp_path):
    _, _, trainer = straight
    out = trainer.recipe.validate(4, tmp_path / "samples")
    assert [Path(p).name for p in out["samples"]] == ["00.mp4"] and (tmp_path / "samples" / "00.mp4").stat().st_size > 0


def test_resuming_with_another_rank_or_without_lora_is_one_line(straight, clips, tiny_repo, tmp_path, osp_in_process):
    import shutil

    reference, _, _ = straight
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    proc = osp_in_process("t2v", "train", *_args(clips, tiny_repo, out, "--max-steps", "5", "--resume", "latest", "--lora", "2"))
    assert_one_line_error(proc, "another LoRA rank", "lora_A", code=3)
    for extra, needles in ((("--lora-alpha", "16"), ("--lora-alpha 8,", "asks for 16")), (("--lora-dropout", "0.1"), ("--lora-dropout 0,", "asks for 0.1"))):
        proc = osp_in_process("t2v", "train", *_args(clips, tiny_repo, out, "--max-steps", "5", "--resume", "latest", *extra))
        assert_one_line_error(proc, *needles, code=3)
    args = _args(clips, tiny_repo, out, "--max-steps", "5", "--resume", "latest")
    for flag in ("--lora", "--lora-alpha"):  # the flag and its value
        del args[args.index(flag) : args.index(flag) + 2]
    proc = osp_in_process("t2v", "train", *args)
    assert_one_line_error(proc, "--lora-preserve without --lora", code=2)
    del args[args.index("--lora-preserve") : args.index("--lora-preserve") + 2]
    proc = osp_in_process("t2v", "train", *args)
    assert_one_line_error(proc, "holds a LoRA adapter, not the whole transformer", "--lora", code=3)
    (out / "summary.json").unlink()
    shutil.rmtree(out / "checkpoints" / "step-00000004" / "adapter")
    proc = osp_in_process("t2v", "train", *_args(clips, tiny_repo, out, "--max-steps", "5", "--resume", str(out / "checkpoints" / "step-00000004")))
    assert_one_line_error(proc, "holds no LoRA adapter", code=3)
