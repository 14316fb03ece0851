"""`torchrun ... osp t2v train --strategy fsdp [--sequence-parallel N]`: real 2-rank CPU runs
(gloo) of the CLI against the 1-process run with the same global batch, resumes across rank
counts, a SIGKILL in the middle of a checkpoint, and the consolidated model in `osp t2v sample`.
Every run keeps an EMA (sharded like the weights): model_ema/ is compared as model/ is.

Tolerances, as docs/multi-device.md states them: 1e-6 relative on each step's loss, 5e-6 on the final
weights (max difference over a tensor, relative to the tensor's largest value or 1); measured:
losses 1e-7, weights 1.3e-6. The runs use Adam eps 1e-6 rather than the default 1e-8: the key
biases of attention get an exactly-zero gradient in exact arithmetic (softmax ignores a shift
shared by every key), so what they get is float rounding, which Adam with a tiny eps turns into
full learning-rate steps of either sign, whatever the parallel layout (with 1e-8 the weights
differ by up to 1.0e-4 relative, the losses still by 1e-7: measured, stated in docs/multi-device.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .helpers import run_module

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
LOSS_TOLERANCE = 1e-6
WEIGHT_TOLERANCE = 5e-6


def _common(clips: Path, repo: Path) -> list[str]:
    return [
        "--preset", "debug", "--data", str(clips), "--model", str(repo), "--pretrained", "tiny", "--text-encoder", str(repo),
        "--max-steps", "5", "--checkpoint-every", "3", "--set", "run.keep_last=0", "--set", "optim.eps=1e-6",
        "--ema", "--set", "run.ema_decay=0.5", "--json",
    ]  # fmt: skip


def _launcher(ranks: int) -> list[str] | None:
    return [TORCHRUN, "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else None


def train(clips: Path, repo: Path, out: Path, ranks: int, *extra: str) -> subprocess.CompletedProcess:
    proc = run_module("osp_cli.t2v_train", *_common(clips, repo), "-o", str(out), *extra, launcher=_launcher(ranks))
    return proc


def _step(out: Path, step: int = 5) -> Path:
    return out / "checkpoints" / f"step-{step:08d}"


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The consolidated model/ and model_ema/ tensors, keyed 'folder/name'."""
    from safetensors.torch import load_file

    out = {}
    for folder in ("model", "model_ema"):
        out.update({f"{folder}/{k}": v for k, v in load_file(str(checkpoint / folder / "diffusion_pytorch_model.safetensors")).items()})
    return out


def _losses(checkpoint: Path) -> list[float]:
    return json.loads((checkpoint / "trainer_state.json").read_text())["loss_history"]


def assert_follows(reference: Path, other: Path, step: int = 5) -> tuple[float, float]:
    """Losses and final weights of `other` within the tolerances of `reference`; returns the worst of each."""
    a, b = _losses(_step(reference, step)), _losses(_step(other, step))
    assert len(a) == len(b) == step
    loss_error = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    wa, wb = _weights(_step(reference, step)), _weights(_step(other, step))
    assert set(wa) == set(wb)
    weight_error = max(float((wa[k] - wb[k]).abs().max()) / max(1.0, float(wa[k].abs().max())) for k in wa)
    assert loss_error < LOSS_TOLERANCE and weight_error < WEIGHT_TOLERANCE, (loss_error, weight_error)
    return loss_error, weight_error


@pytest.fixture(scope="module")
def runs(clips, tiny_repo, tmp_path_factory) -> dict[str, Path]:
    """The 1-process run (batch 2, fsdp on one process) and the 2-rank FSDP2 run (batch 1 per
    rank): the same global batch of 2, checkpoints at steps 3 and 5."""
    root = tmp_path_factory.mktemp("fsdp_runs")
    one = train(clips, tiny_repo, root / "one", 1, "--batch-size", "2", "--strategy", "fsdp")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "nothing to shard" in one.stderr  # the note of fsdp on one process
    # validation samples: rank 0 samples from the gathered (EMA) weights
    two = train(clips, tiny_repo, root / "two", 2, "--batch-size", "1", "--strategy", "fsdp", "--validate-every", "5")
    assert two.returncode == 0, two.stderr[-3000:]
    return {"one": root / "one", "two": root / "two", "two_stderr": two.stderr}  # type: ignore[dict-item]


def test_fsdp_on_two_ranks_follows_one_process(runs):
    summary = json.loads((runs["two"] / "summary.json").read_text())
    assert summary["parallel"] == {"strategy": "fsdp", "world_size": 2, "data_parallel": 2, "sequence_parallel": 1, "replicate": 1}
    assert summary["samples_seen"] == 10 and summary["global_batch"] == 2
    # each rank wrote its own shard files
    assert len(list((_step(runs["two"]) / "dcp").glob("*.distcp"))) == 2
    assert [p.name for p in (runs["two"] / "samples" / "step-00000005").glob("*.mp4")] == ["00.mp4"]
    assert_follows(runs["one"], runs["two"])


def test_sequence_parallel_equals_no_sequence_parallel(runs, clips, tiny_repo, tmp_path):
    # the same global batch of 2 samples, each one's tokens over 2 ranks (DSP); activations of
    # every block recomputed in backward (which must not change the numbers either)
    proc = train(
        clips, tiny_repo, tmp_path / "sp", 2, "--batch-size", "2", "--strategy", "fsdp", "--sequence-parallel", "2", "--set", "parallel.activation_checkpointing=1"
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "sp" / "summary.json").read_text())["parallel"]["sequence_parallel"] == 2
    assert_follows(runs["one"], tmp_path / "sp")


def test_a_sequence_parallel_layout_resumes_another(runs, clips, tiny_repo, tmp_path):
    # the 2-rank data-parallel run's step 3, continued on the same 2 ranks as one sequence-parallel
    # group (data parallel 2 -> sequence parallel 2; the same global batch of 2)
    proc = train(clips, tiny_repo, tmp_path / "dp_to_sp", 2, "--batch-size", "2", "--strategy", "fsdp", "--sequence-parallel", "2", "--resume", str(_step(runs["two"], 3)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["steps_this_run"] == 2 and summary["parallel"]["sequence_parallel"] == 2 and summary["parallel"]["data_parallel"] == 1
    assert_follows(runs["two"], tmp_path / "dp_to_sp")


def test_resume_across_rank_counts_continues_the_straight_run(runs, clips, tiny_repo, tmp_path):
    # 2 ranks -> 1: the 2-rank run's step-3 checkpoint finished on one process
    proc = train(clips, tiny_repo, tmp_path / "to_one", 1, "--batch-size", "2", "--strategy", "fsdp", "--resume", str(_step(runs["two"], 3)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["steps_this_run"] == 2
    assert_follows(runs["two"], tmp_path / "to_one")
    # 1 -> 2 ranks
    proc = train(clips, tiny_repo, tmp_path / "to_two", 2, "--batch-size", "1", "--strategy", "fsdp", "--resume", str(_step(runs["one"], 3)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_follows(runs["one"], tmp_path / "to_two")


def _rank_processes(launcher: subprocess.Popen) -> list:
    import psutil

    return [p for p in psutil.Process(launcher.pid).children(recursive=True) if "osp_cli.t2v_train" in " ".join(p.cmdline())]


KILL_TRIES = 5


def _kill_a_rank(args: list[str], env: dict[str, str], moment_reached) -> subprocess.Popen:
    """Launch `args` (torchrun, 2 ranks), SIGKILL the rank with the higher pid as soon as
    `moment_reached()` is true, and wait for the launcher to end."""
    import os
    import signal

    launcher = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    ranks: list = []
    while len(ranks) < 2 and time.monotonic() < deadline and launcher.poll() is None:
        ranks = _rank_processes(launcher)
        time.sleep(0.05)
    assert len(ranks) == 2, "torchrun did not start 2 ranks"
    victim = max(p.pid for p in ranks)  # found beforehand: the kill follows the moment at once
    while time.monotonic() < deadline and launcher.poll() is None:
        if moment_reached():
            os.kill(victim, signal.SIGKILL)
            break
        time.sleep(0.001)
    launcher.communicate(timeout=240)
    return launcher


@pytest.mark.parametrize("moment", ["checkpoint", pytest.param("step", marks=pytest.mark.slow)])
def test_sigkill_of_a_rank_then_resume_is_bit_identical(moment, runs, clips, tiny_repo, tmp_path):
    """Rank 1 is SIGKILLed while the step-2 checkpoint is being written ("checkpoint": the run
    ends with its temporary folder never renamed; tried again until a kill lands there) or right
    after it completed, in step 3 ("step")."""
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for attempt in range(KILL_TRIES):
        out = tmp_path / f"killed{attempt}"
        tmp_folder = out / "checkpoints" / ".step-00000002.tmp"
        args = [*_launcher(2), "-m", "osp_cli.t2v_train", *_common(clips, tiny_repo), "-o", str(out), "--batch-size", "1", "--strategy", "fsdp", "--checkpoint-every", "1"]
        launcher = _kill_a_rank(args, env, tmp_folder.exists if moment == "checkpoint" else _step(out, 2).exists)
        assert launcher.returncode != 0
        # landed in the write: rank 0 never renamed the folder (it waits for every rank first)
        landed = tmp_folder.exists() and not _step(out, 2).exists() if moment == "checkpoint" else _step(out, 2).exists()
        if landed:
            break
    assert landed, f"no kill landed in the step-2 {moment} in {KILL_TRIES} tries"
    assert not (out / "summary.json").exists()
    done = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert done and "step-00000005" not in done  # stopped mid-run, with complete checkpoints only
    assert all((out / "checkpoints" / name / "trainer_state.json").is_file() for name in done)
    proc = train(clips, tiny_repo, out, 2, "--batch-size", "1", "--strategy", "fsdp", "--checkpoint-every", "1", "--resume", "latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list((out / "checkpoints").glob(".step-*.tmp"))  # the killed checkpoint's leftovers are gone
    straight, resumed = _weights(_step(runs["two"])), _weights(_step(out))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert _losses(_step(runs["two"])) == _losses(_step(out))


def test_a_truncated_or_corrupt_shard_is_named_and_latest_falls_back(runs, clips, tiny_repo, tmp_path, osp_in_process):
    """A DCP shard whose size is not the one recorded at save time: --resume PATH refuses it in
    one line naming the file, --resume latest takes the next older checkpoint with a warning
    naming it (the check runs on every rank before any loads: here one process resumes the
    2-rank run, without --strategy)."""
    import os
    import shutil

    from tests.conftest import assert_one_line_error

    out = tmp_path / "run"
    shutil.copytree(runs["two"], out)
    truncated = _step(out) / "dcp" / "__1_0.distcp"
    os.truncate(truncated, truncated.stat().st_size // 2)
    args = ("t2v", "train", *_common(clips, tiny_repo), "-o", str(out), "--batch-size", "2", "--strategy", "fsdp")
    assert_one_line_error(osp_in_process(*args, "--resume", str(_step(out))), str(truncated), "unreadable", "another checkpoint")
    proc = train(clips, tiny_repo, out, 1, "--batch-size", "2", "--resume", "latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning") and str(truncated) in line]
    assert len(warnings) == 1 and "step-00000003" in warnings[0], proc.stderr[-3000:]
    assert json.loads(proc.stdout)["steps_this_run"] == 2
    assert_follows(runs["two"], out)
    extended = _step(out, 3) / "dcp" / "__0_0.distcp"
    os.truncate(extended, extended.stat().st_size + 1000)  # as `truncate -s` to a larger size
    assert_one_line_error(osp_in_process(*args, "--resume", str(_step(out, 3))), str(extended), "unreadable")
    proc = train(clips, tiny_repo, out, 2, "--batch-size", "2", "--strategy", "fsdp", "--resume", str(_step(out, 3)))  # under torchrun
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and str(extended) in errors[0], proc.stderr[-3000:]  # said once, by rank 0
    assert "EOFError" not in proc.stderr and "osp_core" not in proc.stderr  # no traceback of ours (torchrun adds its own report)


def test_the_consolidated_model_samples(runs, osp_in_process, tmp_path):
    checkpoint = _step(runs["two"])
    repo = Path(json.loads((checkpoint / "trainer_state.json").read_text())["config"]["model"]["model"])
    for folder in ("model", "model_ema"):
        proc = osp_in_process(
            "t2v", "sample", "a gradient", "--model", str(repo), "--transformer", str(checkpoint / folder), "--frames", "5", "--height", "32",
            "--width", "32", "--steps", "4", "--seed", "1", "-o", str(tmp_path / folder),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert len(list((tmp_path / folder).glob("*.mp4"))) == 1


@pytest.mark.slow
def test_four_ranks_two_data_by_two_sequence_parallel_follow_one_process(runs, clips, tiny_repo, tmp_path):
    proc = train(clips, tiny_repo, tmp_path / "four", 4, "--batch-size", "1", "--strategy", "fsdp", "--sequence-parallel", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "four" / "summary.json").read_text())["parallel"]["data_parallel"] == 2
    assert_follows(runs["one"], tmp_path / "four")


@pytest.mark.slow
def test_sharded_ema_and_weights_match_a_ddp_run(runs, clips, tiny_repo, tmp_path):
    """The 1-process DDP route (Accelerate, diffusers' EMAModel) against the 2-rank FSDP2 run
    (sharded EMA): the same weights and average, buffers included."""
    proc = train(clips, tiny_repo, tmp_path / "ddp", 1, "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_follows(tmp_path / "ddp", runs["two"])


@pytest.mark.slow
def test_hsdp_replicate_follows_one_process(runs, clips, tiny_repo, tmp_path):
    # 2 replica groups of 1 shard each: the (replicate x shard) mesh route
    proc = train(clips, tiny_repo, tmp_path / "hsdp", 2, "--batch-size", "1", "--strategy", "fsdp", "--set", "parallel.replicate=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "hsdp" / "summary.json").read_text())["parallel"]["replicate"] == 2
    assert_follows(runs["one"], tmp_path / "hsdp")


@pytest.mark.slow
def test_ddp_with_sequence_parallel_follows_one_process(runs, clips, tiny_repo, tmp_path):
    proc = train(clips, tiny_repo, tmp_path / "ddp_sp", 2, "--batch-size", "2", "--sequence-parallel", "2", "--strategy", "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp_sp" / "summary.json").read_text())
    assert summary["ranks_in_sync"] is True and summary["parallel"]["strategy"] == "ddp"
    # DDP checkpoints hold model/ and model_ema/ as FSDP ones do: compare them the same way
    assert_follows(runs["one"], tmp_path / "ddp_sp")
