"""Sampling as a library job: the runner the CLI calls, model repositories resolved once (Hub
repositories included: their sampling.json and their own versions), progress, and the new
options' bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from osp_core.errors import HubUnavailableError, InputError, ModelLoadError
from osp_core.pipelines.repository import ModelRepository
from osp_core.jobs.sampling import run_sampling
from osp_core.jobs.sampling_plan import SamplingJob, plan_sampling
from tests.conftest import assert_one_line_error, run_osp

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = {"frames": 9, "height": 32, "width": 32}
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_repo(reference_dir):
    return reference_dir / "pipeline" / "tiny-osp-v1.1.0"


def hub_cache(home: Path, repo_id: str, source: Path, sampling: dict | None = None, rename: dict[str, str] | None = None) -> Path:
    """A Hugging Face cache under `home` (HF_HOME) holding `repo_id` with the files of `source`
    (folders renamed by `rename`), as `snapshot_download` leaves it."""
    folder = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for part in source.iterdir():
        if part.is_dir():
            shutil.copytree(part, snapshot / (rename or {}).get(part.name, part.name))
    if sampling is not None:
        (snapshot / "sampling.json").write_text(json.dumps(sampling))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REVISION)
    return snapshot


class Recorder:
    def __init__(self):
        self.events = []

    def status(self, message):
        self.events.append(("status", message))

    def video(self, index, total, prompt):
        self.events.append(("video", index, total, prompt))

    def step(self, done, total):
        self.events.append(("step", done, total))

    def notice(self, kind, message):
        self.events.append((kind, message))


def test_runner_writes_videos_and_reports_progress(tiny_repo, tmp_path):
    progress = Recorder()
    job = SamplingJob(prompts=["a cat", "a dog"], model=str(tiny_repo), steps=4, seed=3, num_videos=2, output_dir=tmp_path / "out", **SIZE)
    summary = run_sampling(job, progress)
    assert [v["seed"] for v in summary.videos] == [3, 4, 5, 6]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"a-{a}-{s}.{e}" for a, seeds in (("cat", (3, 4)), ("dog", (5, 6))) for s in seeds for e in ("mp4", "json"))
    kinds = [e[0] for e in progress.events]
    assert kinds[:2] == ["status", "status"] and ("video", 1, 2, "a dog") in progress.events
    steps = [e for e in progress.events if e[0] == "step"]
    evaluations = steps[0][2]
    assert len(steps) == 2 * evaluations and steps[evaluations - 1] == ("step", evaluations, evaluations)
    sidecar = json.loads((tmp_path / "out" / "a-dog-6.json").read_text())
    assert sidecar["settings"]["cache"] == {"method": "none", "transformer_evaluations": evaluations} and sidecar["settings"]["attention"] == "sdpa"
    # each video's share of each phase; the run's sums and its one model load
    assert set(sidecar["seconds"]) == {"text_encoder", "denoise", "decode", "write"} and all(v >= 0 for v in sidecar["seconds"].values())
    phases = summary.to_dict()["seconds"]
    assert set(phases) == {"load", "text_encoder", "denoise", "decode", "write", "total"} and phases["load"] > 0
    assert phases["denoise"] == pytest.approx(sum(v["seconds"]["denoise"] for v in summary.videos), abs=1e-2)
    assert sum(v for k, v in phases.items() if k != "total") <= phases["total"] + 1e-2


def test_runner_equals_the_pipeline(tiny_repo, tmp_path):
    """The runner's latents are the pipeline's for the same prompt and seed (bit for bit)."""
    from osp_core.pipelines.t2v import T2VPipeline
    from osp_core.jobs.records import load_latents

    job = SamplingJob(prompts=["a red balloon"], model=str(tiny_repo), steps=5, seed=11, negative_prompt="blurry", save_latents=True, output_dir=tmp_path, dtype="fp32", **SIZE)
    record = run_sampling(job).videos[0]
    pipe = T2VPipeline.from_pretrained(tiny_repo, version="9x32x32")
    pipe.set_progress_bar_config(disable=True)
    final = pipe("a red balloon", negative_prompt="blurry", num_inference_steps=5, generator=torch.Generator().manual_seed(11), output_type="latent", **{"num_frames": 9, "height": 32, "width": 32}).frames
    saved = load_latents(record["latents"]).latents
    assert torch.equal(saved, (final / 0.18215).float())


def test_hub_repository_sampling_json_and_versions_are_used(tiny_repo, tmp_path):
    """Two bugs of the old CLI: a Hub repository's sampling.json was ignored, and a Hub
    repository without 65x512x512/ failed unless --version was given."""
    home = tmp_path / "hf"
    hub_cache(home, "example/tiny-osp", tiny_repo, sampling={"fps": 12, "steps": 4, "scheduler": "ddim"})
    proc = run_osp("t2v", "sample", "a cat", "--model", "example/tiny-osp", "--seed", "2", "-o", str(tmp_path / "out"), "--json", env={"HF_HOME": str(home), **ONE_THREAD})
    assert proc.returncode == 0, proc.stderr
    sidecar = json.loads(Path(json.loads(proc.stdout)["videos"][0]["sidecar"]).read_text())
    assert sidecar["models"]["version"] == "9x32x32"
    assert {k: sidecar["settings"][k] for k in ("fps", "steps", "scheduler", "frames", "height", "width")} == {
        "fps": 12.0, "steps": 4, "scheduler": "DDIMScheduler", "frames": 9, "height": 32, "width": 32,
    }  # fmt: skip
    assert sidecar["models"]["text_encoder"] == "example/tiny-osp/text_encoder"


def test_repository_resolves_once_from_configs_only(tiny_repo, tmp_path, monkeypatch):
    home = tmp_path / "hf"
    snapshot = hub_cache(home, "example/two-versions", tiny_repo, rename={"9x32x32": "17x32x32"}, sampling={"fps": 6})
    shutil.copytree(snapshot / "17x32x32", snapshot / "33x64x64")
    import huggingface_hub.constants

    # huggingface_hub reads HF_HOME when imported: point its cache constant at the test's cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repository = ModelRepository.resolve("example/two-versions")
    assert repository.is_hub and repository.root == snapshot
    assert repository.versions == ["17x32x32", "33x64x64"] and repository.sampling["fps"] == 6.0
    assert repository.pick_version(None) == "17x32x32" and repository.pick_version(21) == "33x64x64"
    with pytest.raises(ModelLoadError, match="available: 17x32x32, 33x64x64"):
        repository.check_version("65x512x512")
    # the released repository's layout is known without the Hub
    released = ModelRepository.resolve()
    assert released.root is None and released.versions == ["65x512x512", "221x512x512"] and released.teacache() is not None
    with pytest.raises(HubUnavailableError, match="'example/missing' is not in the local Hugging Face cache"):
        ModelRepository.resolve("example/missing")


def test_plan_resolves_defaults_without_loading_weights(tiny_repo, tmp_path):
    plan = plan_sampling(SamplingJob(prompts=["a cat"], model=str(tiny_repo), seed=1, output_dir=tmp_path))
    assert (plan.frames, plan.height, plan.width, plan.steps, plan.scheduler, plan.fps, plan.version) == (9, 32, 32, 150, "PNDM", 24.0, "9x32x32")
    assert plan.attention == "sdpa" and plan.cache == "none" and [v.stem for v in plan.videos] == ["a-cat-1"]
    assert not tmp_path.joinpath("a-cat-1.mp4").exists()


@pytest.mark.parametrize(
    "options, needles",
    [
        (("--attention", "xformers"), ("unknown attention backend 'xformers'",)),
        (("--attention", "npu"), ("--attention npu needs torch_npu", "osp[ascend]")),
        (("--attention", "flash"), ("--attention flash needs the flash-attn package",)),
        (("--cache", "deepcache"), ("unknown cache 'deepcache'",)),
        (("--cache", "pab", "--cache-threshold", "0.1"), ("--cache-threshold applies to --cache teacache",)),
        (("--cache", "teacache", "--cache-threshold", "2"), ("--cache-threshold must be in [0, 1]",)),
        (("--cache", "teacache"), ("no TeaCache coefficients", "osp t2v calibrate-cache")),
        (("--guidance", "nan"), ("--guidance", "not a finite number")),
        (("--fps", "inf"), ("--fps", "not a finite number")),
    ],
)
def test_bad_options_fail_before_any_model_loads(tiny_repo, tmp_path, options, needles):
    proc = run_osp("t2v", "sample", "a cat", "--model", str(tiny_repo), *options, "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, hint",
    [
        (("--num-videos", "100000"), r"\(use --num-videos \d+ or fewer\)"),
        # the side the user left alone stays (the width was once halved)
        (("--height", "100000", "--steps", "4"), r"\(use --height \d+ or smaller\)"),
        # too many frames: fewer frames fit (not "the models alone do not fit")
        (("--frames", "100001"), r"\(use --frames \d+ or fewer\)"),
    ],
)
def test_a_job_that_cannot_fit_is_refused_before_the_weights_load(osp_in_process, tmp_path, options, hint):
    """(It once computed for 10+ minutes, or failed at allocation with a raw RuntimeError.)"""
    import re

    proc = osp_in_process("t2v", "sample", "a cat", "--model", "builtin:shapes", *options, "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "needs about", "of memory")
    assert re.search(hint + "$", proc.stderr.strip()), proc.stderr
    assert not (tmp_path / "out").exists()


def test_attention_math_and_teacache_from_the_command_line(tiny_repo, tmp_path):
    """--attention math gives sdpa's video; --cache teacache records itself in the sidecar."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for part in tiny_repo.iterdir():
        (repo / part.name).symlink_to(part)
    (repo / "sampling.json").write_text(json.dumps({"teacache_coefficients": [1.0, 0.0], "teacache_threshold": 0.5}))
    common = ("a cat", "--model", str(repo), "--seed", "4", "--steps", "8", "--save-latents", "--dtype", "fp32", "--json")
    from concurrent.futures import ThreadPoolExecutor

    def sample(name: str, options: tuple[str, ...]) -> dict:
        proc = run_osp("t2v", "sample", *common, *options, "-o", str(tmp_path / name), env=ONE_THREAD)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["videos"][0]

    settings = {"sdpa": (), "math": ("--attention", "math"), "teacache": ("--cache", "teacache")}
    with ThreadPoolExecutor(max_workers=2) as pool:  # one-thread processes, two at a time
        runs = dict(zip(settings, pool.map(sample, settings, settings.values())))
    from osp_core.jobs.records import load_latents

    sdpa, math_ = (load_latents(runs[n]["latents"]).latents for n in ("sdpa", "math"))
    assert (sdpa - math_).abs().max() <= 1e-4 * sdpa.abs().max()
    assert runs["math"]["settings"]["attention"] == "math"
    cache = runs["teacache"]["settings"]["cache"]
    assert cache["method"] == "teacache" and cache["threshold"] == 0.5 and cache["coefficients"] == [1.0, 0.0]
    assert cache["transformer_evaluations"] + cache["transformer_evaluations_skipped"] == 17  # PNDM, 8 steps
    assert cache["transformer_evaluations_skipped"] > 0


def test_calibrate_cache_writes_the_coefficients(tiny_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    (repo / "sampling.json").write_text(json.dumps({"fps": 12}))
    proc = run_osp("t2v", "calibrate-cache", "a cat", "a dog", "--model", str(repo), "--steps", "10", "--seed", "0", "--degree", "2", "--write", "--json", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    fit = json.loads(proc.stdout)
    assert len(fit["coefficients"]) == 3 and fit["calibration_steps"] > 10 and fit["written"] == str(repo / "sampling.json")
    written = json.loads((repo / "sampling.json").read_text())
    assert written == {"fps": 12.0, "teacache_coefficients": fit["coefficients"]}
    proc = run_osp("t2v", "calibrate-cache", "a cat", "--write")  # the default: the released repository, from the Hub
    assert_one_line_error(proc, "T5 text encoder", "--text-encoder DIR", code=3)
    proc = run_osp("t2v", "calibrate-cache", "a cat", "--model", "example/not-here", "--write")
    assert_one_line_error(proc, "'example/not-here' is not in the local")


def test_calibrate_cache_refusals_come_before_sampling():
    """The shipped model is package data (--write would change it for every user), and a
    degree whose coefficients sampling.json cannot hold is refused up front."""
    shipped = Path(__file__).resolve().parents[2] / "osp_core" / "builtin" / "shapes" / "sampling.json"
    before = shipped.read_bytes()
    proc = run_osp("t2v", "calibrate-cache", "a cat", "--model", "builtin:shapes", "--steps", "10", "--write")
    assert_one_line_error(proc, "ships inside the package", "--model DIR")
    proc = run_osp("t2v", "calibrate-cache", "a cat", "--model", "builtin:shapes", "--degree", "10")
    assert_one_line_error(proc, "--degree must be in 1..9")
    assert shipped.read_bytes() == before


@pytest.mark.parametrize("native_bf16", [True, False])
def test_default_dtype_on_cpu(tiny_repo, tmp_path, monkeypatch, native_bf16):
    """Sampling on CPUs with bf16 matrix units runs in bf16 (as measured on builtin:shapes),
    elsewhere in fp32; --dtype wins."""
    monkeypatch.setattr("osp_core.device.cpu_has_native_bf16", lambda: native_bf16)
    plan = plan_sampling(SamplingJob(prompts=["a cat"], model=str(tiny_repo), device="cpu", output_dir=tmp_path))
    assert plan.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    plan = plan_sampling(SamplingJob(prompts=["a cat"], model=str(tiny_repo), device="cpu", dtype="fp32", output_dir=tmp_path))
    assert plan.dtype == torch.float32


def test_job_validation():
    with pytest.raises(InputError, match="--guidance must be a number >= 0"):
        SamplingJob(prompts=["x"], guidance=float("nan")).validate()
    with pytest.raises(InputError, match="--fps must be a number > 0"):
        SamplingJob(prompts=["x"], fps=float("inf")).validate()
    with pytest.raises(InputError, match="--transformer and --version"):
        SamplingJob(prompts=["x"], transformer=Path("t"), version="9x32x32").validate()
    with pytest.raises(InputError, match="the prompt is empty"):
        SamplingJob(prompts=["  "]).validate()
    with pytest.raises(InputError, match="--seed must be a non-negative"):
        SamplingJob(prompts=["x"], seed=-1).validate()


def test_kept_pipeline_loads_once_and_samples_as_a_fresh_one(tiny_repo, tmp_path):
    """A `PipelineCache` (the web page's) loads the model once, keeps T5, and each run gives the
    latents a fresh run gives; another scheduler on a kept pipeline is honoured."""
    from osp_core.jobs.sampling import PipelineCache
    from osp_core.jobs.records import load_latents

    def job(prompt, out, scheduler=None):
        return SamplingJob(prompts=[prompt], model=str(tiny_repo), steps=4, seed=5, scheduler=scheduler, save_latents=True, output_dir=tmp_path / out, dtype="fp32", **SIZE)

    cache, progress = PipelineCache(), Recorder()
    kept = [run_sampling(job(p, f"kept{i}", s), progress, pipelines=cache).videos[0] for i, (p, s) in enumerate([("a cat", None), ("a dog", None), ("a dog", "DDIM")])]
    fresh = [run_sampling(job(p, f"fresh{i}", s)).videos[0] for i, (p, s) in enumerate([("a dog", None), ("a dog", "DDIM")])]
    assert sum(1 for e in progress.events if e[0] == "status" and e[1].startswith("loading")) == 1
    latents = [load_latents(r["latents"]).latents for r in (*kept[1:], *fresh)]
    assert torch.equal(latents[0], latents[2]) and torch.equal(latents[1], latents[3])
    assert not torch.equal(latents[0], latents[1])  # DDIM really replaced PNDM
    assert kept[2]["settings"]["scheduler"] == "DDIMScheduler"


def test_one_frame_is_an_image_sampled_without_temporal_attention(tiny_repo, tmp_path):
    """frames=1 samples an image with the spatial blocks only, as the original's
    --force_images (video_length 1, enable_temporal_attentions False)."""
    from PIL import Image

    from osp_core.pipelines.t2v import T2VPipeline
    from osp_core.jobs.records import load_latents

    job = SamplingJob(prompts=["a red balloon"], model=str(tiny_repo), steps=4, seed=2, frames=1, height=32, width=32, save_latents=True, output_dir=tmp_path, dtype="fp32")
    record = run_sampling(job).videos[0]
    assert record["num_frames"] == 1 and record["settings"]["temporal_attention"] is False
    # one frame is an image: a PNG and its sidecar (it was a one-frame mp4)
    assert record["video"] == str((tmp_path / "a-red-balloon-2.png").absolute())
    assert json.loads(Path(record["sidecar"]).read_text())["video"] == "a-red-balloon-2.png"
    with Image.open(record["video"]) as image:
        assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-red-balloon-2.json", "a-red-balloon-2.latents.safetensors", "a-red-balloon-2.png"]
    saved = load_latents(record["latents"]).latents
    pipe = T2VPipeline.from_pretrained(tiny_repo, version="9x32x32")
    pipe.set_progress_bar_config(disable=True)

    def final(temporal):
        latents = pipe("a red balloon", num_inference_steps=4, generator=torch.Generator().manual_seed(2), output_type="latent", num_frames=1, height=32, width=32, enable_temporal_attentions=temporal).frames
        return (latents / 0.18215).float()

    assert torch.equal(saved, final(False)) and not torch.equal(saved, final(True))


def test_transformer_folder_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    from osp_core.pipelines.repository import check_transformer_folder

    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert check_transformer_folder("run/model") == tmp_path / "run" / "model"


KILLED_RUN = """
import sys
from pathlib import Path
from osp_core.jobs.progress import NoProgress
from osp_core.jobs.sampling import run_sampling
from osp_core.jobs.sampling_plan import SamplingJob

class Announce(NoProgress):
    def step(self, done, total):
        print("denoising", flush=True)  # the test kills the process here

run_sampling(SamplingJob(prompts=["a cat"], model=sys.argv[1], steps=1000, seed=1, output_dir=Path(sys.argv[2]), frames=9, height=32, width=32), Announce())
"""


def test_a_run_killed_before_its_first_file_leaves_no_folder(tiny_repo, tmp_path):
    """kill -9 (or an OOM kill) runs no cleanup: the output folder is made only when the first
    file is about to be written (it was made at the start and left empty)."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "a" / "videos"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tiny_repo), str(out)], stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    try:
        assert proc.stdout.readline().strip() == "denoising"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (tmp_path / "a").exists()


def test_the_next_run_sweeps_folders_a_killed_run_left_empty(tiny_repo, tmp_path):
    """A run killed between making its folder and writing its first file leaves the folder with
    an unlocked marker; the next run beside it removes that folder (once as old as a stale
    temporary), and leaves a folder of a live run and the user's own empty folder alone."""
    import os
    import signal
    import subprocess
    import sys

    from osp_core.io.atomic import STALE_AFTER_SECONDS

    make = "import sys, time; from pathlib import Path; from osp_core.io import ensure_writable_dir; ensure_writable_dir(Path(sys.argv[1])); print('made', flush=True); time.sleep(600)"
    dead, live, users = tmp_path / "dead" / "videos", tmp_path / "live", tmp_path / "mine"
    users.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", make, str(folder)], stdout=subprocess.PIPE, text=True) for folder in (dead, live)]
    try:
        for proc in processes:
            assert proc.stdout.readline().strip() == "made"
        processes[0].send_signal(signal.SIGKILL)  # the dead run
        processes[0].wait(timeout=60)
        long_ago = os.stat(tmp_path).st_mtime - STALE_AFTER_SECONDS - 60
        for marker in [*dead.iterdir(), *dead.parent.iterdir(), *live.iterdir()]:
            if marker.is_file():
                os.utime(marker, (long_ago, long_ago))
        proc = run_osp("t2v", "sample", "a cat", "--model", str(tiny_repo), "--steps", "4", "--seed", "1", "--frames", "9", "--height", "32", "--width", "32", "-o", str(tmp_path / "next"), env=ONE_THREAD)
        assert proc.returncode == 0, proc.stderr
        assert not (tmp_path / "dead").exists()
        assert live.is_dir() and users.is_dir()  # a run still going; a folder osp did not make
    finally:
        processes[1].send_signal(signal.SIGKILL)
        processes[1].wait(timeout=60)


def test_compile_runs_and_samples_the_same_video(tiny_repo, tmp_path):
    """docs/speed-and-memory.md: `--compile` torch.compiles the transformer blocks. On the tiny model it compiles
    in well under a minute on 2 CPU cores, and the video is the uncompiled one up to float
    rounding."""
    from osp_core.jobs.records import load_latents

    latents = {}
    for compiled in (False, True):
        job = SamplingJob(prompts=["a cat"], model=str(tiny_repo), steps=4, seed=1, save_latents=True, dtype="fp32", compile=compiled, output_dir=tmp_path / str(compiled), **SIZE)
        video = run_sampling(job).videos[0]
        assert video["settings"]["compile"] is compiled
        latents[compiled] = load_latents(video["latents"]).latents
    scale = latents[False].abs().max().item()
    assert torch.allclose(latents[True], latents[False], rtol=0, atol=1e-4 * scale)


def test_magcache_calibrated_then_sampled_and_recorded(tiny_repo, tmp_path):
    """`calibrate-cache --method magcache --write` stores the ratios with their scheduler; a run
    with --cache magcache records its settings and counts, another scheduler is refused before
    any model loads, and a guidance interval is recorded with the steps it ran unguided."""
    from osp_core.jobs.calibrate import calibrate_cache

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    (repo / "sampling.json").write_text(json.dumps({"fps": 12, "scheduler": "DDIM", "steps": 10}))
    fit = calibrate_cache(SamplingJob(prompts=["a cat", "a dog"], model=str(repo), seed=0, dtype="fp32", **SIZE), method="magcache", write=True)
    written = json.loads((repo / "sampling.json").read_text())
    assert written["magcache_ratios"] == fit.coefficients and len(fit.coefficients) == 10 and written["magcache_scheduler"] == "DDIM"
    assert fit.to_dict()["ratios"] == fit.coefficients and fit.to_dict()["method"] == "magcache"
    with pytest.raises(InputError, match="--cache magcache cannot take --scheduler EulerDiscrete: this model's MagCache ratios were fitted with DDIM"):
        plan_sampling(SamplingJob(prompts=["a cat"], model=str(repo), cache="magcache", scheduler="EulerDiscrete", output_dir=tmp_path / "never"))
    job = SamplingJob(prompts=["a cat"], model=str(repo), seed=1, dtype="fp32", cache="magcache", cache_threshold=0.5, guidance_interval="0,0.5", output_dir=tmp_path / "out", **SIZE)
    settings = json.loads(Path(run_sampling(job).videos[0]["sidecar"]).read_text())["settings"]
    cache = settings["cache"]
    assert cache["method"] == "magcache" and cache["threshold"] == 0.5 and cache["fitted_steps"] == 10
    assert cache["transformer_evaluations"] + cache["transformer_evaluations_skipped"] == 10
    interval = settings["guidance_interval"]
    assert interval["interval"] == [0.0, 0.5] and interval["steps_without_guidance"] == 4  # DDIM 10 steps: t = 900, 800, ... 0; 900-600 above 0.5
    assert not (tmp_path / "never").exists()
