"""Bad parallel training input: one line, non-zero exit, before any weights load; the layout
arithmetic; the shared-output check across ranks; the rank-independent data order."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from osp_core.errors import InputError
from osp_core.train.parallelize import resolve_train_layout

from tests.conftest import assert_one_line_error
from tests.distributed import run_ranks

from .helpers import TINY_T2V


def _args(clips: Path, repo: Path, out: Path, *extra: str, transformer: tuple[str, str] = ("--pretrained", "tiny")) -> list[str]:
    return [
        "t2v", "train", "--preset", "debug", "--data", str(clips), "--model", str(repo), *transformer, "--text-encoder", str(repo),
        "-o", str(out), "--max-steps", "2", "--no-ema", *extra,
    ]  # fmt: skip


def _parallel(strategy="ddp", sp=1, replicate=1):
    return SimpleNamespace(strategy=strategy, sequence_parallel=sp, replicate=replicate)


def test_sequence_parallel_that_does_not_divide_the_world_is_one_line(osp_in_process, clips, tiny_repo, tmp_path, monkeypatch):
    import osp_core.train.t2v_recipe as recipe

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the layout was checked")

    monkeypatch.setattr(recipe, "build_transformer", no_weights)
    proc = osp_in_process(*_args(clips, tiny_repo, tmp_path / "run", "--sequence-parallel", "2"))
    assert_one_line_error(proc, "--sequence-parallel 2 does not divide the 1 process", "torchrun --nproc_per_node 2")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("layout", "world", "needle"),
    [
        (_parallel("fsdp", sp=3), 4, "--sequence-parallel 3 does not divide the 4"),
        (_parallel("zero3"), 2, "--strategy 'zero3'"),
        (_parallel("ddp", replicate=2), 4, "parallel.replicate 2 needs --strategy fsdp"),
        (_parallel("fsdp", replicate=3), 4, "parallel.replicate 3"),
        (_parallel("fsdp"), 2, "--mixed-precision fp16 is not supported with --strategy fsdp"),
    ],
)
def test_layouts_that_cannot_apply_say_why(layout, world, needle):
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace("'", "'")):
        resolve_train_layout(layout, world, 0, mixed_precision="fp16" if "fp16" in needle else "no")


def test_layout_ranks():
    layout = resolve_train_layout(_parallel("fsdp", sp=2), 8, 5)
    assert (layout.dp, layout.dp_rank, layout.sharded) == (4, 2, True)
    assert not resolve_train_layout(_parallel("fsdp"), 1, 0).sharded


def test_resume_across_strategies_and_model_configs_is_one_line(osp_in_process, clips, tiny_repo, tmp_path):
    ddp = osp_in_process(*_args(clips, tiny_repo, tmp_path / "ddp"))
    fsdp = osp_in_process(*_args(clips, tiny_repo, tmp_path / "fsdp", "--strategy", "fsdp"))
    assert ddp.returncode == 0 and fsdp.returncode == 0, (ddp.stderr, fsdp.stderr)
    checkpoint = tmp_path / "fsdp" / "checkpoints" / "step-00000002"
    assert (checkpoint / "dcp" / ".metadata").is_file() and (checkpoint / "model" / "config.json").is_file()

    def refused(proc, *needles):
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
        for needle in needles:
            assert needle in errors[0], errors[0]

    # only an explicit contradiction is refused (without --strategy, the checkpoint's is taken)
    proc = osp_in_process(*_args(clips, tiny_repo, tmp_path / "a", "--max-steps", "3", "--strategy", "ddp", "--resume", str(checkpoint)))
    refused(proc, "--strategy fsdp run", "without --strategy", "with --strategy fsdp")
    ddp_checkpoint = tmp_path / "ddp" / "checkpoints" / "step-00000002"
    proc = osp_in_process(*_args(clips, tiny_repo, tmp_path / "b", "--max-steps", "3", "--strategy", "fsdp", "--resume", str(ddp_checkpoint)))
    refused(proc, "--strategy ddp run", "without --strategy", "with --strategy ddp")
    # another architecture: two block pairs where the checkpoint has one
    wider = tmp_path / "two_layers.json"
    wider.write_text(json.dumps({**TINY_T2V, "num_layers": 2}))
    proc = osp_in_process(*_args(clips, tiny_repo, tmp_path / "c", "--max-steps", "3", "--strategy", "fsdp", "--resume", str(checkpoint), transformer=("--transformer-config", str(wider))))
    refused(proc, "another model config", "num_layers 1 there, 2 here")
    assert not (tmp_path / "c" / "checkpoints").exists()


def test_a_resume_without_strategy_takes_the_checkpoints(osp_in_process, clips, tiny_repo, tmp_path):
    """An fsdp run continued without --strategy (say on one process after a multi-GPU run) is
    an fsdp run again, and a ddp one a ddp run; a fresh run is ddp."""
    for strategy in ("fsdp", "ddp"):
        out = tmp_path / strategy
        first = osp_in_process(*_args(clips, tiny_repo, out, "--strategy", strategy, "--json"))
        assert first.returncode == 0, first.stderr
        proc = osp_in_process(*_args(clips, tiny_repo, out, "--max-steps", "3", "--resume", "latest", "--json"))
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["steps_this_run"] == 1 and summary["parallel"]["strategy"] == strategy
        state = json.loads((out / "checkpoints" / "step-00000003" / "trainer_state.json").read_text())
        assert state["config"]["parallel"]["strategy"] == strategy
        assert (state.get("checkpoint_format") == "dcp") == (strategy == "fsdp")
        assert f"({strategy}, cpu)" in proc.stderr and "warning" not in proc.stderr, proc.stderr  # the start line; no note on fsdp on one process
    fresh = osp_in_process(*_args(clips, tiny_repo, tmp_path / "fresh", "--json"))
    assert fresh.returncode == 0 and json.loads(fresh.stdout)["parallel"]["strategy"] == "ddp", fresh.stderr


def _probe(rank: int, world: int, root: str) -> list[str]:
    """check_shared_output on a folder both ranks share, then on per-rank folders (what storage
    that is not shared looks like: each rank sees a different folder at the same path)."""
    from osp_core.train.parallelize import check_shared_output

    messages = []
    for folder in (Path(root) / "shared", Path(root) / f"node{rank}"):
        try:
            check_shared_output(folder, rank, world)
            messages.append("")
        except InputError as exc:
            messages.append(str(exc))
    return messages


@pytest.mark.distributed
def test_an_output_folder_the_ranks_do_not_share_is_refused(tmp_path):
    results = run_ranks(_probe, 2, str(tmp_path))
    assert [shared for shared, _ in results] == ["", ""]
    assert not list((tmp_path / "shared").iterdir())  # the probes are removed
    assert all("not writable storage shared by every rank" in unshared for _, unshared in results), results


def test_data_order_is_a_function_of_the_global_batch():
    from osp_core.data.datasets import GlobalBatchSampler

    from .helpers import sampler_stream

    def stream(ranks: int, batch: int, accumulation: int, start: int = 0, steps: int = 4) -> list[list[tuple[int, int]]]:
        """Per step, the samples of every rank and micro-batch, as a set in global-position order."""
        return sampler_stream([GlobalBatchSampler(7, batch, accumulation, ranks, rank, seed=3, start=start) for rank in range(ranks)], start, steps)[0]

    one = stream(1, 4, 1)
    assert stream(2, 2, 1) == one == stream(4, 1, 1) == stream(2, 1, 2)
    # resumed after 2 steps (8 samples) on another rank count: the rest of the same stream
    assert stream(2, 2, 1, start=8, steps=2) == one[2:]
    # epochs follow each other without padding: each epoch is a permutation of the 7 items
    flat = [item for step in stream(1, 7, 1, steps=2) for item in step]
    assert sorted(i for e, i in flat if e == 0) == list(range(7)) and sorted(i for e, i in flat if e == 1) == list(range(7))


def test_vae_training_stays_ddp_with_a_reason(osp_in_process, clips, tmp_path):
    """The VAE's states are small next to its activations (benchmarks/README.md): --strategy fsdp
    is refused in one line that says why and what saves memory instead."""
    proc = osp_in_process("vae", "train", "--preset", "debug", "--data", str(clips), "-o", str(tmp_path / "vae"), "--strategy", "fsdp")
    assert_one_line_error(proc, "VAE training runs under --strategy ddp", "activations", "--gradient-checkpointing")
    assert not (tmp_path / "vae").exists()
