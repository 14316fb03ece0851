"""`osp --help`, command help and the refusals that need no model start without torch,
diffusers or transformers (importing them costs seconds before any option is read)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("torch", "diffusers", "transformers", "gradio")
BLOCKED_EXIT = 97

# runs `osp ARGS` (the console script's entry) with a finder that stops the process the moment
# a heavy library is imported, naming it
_BLOCKED_OSP = textwrap.dedent(
    f"""
    import os, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {HEAVY!r}:
                sys.stderr.write(f"imported {{name}}\\n")
                sys.stderr.flush()
                os._exit({BLOCKED_EXIT})
            return None

    sys.meta_path.insert(0, Block())
    sys.argv = ["osp", *sys.argv[1:]]
    from osp_cli.main import run
    run()
    """
)


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "OSP_DEBUG"}, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _osp(*args: str, blocked: bool, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", _BLOCKED_OSP, *args] if blocked else [sys.executable, "-m", "osp_cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300, cwd=cwd)


def test_importing_the_cli_imports_no_torch():
    code = f"import sys, osp_cli.main; print([m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_plan_modules_import_no_torch():
    """What plans and refuses (the jobs floor, the input and repository checks) loads without
    torch; the run paths import it when they start."""
    modules = ["osp_core.jobs.sampling_plan", "osp_core.jobs.sampling", "osp_core.jobs.calibrate", "osp_core.jobs.edit", "osp_core.jobs.vae", "osp_core.jobs.records", "osp_core.pipelines.t2v_inputs", "osp_core.pipelines.repository", "osp_core.pipelines.edit_inputs", "osp_core.pipelines.vae_inputs", "osp_core.device", "osp_core.memory", "osp_core.data.shapes", "osp_core.io.paths", "osp_core.caption.runner"]
    code = f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; print([m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_pipelines_do_not_import_jobs():
    """Pipelines take tensors and return tensors; jobs (files, folders, progress) call them, never the other way."""
    import ast

    root = Path(__file__).resolve().parents[2] / "osp_core" / "pipelines"
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(name.split(".")[0] == "jobs" or name.startswith("osp_core.jobs") for name in names), f"{path.name} imports {names}"


@pytest.mark.parametrize("args", [["--help"], ["t2v", "sample", "--help"], ["t2v", "lora", "merge", "--help"], ["vae", "encode", "--help"], ["edit", "--help"]])
def test_help_imports_no_torch(args):
    proc = _osp(*args, blocked=True)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


def _refusals(tmp_path: Path) -> list[list[str]]:
    from osp_core.data.shapes import iter_clips, render
    from osp_core.hub import resolve_model_dir
    from osp_core.io import write_video

    out = tmp_path / "out"
    out.mkdir()
    (out / "a-cat-7.mp4").write_bytes(b"an earlier run")
    video = write_video(tmp_path / "clip.mp4", render(next(iter_clips(1, 0))), fps=8)  # 17x64x64, no sidecar
    shapes = ["--model", "builtin:shapes"]
    plain = tmp_path / "no-profiles"  # builtin:shapes' configs, a sampling.json without speed_profiles
    shutil.copytree(resolve_model_dir("builtin:shapes"), plain, ignore=shutil.ignore_patterns("*.safetensors", "edit", "lora"))
    (plain / "sampling.json").write_text('{"fps": 8}')
    bad_profile = tmp_path / "bad-profile"  # a profile whose steps its scheduler cannot run
    shutil.copytree(plain, bad_profile)
    (bad_profile / "sampling.json").write_text('{"speed_profiles": {"fast": {"scheduler": "PNDM", "steps": 2}}}')
    corrupt = tmp_path / "corrupt-adapter"  # an adapter whose weights file was cut short
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00" + b'{"a.lora_A.weight": {"dtype": "F32", "shape": [4, 4]')
    return [
        ["t2v", "sample", "a cat", *shapes, "--lora", str(tmp_path / "no-adapter")],  # missing adapter
        ["t2v", "sample", "a cat", *shapes, "--lora", f"{corrupt}:nan"],  # a scale that is not finite
        ["t2v", "sample", "a cat", *shapes, "--lora", str(corrupt)],
        ["t2v", "lora", "merge", "--lora", str(tmp_path / "no-adapter"), "-o", str(tmp_path / "merged"), *shapes],
        ["edit", str(video), "-o", str(tmp_path / "e.mp4"), "--box", "8,8,56", *shapes],  # three numbers
        ["vae", "encode", str(video), "-o", str(tmp_path / "x.safetensors"), "--frames", "18", *shapes],  # not 4k+1
        ["vae", "recon", str(video), "-o", str(tmp_path / "r.mp4"), "--device", "bogus", *shapes],
        ["t2v", "sample", "a cat", *shapes, "--device", "bogus"],
        ["t2v", "sample", "a cat", *shapes, "--dtype", "fp64"],
        ["t2v", "sample", "a cat", *shapes, "--attention", "bogus"],
        ["t2v", "sample", "a cat", *shapes, "-o", "/proc/forbidden"],  # no folder can be made there
        ["data", "synth", "--num", "0", "-o", str(tmp_path / "synth")],
        ["data", "synth", "--objects", "3", "-o", str(tmp_path / "synth")],
        ["eval", "edit", str(video)],  # not an `osp edit` output
        ["eval", "shapes", str(tmp_path / "missing.mp4")],
        ["eval", "compare", str(tmp_path), str(tmp_path / "missing")],
        ["eval", "compare", str(tmp_path), str(tmp_path), "--judge", "bogus"],
        ["serve", *shapes, "--port", "99999"],
        ["serve", *shapes, "--host", "0.0.0.0"],  # the network without a key
        ["serve", *shapes, "--no-page", "--no-api"],
        ["serve", *shapes, "--workers", "0"],
        ["caption", str(tmp_path / "no-such-folder"), "-o", str(tmp_path / "captions.json")],
        ["t2v", "sample", "a cat", "--model", "builtin:shapes", "--frames", "6"],  # bad --frames
        ["t2v", "sample", "a cat", "--model", "builtin:shapes", "--height", "30"],  # bad size
        ["t2v", "sample", "--prompts", str(tmp_path / "missing.txt")],  # no prompt file
        ["t2v", "sample", "a cat", "--model", "builtin:shapes", "--seed", "7", "-o", str(out)],  # would overwrite
        ["t2v", "calibrate-cache", "a cat", "--model", "builtin:shapes", "--degree", "0"],
        ["t2v", "calibrate-cache", "a cat", "--model", "builtin:shapes", "--method", "pab"],
        ["t2v", "sample", "a cat", *shapes, "--guidance-interval", "0.8,0.2"],  # reversed
        ["t2v", "sample", "a cat", *shapes, "--guidance-interval", "0.2,1.5"],  # out of range
        ["t2v", "sample", "a cat", *shapes, "--guidance-interval", "0.5"],  # not two numbers
        ["t2v", "sample", "a cat", *shapes, "--guidance-interval", "0.2,0.8", "--guidance", "1"],  # no guidance to limit
        ["t2v", "sample", "a cat", *shapes, "--cache", "magcache", "--scheduler", "DDIM"],  # ratios fitted with PNDM
        ["t2v", "sample", "a cat", *shapes, "--cache", "fastercache", "--guidance", "1"],  # no unconditional half
        ["t2v", "sample", "a cat", *shapes, "--cache", "fastercache", "--cache-threshold", "0.1"],
        ["t2v", "sample", "a cat", *shapes, "--cache", "easycache", "--cache-threshold", "1.5"],
        ["t2v", "sample", "a cat", *shapes, "--cache", "pab", "--compile"],  # PAB decides inside the compiled blocks
        ["t2v", "sample", "a cat", *shapes, "--speed", "bogus"],  # unknown profile
        ["t2v", "sample", "a cat", "--model", str(plain), "--speed", "fast"],  # a profile the model does not define
        ["t2v", "sample", "a cat", "--model", str(bad_profile)],  # a malformed profile, even unused
        ["t2v", "sample", "a cat", "--model", str(plain), "--speed", "default", "--cache-threshold", "0.1"],  # no cache to take it
        ["edit", str(video), "-o", str(tmp_path / "s.mp4"), "--box", "8,8,56,56", "--speed", "bogus", *shapes],
        ["edit", str(video), "-o", str(tmp_path / "s.mp4"), "--box", "8,8,56,56", "--guidance-interval", "0.9,0.1", *shapes],
        ["edit", str(video), "-o", str(tmp_path / "s.mp4"), "--box", "8,8,56,56", "--cache", "bogus", *shapes],
        ["vae", "encode", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "x.safetensors")],
        ["vae", "decode", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x.mp4")],
        ["edit", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "x.mp4"), "--box", "0,0,8,8", "--mask", "m.png"],
        *[["edit", str(video), "-o", str(tmp_path / "w.mp4"), "--whole-frame", "--prompt", "a red circle", *held, *shapes] for held in _WHOLE_FRAME_HELD],
        ["edit", str(video), "-o", str(tmp_path / "w.mp4"), "--whole-frame", "--prompt", "a red circle", "--engine", "control", *shapes],
        ["edit", str(video), "-o", str(tmp_path / "w.mp4"), "--whole-frame", *shapes],  # no prompt
    ]


# a whole-frame edit holds nothing: each option that gives a region, a first frame or motion is refused
_WHOLE_FRAME_HELD = [["--box", "8,8,56,56"], ["--mask", "m.png"], ["--first-frame", "f.png"], ["--track", "8,8:16,16"], ["--track-file", "t.json"], ["--keep-motion"]]


def _assert_refuses_without_heavy_imports(args: list[str], cwd: Path) -> None:
    """`osp ARGS` gives the same one line and exit code with the heavy libraries blocked as without."""
    blocked = _osp(*args, blocked=True, cwd=cwd)
    assert blocked.returncode != BLOCKED_EXIT, f"osp {' '.join(args)}: {blocked.stderr.strip()}"
    plain = _osp(*args, blocked=False, cwd=cwd)
    assert plain.returncode == blocked.returncode != 0, (args, plain.stderr, blocked.stderr)
    assert plain.stderr == blocked.stderr, args
    assert "Traceback" not in blocked.stderr and len(blocked.stderr.strip().splitlines()) == 1, blocked.stderr


def _assert_all_refuse_without_heavy_imports(refusals: list[list[str]], cwd: Path) -> None:
    """Each refusal checked in its own pair of processes, as many pairs at once as there are
    cores (refusals write nothing, so they cannot disturb each other; most of a refusal's time
    is the interpreter starting)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        for done in [pool.submit(_assert_refuses_without_heavy_imports, args, cwd) for args in refusals]:
            done.result()


def test_refusals_that_need_no_model_import_no_torch(tmp_path):
    """Each refusal gives the same line and exit code as an unguarded run, and imports none of
    the heavy libraries."""
    _assert_all_refuse_without_heavy_imports(_refusals(tmp_path), tmp_path)


def _train_refusals(tmp_path: Path) -> list[list[str]]:
    """The train commands' refusals that need no model: config keys and values, the recipes'
    rules, the data source, an output folder holding another run."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "not-a-checkpoint").mkdir()
    (tmp_path / "data.json").write_text("[]")
    held = tmp_path / "held" / "checkpoints" / "step-00000002"
    held.mkdir(parents=True)
    (held / "trainer_state.json").write_text("{}")
    vae = ["vae", "train", "--preset", "debug", "--data", "videos", "-o", "run"]
    t2v = ["t2v", "train", "--preset", "debug", "--data", "data.json", "-o", "run"]
    return [
        [*vae, "--set", "run.nope=1"],  # unknown config key
        [*vae, "--size", "wide"],  # unreadable size
        [*vae, "--frames", "18"],  # not 4k+1
        [*vae, "--strategy", "bogus"],
        [*vae, "--strategy", "fsdp"],  # the VAE trains under ddp
        [*vae, "--lr", "0"],
        ["vae", "train", "--preset", "debug", "--data", "missing.txt", "-o", "run"],  # no data list
        ["vae", "train", "--preset", "debug", "--data", "videos", "-o", "held"],  # would mix two runs
        [*vae, "--resume", "not-a-checkpoint"],
        [*t2v, "--frames", "18"],
        ["t2v", "train", "--preset", "debug", "--data", "missing.json", "-o", "run"],  # no annotation
        [*t2v, "--size", "24x24"],  # not a multiple of 16
        [*t2v, "--buckets", "6x32x32"],  # a bucket's frames not 4k+1
        ["edit", "train", "--preset", "debug", "--data", "data.json", "-o", "run", "--stage", "3"],  # stage 3 without --edit-module
        ["edit", "train", "--preset", "debug", "--data", "data.json", "-o", "run", "--stage", "4"],
        [*t2v, "--lora", "0"],  # rank below 1
        [*t2v, "--lora", "4", "--lora-targets", "attn1.(to_q"],  # not a regular expression
        [*t2v, "--lora", "4", "--ema"],
        [*vae, "--lora", "4"],  # the VAE and edit trainers take no adapters
        ["edit", "train", "--preset", "debug", "--data", "data.json", "-o", "run", "--set", "lora.rank=4"],
    ]


def test_train_refusals_that_need_no_model_import_no_torch(tmp_path):
    """Each train refusal gives the same line and exit code as an unguarded run, imports none of
    the heavy libraries and leaves no output folder behind."""
    _assert_all_refuse_without_heavy_imports(_train_refusals(tmp_path), tmp_path)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("group", ["vae", "t2v", "edit"])
def test_train_print_config_imports_no_torch(tmp_path, group):
    proc = _osp(group, "train", "--preset", "debug", "--size", "32x32", "--print-config", blocked=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"height": 32' in proc.stdout


def test_an_output_folder_that_cannot_be_made_is_named(tmp_path):
    """The refusal names the folder asked for and the existing folder that refuses it."""
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc")
    proc = _osp("t2v", "sample", "a cat", "--model", "builtin:shapes", "-o", "/proc/forbidden", blocked=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: cannot create output folder '/proc/forbidden': '/proc' is not writable"), proc.stderr
