#!/usr/bin/env python
"""`make builtin`: build the shipped `builtin:shapes` model from scratch with `osp` itself.

Steps (every one an `osp` command or an osp_core function):
  1. `osp data synth`: training clips and 100 held-out clips of the shapes world, and the VAE's
     own data (VAE_DATA);
  2. the tiny frozen T5 (random weights from a seed, byte-level tokenizer);
  3. `osp vae train --preset shapes-image --pretrained INIT` on single frames, INIT being the
     preset's architecture initialised with a near-deterministic posterior
     (osp_core.builtin_recipe.init_vae); its 3D kernels collapsed onto the last tap
     (collapse_to_last_tap); `osp vae train --preset shapes` on 9-frame clips from there; both
     on the VAE's own data (VAE_DATA: the world's one- and two-object clips and looser drawings
     of it, `--variety wide`); the latent scaling factor is measured on training clips and the
     VAE exported (fp16);
  4. `osp t2v train --preset shapes` against that VAE and T5, latents and T5 states cached
     (stage 1, the original objective); then `--preset shapes-stage2` (half the timesteps at
     high noise, x0-weighted loss: the direction word) and `--preset shapes-stage3` (the
     original objective at a low learning rate), each with --pretrained the previous stage's
     EMA weights exported as they would ship (fp16);
  5. the repository (`vae/`, `17x64x64/`, `text_encoder/`, `tokenizer/`) is checked (<= 20 MB)
     and installed into osp_core/builtin/shapes;
  6. evaluation: `osp vae recon` of the held-out clips + `osp eval shapes --reference` (PSNR),
     `osp t2v sample` of all 60 captions with fixed seeds + `osp eval shapes` (accuracy);
  7. RESULTS.md (quality table, wall time per stage, loss curves as SVG + CSV) beside the model.

    python scripts/build_builtin.py                 # the full build (about 2.8 h on 2 AMX cores, 4.5 h on 2 AVX2 cores)
    python scripts/build_builtin.py --smoke         # minutes: tiny step counts, a throwaway model
    python scripts/build_builtin.py --overwrite     # replace an existing osp_core/builtin/shapes

A smoke build installs into osp_core/builtin/shapes-smoke and removes it at the end (its results
stay in the work folder); it never touches the real model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from osp_core.errors import InputError, OSPError  # noqa: E402
from osp_core.hub import BUILTIN_PREFIX, BUILTIN_ROOT  # noqa: E402
from osp_core.io import write_json  # noqa: E402


@dataclass(frozen=True)
class Scale:
    """Everything the full and the smoke build differ in."""

    train_clips: int
    heldout_clips: int
    vae_clips: int | None  # clips of each VAE_DATA set; None: the set's own count
    vae_image_steps: int | None  # None: the preset's
    vae_image_batch: int | None
    vae_steps: int | None
    vae_batch: int | None
    t2v_steps: int | None
    t2v_batch: int | None
    t2v_stage2_steps: int | None
    t2v_stage3_steps: int | None
    captions: int  # how many of the 60 captions to sample
    evals: tuple[tuple[str, int, float], ...]  # (scheduler, steps, guidance) per sampling run
    latent_scale_clips: int = 32  # training clips the VAE latent std is measured on
    checkpoint_every: int | None = None
    calibration_captions: int = 12  # TeaCache's fit (osp t2v calibrate-cache)
    calibration_steps: int | None = None  # None: the sampler's default (150)


FULL = Scale(
    train_clips=1200, heldout_clips=100, vae_clips=None, vae_image_steps=None, vae_image_batch=None, vae_steps=None, vae_batch=None,
    t2v_steps=None, t2v_batch=None, t2v_stage2_steps=None, t2v_stage3_steps=None, captions=60,
    evals=(("PNDM", 150, 7.5),),  # the sampler's defaults: what `osp t2v sample` gives without flags
)  # fmt: skip
SMOKE = Scale(
    train_clips=60, heldout_clips=4, vae_clips=4, vae_image_steps=2, vae_image_batch=2, vae_steps=2, vae_batch=1, t2v_steps=4, t2v_batch=2, t2v_stage2_steps=2, t2v_stage3_steps=2, captions=3,
    evals=(("PNDM", 4, 7.5),), latent_scale_clips=4, checkpoint_every=2, calibration_captions=2, calibration_steps=8,
)  # fmt: skip

TRAIN_SEED, HELDOUT_SEED, T5_SEED, VAE_SEED, SAMPLE_SEED = 0, 1, 0, 0, 0
# The VAE's data (`osp data synth`; also `make builtin-edit`'s decoder step): (name, options,
# clips, seed). Beside the world's own clips, drawings looser than the world (sizes, speeds,
# hard edges, jittered and pure-white colours, paths past the frame's edges) and two objects, so
# the round trip holds on clips drawn by other code (benchmarks/README.md, "vae_ood.py").
VAE_DATA = (("one", [], 400, 0), ("two", ["--objects", "2"], 400, 0), ("wide", ["--variety", "wide"], 2000, 10))

# The transformer's stages, in order: (run folder, preset, Scale field with its step count).
# 1: the original objective learns color, shape and clean motion, but not the direction word;
# 2: half the timesteps at high noise with the x0-weighted loss teaches the direction word;
# 3: the original objective at a low learning rate restores low-noise detail (square corners).
T2V_STAGES = (("t2v", "shapes", "t2v_steps"), ("t2v-stage2", "shapes-stage2", "t2v_stage2_steps"), ("t2v-stage3", "shapes-stage3", "t2v_stage3_steps"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", default=os.environ.get("SMOKE", "") not in ("", "0"), help="tiny step counts (minutes); also SMOKE=1")
    p.add_argument("--overwrite", action="store_true", help="replace an existing built-in model of this name")
    p.add_argument("--name", default=None, help="built-in model name (default shapes, shapes-smoke with --smoke)")
    p.add_argument("--target", type=Path, default=None, help="install here instead of osp_core/builtin/NAME")
    p.add_argument("--work-dir", type=Path, default=None, help="data, runs and evaluation outputs (default outputs/builtin-NAME)")
    p.add_argument("--keep", action="store_true", help="keep the installed smoke model (removed by default)")
    p.add_argument("--resume", action="store_true", help="continue interrupted training runs in the work folder (--resume latest) and reuse its data")
    return p.parse_args(argv)


class Build:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scale = SMOKE if args.smoke else FULL
        self.name = args.name or ("shapes-smoke" if args.smoke else "shapes")
        self.target = (args.target or BUILTIN_ROOT / self.name).resolve()
        self.work = (args.work_dir or ROOT / "outputs" / f"builtin-{self.name}").resolve()
        self.repo = self.work / "repo"
        self.stages: dict[str, float] = {}
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore",
            # a spinning OpenMP wait burns the core another thread needs on a shared 2-core CPU
            # (measured: 40x slower small-op forwards under load); a user's value wins
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        }

    # --- helpers ------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        print(f"[build {stamp}] {message}", file=sys.stderr, flush=True)

    def osp(self, *args: str, capture_json: bool = False) -> dict | None:
        return run_osp(args, self.env, self.log, capture_json)

    def stage(self, name: str):
        build = self

        class _Timer:
            def __enter__(self):
                build.log(f"--- {name}")
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                build.stages[name] = time.perf_counter() - self.t0
                if exc[0] is None:
                    build.log(f"--- {name}: {build.stages[name]:.1f} s")

        return _Timer()

    def model_ref(self) -> str:
        """How `osp` commands name the installed model: builtin:NAME when it is one."""
        return BUILTIN_PREFIX + self.target.name if self.target.parent == BUILTIN_ROOT.resolve() else str(self.target)

    # --- steps --------------------------------------------------------------------------------
    def check_target(self) -> None:
        if self.target.exists() and not self.args.overwrite:
            raise InputError(f"'{self.target}' already exists", "pass --overwrite to rebuild it (make builtin OVERWRITE=1)")

    def data(self) -> None:
        s = self.scale
        sets = [("train", [], s.train_clips, TRAIN_SEED), ("heldout", [], s.heldout_clips, HELDOUT_SEED)]
        sets += [(f"vae-{name}", options, s.vae_clips or num, seed) for name, options, num, seed in VAE_DATA]
        for kind, options, num, seed in sets:
            folder = self.work / "data" / kind
            if self.args.resume and (folder / "annotations.json").is_file():
                self.log(f"reusing {folder}")
                continue
            self.osp("data", "synth", *options, "--out", str(folder), "--num", str(num), "--seed", str(seed), "--overwrite")
        (self.work / "data" / "vae.txt").write_text("".join((self.work / "data" / f"vae-{name}" / "data.txt").read_text() for name, *_ in VAE_DATA))

    def text_encoder(self) -> None:
        from osp_core.models.tiny_t5 import TinyT5Config, save_tiny_t5

        save_tiny_t5(self.repo, TinyT5Config(seed=T5_SEED), overwrite=True)

    def _train_args(self, steps: int | None, batch: int | None) -> list[str]:
        extra = []
        if steps is not None:
            extra += ["--max-steps", str(steps)]
        if batch is not None:
            extra += ["--batch-size", str(batch)]
        if self.scale.checkpoint_every is not None:
            extra += ["--checkpoint-every", str(self.scale.checkpoint_every)]
        if self.args.resume:
            extra += ["--resume", "latest"]
        return extra

    def _train(self, group: str, preset: str, out: Path, steps: int | None, batch: int | None, *args: str) -> None:
        """`osp GROUP train --preset PRESET ARGS -o OUT`. With --resume, a run that already reached
        its steps is kept as it is, summary.json (with the run's own timing) included."""
        if self.args.resume and self._finished(group, preset, out, steps):
            self.log(f"reusing the finished run {out}")
            return
        self.osp(group, "train", "--preset", preset, *args, "-o", str(out), *self._train_args(steps, batch))

    @staticmethod
    def _finished(group: str, preset: str, out: Path, steps: int | None) -> bool:
        from osp_core.train.config import T2VTrainConfig, VAETrainConfig, load_config

        summary_path = out / "summary.json"
        if not summary_path.is_file():
            return False
        summary = json.loads(summary_path.read_text())
        wanted = steps if steps is not None else load_config({"vae": VAETrainConfig, "t2v": T2VTrainConfig}[group], preset, group=group).run.max_steps
        return summary["steps"] >= wanted and not summary.get("stopped_by_signal")

    def train_vae(self) -> None:
        from osp_core.builtin_recipe import collapse_to_last_tap, final_checkpoint, init_vae
        from osp_core.train.config import resolve_preset

        s = self.scale
        data = ["--data", str(self.work / "data" / "vae.txt")]
        # stage 1, single frames: the preset's architecture, started as a near-deterministic
        # autoencoder (see init_vae)
        init = self.work / "vae-init"
        init_vae(resolve_preset("shapes", "vae").parent / "shapes-vae.json", init, seed=VAE_SEED)
        self._train("vae", "shapes-image", self.work / "vae-image", s.vae_image_steps, s.vae_image_batch, "--pretrained", str(init), *data)
        # stage 2, clips: from the image model with its temporal kernels collapsed (tail init)
        if self.args.resume and self._finished("vae", "shapes", self.work / "vae", s.vae_steps):
            self.log(f"reusing the finished run {self.work / 'vae'}")  # its start, the image model's weights, is not needed
            return
        inflated = collapse_to_last_tap(final_checkpoint(self.work / "vae-image") / "model", self.work / "vae-inflated")
        self._train("vae", "shapes", self.work / "vae", s.vae_steps, s.vae_batch, "--pretrained", str(inflated), *data)

    def export_vae(self) -> None:
        from osp_core.builtin_recipe import export_vae, final_checkpoint, latent_scaling_factor
        from osp_core.models.causal_vae import CausalVideoVAE

        checkpoint = final_checkpoint(self.work / "vae")
        vae = CausalVideoVAE.from_pretrained(str(checkpoint / "model")).eval()
        clips = sorted((self.work / "data" / "train" / "videos").glob("*.mp4"))[: self.scale.latent_scale_clips]
        self.scaling_factor = latent_scaling_factor(vae, clips, seed=TRAIN_SEED)
        self.log(f"latent scaling factor {self.scaling_factor:.5f} (1 / std over {len(clips)} clips)")
        export_vae(checkpoint, self.repo, self.scaling_factor)

    def train_t2v(self) -> None:
        from osp_core.builtin_recipe import VERSION, export_transformer, final_checkpoint

        s = self.scale
        inputs = [
            "--data", str(self.work / "data" / "train" / "data.txt"), "--vae", str(self.repo / "vae"),
            "--text-encoder", str(self.repo), "--cache-dir", str(self.work / "cache"),
        ]  # fmt: skip
        previous = None
        for run, preset, steps in T2V_STAGES:
            start = []
            if previous is not None:
                # each later stage starts from the previous one's EMA weights exactly as they would ship (fp16)
                weights = self.work / f"{previous}-weights"
                export_transformer(final_checkpoint(self.work / previous), weights)
                start = ["--pretrained", str(weights / VERSION)]
            self._train("t2v", preset, self.work / run, getattr(s, steps), s.t2v_batch, *start, *inputs)
            previous = run

    def assemble(self) -> None:
        from osp_core.builtin_recipe import TEACACHE_CALIBRATION_SEED, TEACACHE_THRESHOLD, check_repository, export_transformer, final_checkpoint, install, teacache_calibration_captions, write_sampling_defaults
        from osp_core.data.shapes import FPS

        _, self.transformer_weights = export_transformer(final_checkpoint(self.work / T2V_STAGES[-1][0]), self.repo)
        # frames and size come from the 17x64x64 folder; TeaCache's threshold was chosen by
        # benchmarks/caching.py and its coefficients are fitted to this model now
        write_sampling_defaults(self.repo, fps=FPS, teacache_threshold=TEACACHE_THRESHOLD)
        prompts = self.work / "eval" / "calibration.txt"
        prompts.parent.mkdir(parents=True, exist_ok=True)
        prompts.write_text("\n".join(teacache_calibration_captions(self.scale.calibration_captions)) + "\n")
        steps = () if self.scale.calibration_steps is None else ("--steps", str(self.scale.calibration_steps))
        for method in ("teacache", "magcache"):  # MagCache's ratios from the same prompts
            self.osp("t2v", "calibrate-cache", "--prompts", str(prompts), "--model", str(self.repo), "--method", method, "--seed", str(TEACACHE_CALIBRATION_SEED), *steps, "--device", "cpu", "--dtype", "fp32", "--write")
        self.repository_bytes = check_repository(self.repo)
        self.log(f"repository {self.repository_bytes / 1e6:.2f} MB")
        install(self.repo, self.target, overwrite=True)  # refused earlier unless --overwrite

    def evaluate_vae(self) -> None:
        self.vae_eval = vae_heldout_eval(self.osp, self.model_ref(), self.work / "data" / "heldout" / "videos", self.work / "eval" / "recon", self.log)

    def evaluate_t2v(self) -> None:
        self.t2v_eval = [t2v_eval(self.osp, self.model_ref(), self.scale.captions, self.work / "eval", scheduler, steps, guidance) for scheduler, steps, guidance in self.scale.evals]

    def write_results(self, started: float) -> None:
        from osp_core.builtin_recipe import curve_svg, curve_table, final_checkpoint, loss_history, repository_size, results_markdown, run_train_seconds, write_curve_csv

        training, curves = {}, {}
        for name in ("vae-image", "vae", *(run for run, _, _ in T2V_STAGES)):
            run = self.work / name
            summary = json.loads((run / "summary.json").read_text())
            losses = loss_history(final_checkpoint(run))
            state = json.loads((final_checkpoint(run) / "trainer_state.json").read_text())
            curves[name] = losses
            training[name] = {
                "steps": summary["steps"],
                "seconds_per_step": summary["seconds_per_step"] or 0.0,
                "train_seconds": run_train_seconds(summary, state),
                "batch_size": state["config"]["run"]["batch_size"],
                "table": curve_table(losses),
            }
        results = {
            "name": self.name,
            "smoke": self.args.smoke,
            "command": "python scripts/build_builtin.py " + " ".join(sys.argv[1:]),
            "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {_torch_threads()}",
            "vae_eval": self.vae_eval,
            "t2v_eval": self.t2v_eval,
            "stages": self.stages,
            "wall_seconds": time.perf_counter() - started,
            "repository_bytes": self.repository_bytes,
            "part_bytes": {part: repository_size(self.repo / part) for part in sorted(p.name for p in self.repo.iterdir() if p.is_dir())},
            "scaling_factor": self.scaling_factor,
            "transformer_weights": self.transformer_weights,
            "training": training,
        }
        for folder in (self.work, self.target):
            write_curve_csv(folder / "training-loss.csv", curves)
            for name, losses in curves.items():
                (folder / f"{name}-loss.svg").write_text(curve_svg(losses, f"{name} training loss (log scale)"))
            (folder / "RESULTS.md").write_text(results_markdown(results))
            write_json(folder / "results.json", results, default=str)

    # --- all ----------------------------------------------------------------------------------
    def run(self) -> None:
        started = time.perf_counter()
        self.check_target()
        self.work.mkdir(parents=True, exist_ok=True)
        if not self.args.resume:
            # a fresh build: stale runs would be resumed into, and the feature cache is keyed by
            # the VAE's folder, not its weights, so latents of an older VAE would be reused
            for stale in ("vae-init", "vae-image", "vae-inflated", "vae", "cache", "repo", "eval", *(f"{run}{suffix}" for run, _, _ in T2V_STAGES for suffix in ("", "-weights"))):
                shutil.rmtree(self.work / stale, ignore_errors=True)
        self.log(f"{'SMOKE ' if self.args.smoke else ''}build of {self.model_ref()} in {self.work}")
        steps = [
            ("data (osp data synth)", self.data),
            ("text encoder (tiny T5)", self.text_encoder),
            ("VAE training (osp vae train: frames, then clips)", self.train_vae),
            ("VAE export + latent scale", self.export_vae),
            ("T2V training (osp t2v train: stages 1, 2, 3)", self.train_t2v),
            ("assemble + install", self.assemble),
            ("VAE evaluation (osp vae recon + osp eval shapes)", self.evaluate_vae),
            ("T2V evaluation (osp t2v sample + osp eval shapes)", self.evaluate_t2v),
        ]
        for title, build in steps:
            with self.stage(title):
                build()
        self.write_results(started)
        self.log(f"done in {time.perf_counter() - started:.0f} s: {self.target} (results: {self.work / 'RESULTS.md'})")
        print((self.work / "RESULTS.md").read_text())
        if self.args.smoke and not self.args.keep:
            shutil.rmtree(self.target)
            if self.target.parent == BUILTIN_ROOT.resolve() and not any(self.target.parent.iterdir()):
                self.target.parent.rmdir()  # the build created osp_core/builtin/ only for the smoke model
            self.log(f"removed the smoke model {self.target} (pass --keep to keep it)")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# --- shared with `make builtin-edit`: running osp, and the quality checks ---------------------


def run_osp(args: Sequence[str], env: dict[str, str], log: Callable[[str], None], capture_json: bool = False) -> dict | None:
    """Run `osp ARGS` as a user would (a fresh process); with capture_json, parse its stdout."""
    command = [sys.executable, "-m", "osp_cli", *args]
    log("$ osp " + " ".join(shlex.quote(a) for a in args))
    proc = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE if capture_json else None, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"build failed: `osp {' '.join(args[:3])} ...` exited with {proc.returncode}")
    return json.loads(proc.stdout) if capture_json else None


def vae_heldout_eval(osp: Callable[..., dict | None], model: str, heldout: Path, out: Path, log: Callable[[str], None]) -> dict:
    """The VAE's round trip of the held-out clips in `heldout`: `osp vae recon` of each (mp4, as a
    user gets it) + `osp eval shapes --reference` (PSNR, SSIM); `osp(*args, capture_json=)` runs
    the CLI."""
    from osp_cli.main import app  # `osp vae recon` in this process: 100 clips, one model load each

    originals = sorted(heldout.glob("*.mp4"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log(f"$ osp vae recon ... --model {model} x {len(originals)} (held-out clips)")
    for clip in originals:
        try:
            app(["vae", "recon", str(clip), "-o", str(out / clip.name), "--model", model, "--device", "cpu"], standalone_mode=False)
        except OSPError as exc:
            raise SystemExit(f"build failed: osp vae recon {clip.name}: {exc}") from None
    return osp("eval", "shapes", *map(str, sorted(out.glob("*.mp4"))), "--reference", str(heldout), "--json", capture_json=True)["summary"]


def t2v_eval(osp: Callable[..., dict | None], model: str, captions: int, eval_dir: Path, scheduler: str, steps: int, guidance: float) -> dict:
    """Text to video on the first `captions` captions of the shapes world with fixed seeds
    (`osp t2v sample`, fp32: the quality table of record) + `osp eval shapes`."""
    from osp_core.data.shapes import all_captions

    prompts = eval_dir / "captions.txt"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("\n".join(all_captions()[:captions]) + "\n")
    out = eval_dir / f"t2v-{scheduler.lower()}-{steps}-g{guidance:g}"
    shutil.rmtree(out, ignore_errors=True)
    sampled = osp(
        "t2v", "sample", "--prompts", str(prompts), "--model", model, "--frames", "17", "--height", "64",
        "--width", "64", "--fps", "8", "--steps", str(steps), "--scheduler", scheduler, "--guidance", str(guidance),
        "--seed", str(SAMPLE_SEED), "--device", "cpu", "--dtype", "fp32", "-o", str(out), "--json", capture_json=True,
    )  # fmt: skip
    videos = [v["video"] for v in sampled["videos"]]
    per_video = [v["seconds"]["denoise"] + v["seconds"]["decode"] for v in sampled["videos"]]
    report = osp("eval", "shapes", *videos, "--json", capture_json=True)
    return {"scheduler": scheduler, "steps": steps, "guidance": guidance, "summary": report["summary"], "seconds_per_video": sum(per_video) / len(per_video), "output_dir": str(out)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        Build(args).run()
    except OSPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
