#!/usr/bin/env python
"""`make builtin-edit`: train the edit control module of `builtin:shapes` with `osp` itself and
measure it against the training-free blend engine.

Steps (each an `osp` command or a benchmark script):
  1. `osp data synth --objects 2`: two-object clips (per-frame boxes and centres annotated);
  2. `osp edit train --preset shapes-stage1` (motion only), `shapes-stage2` (content + motion,
     decoupled) and `shapes-stage3` (temporal attention of the control blocks), each from the
     previous stage's model/, beside the frozen shapes transformer, latents and T5 cached;
  3. the stage-3 module exported (fp16) into a copy of the shapes repository (`edit/`);
  4. `benchmarks/edit.py` on that copy: 40 two-object edits with seeds training never saw,
     both engines;
  5. the module is installed as osp_core/builtin/shapes/edit only when the control engine beats
     blend on trajectory error (else the numbers are reported and nothing is installed), with
     EDIT_RESULTS.md (table, wall time per step) beside it.

    python scripts/build_builtin_edit.py             # the full build (about 1 h on 2 CPU cores)
    python scripts/build_builtin_edit.py --smoke     # minutes: tiny step counts, nothing installed
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from osp_core.hub import BUILTIN_ROOT  # noqa: E402

DATA_SEED = 7  # the benchmark's edits use seed 90000 and up: never seen in training
FULL = {"clips": 1200, "stage1": None, "stage2": None, "stage3": None, "edits": 40}
SMOKE = {"clips": 16, "stage1": 4, "stage2": 4, "stage3": 2, "edits": 2}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace an installed osp_core/builtin/shapes/edit")
    p.add_argument("--resume", action="store_true", help="continue interrupted training runs and reuse the data")
    p.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "builtin-shapes-edit")
    args = p.parse_args(argv)
    scale = SMOKE if args.smoke else FULL
    work = args.work_dir.resolve()
    shapes = BUILTIN_ROOT / "shapes"
    target = shapes / "edit"
    if target.exists() and not args.overwrite and not args.smoke:
        raise SystemExit(f"'{target}' already exists (pass --overwrite, or make builtin-edit OVERWRITE=1)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[build-edit {datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    def run(name: str, command: list[str]) -> None:
        log("$ " + " ".join(shlex.quote(c) for c in command))
        t0 = time.perf_counter()
        if subprocess.run(command, cwd=ROOT, env=env).returncode != 0:
            raise SystemExit(f"build failed at {name}")
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0

    osp = [sys.executable, "-m", "osp_cli"]
    data = work / "data"
    if not (args.resume and (data / "data.txt").is_file()):
        run("data (osp data synth --objects 2)", [*osp, "data", "synth", "--objects", "2", "--out", str(data), "--num", str(scale["clips"]), "--seed", str(DATA_SEED), "--overwrite"])
    previous = None
    for stage in (1, 2, 3):
        out = work / f"stage{stage}"
        command = [*osp, "edit", "train", "--preset", f"shapes-stage{stage}", "--model", str(shapes), "--data", str(data / "data.txt"), "--cache-dir", str(work / "cache"), "-o", str(out)]
        if scale[f"stage{stage}"] is not None:
            command += ["--max-steps", str(scale[f"stage{stage}"]), "--checkpoint-every", str(scale[f"stage{stage}"])]
        if previous is not None:
            command += ["--edit-module", str(previous)]
        if args.resume and (out / "summary.json").is_file() and not json.loads((out / "summary.json").read_text()).get("stopped_by_signal"):
            log(f"reusing the finished run {out}")
        else:
            run(f"edit training, stage {stage} (osp edit train --preset shapes-stage{stage})", command + (["--resume", "latest"] if args.resume else ["--overwrite"]))
        previous = Path(json.loads((out / "summary.json").read_text())["checkpoint"]) / "model"

    # a copy of the shapes repository with the module, so the installed model stays as it is
    from osp_core.models.edit_control import EditControl

    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(shapes, repo, ignore=shutil.ignore_patterns("edit", "*.svg", "*.csv", "*.md"))
    module = EditControl.from_pretrained(str(previous)).half()
    module.save_pretrained(str(repo / "edit"), safe_serialization=True)
    size = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
    log(f"repository with edit/: {size / 1e6:.2f} MB")

    bench = work / "bench"
    run("evaluation (benchmarks/edit.py, both engines)", [sys.executable, "benchmarks/edit.py", "--num", str(scale["edits"]), "--engine", "blend", "--engine", "control", "--model", str(repo), "--out", str(bench)] + (["--steps", "4"] if args.smoke else []))
    results = json.loads((bench / "results.json").read_text())
    blend, control = results["blend"]["summary"], results["control"]["summary"]
    better = control["trajectory_error"] < blend["trajectory_error"]
    total = time.perf_counter() - started
    lines = [
        "# builtin:shapes edit module: build results",
        "",
        f"Built by `python scripts/build_builtin_edit.py{' --smoke' if args.smoke else ''}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC ({platform.machine()}, {os.cpu_count()} CPU cores).",
        "",
        "| engine | edits | outside PSNR (dB) | colour correct | shape correct | trajectory error (px) | first-frame PSNR (dB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in (("blend", blend), ("control", control)):
        lines.append(f"| {name} | {s['edits']} | {s['psnr_outside']:.2f} | {s['color_accuracy']:.1%} | {s['shape_accuracy']:.1%} | {s['trajectory_error']:.2f} | {s['first_frame_psnr']:.2f} |")
    lines += ["", "| step | seconds |", "| --- | ---: |"] + [f"| {k} | {v:.0f} |" for k, v in seconds.items()] + [f"| **total** | **{total:.0f}** ({total / 3600:.2f} h) |", ""]
    lines.append(f"Repository size with edit/: {size / 1e6:.2f} MB. Control beats blend on trajectory error: {'yes' if better else 'no'}.")
    report = "\n".join(lines) + "\n"
    (work / "EDIT_RESULTS.md").write_text(report)
    print(report)
    if args.smoke or not better:
        log("nothing installed" + ("" if args.smoke else ": the control module does not beat blend on trajectory error"))
        return 0 if args.smoke else 1
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(repo / "edit", target)
    (shapes / "EDIT_RESULTS.md").write_text(report)
    log(f"installed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
