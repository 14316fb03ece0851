"""Cache calibration: sample without caching, record how the transformer's input and output
change from step to step, and fit what a cache skips steps by: TeaCache's polynomial or
MagCache's per-step magnitude ratios. Torch loads after the option checks, so those refuse at
once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..parallel.layout import launched_world
from .progress import NoProgress, SamplingProgress, quiet_libraries
from .sampling import SamplingRun
from .sampling_plan import SamplingJob, plan_sampling


CALIBRATED_CACHES = ("teacache", "magcache")


@dataclass
class CacheFit:
    """A cache's values fitted for one model and sampling setting: TeaCache's coefficients, or
    MagCache's ratios (`method`) in `coefficients`."""

    coefficients: list[float]
    steps: int  # teacache: calibration points (consecutive steps); magcache: steps per run
    rms_error: float | None  # of TeaCache's polynomial over its points (None for MagCache)
    model: str
    version: str
    sampling: dict[str, Any]
    written: str | None = None  # the sampling.json updated with the fit
    method: str = "teacache"

    def to_dict(self) -> dict[str, Any]:
        values = {"coefficients": self.coefficients} if self.method == "teacache" else {"ratios": self.coefficients}
        return {
            "method": self.method,
            **values,
            "calibration_steps": self.steps,
            "rms_error": self.rms_error,
            "model": self.model,
            "version": self.version,
            "sampling": self.sampling,
            "written": self.written,
        }


def calibrate_cache(job: SamplingJob, method: str = "teacache", degree: int = 4, write: bool = False, progress: SamplingProgress | None = None) -> CacheFit:
    """Sample `job`'s prompts without caching and fit `method`'s values: for TeaCache, how much
    block 0's modulated input and the transformer output change from step to step, fitted by a
    polynomial of `degree`; for MagCache, each step's residual magnitude ratio, averaged over
    the prompts. `write` stores them in the model folder's sampling.json."""
    import numpy as np

    from ..hub import BUILTIN_PREFIX
    from ..pipelines.t2v_inputs import (
        TEACACHE_MAX_DEGREE,
        read_sampling_file,
        write_sampling_file,
    )

    method = method.strip().lower()
    if method not in CALIBRATED_CACHES:
        raise InputError(f"unknown --method '{method}'", "use " + " or ".join(CALIBRATED_CACHES))
    if not 1 <= degree <= TEACACHE_MAX_DEGREE:
        raise InputError(f"--degree must be in 1..{TEACACHE_MAX_DEGREE}, got {degree}", "pass e.g. --degree 4")
    if write and job.model.startswith(BUILTIN_PREFIX):
        # the built-in model is package data: writing would change it for every user of this install
        raise InputError(f"--write would change '{job.model}', which ships inside the package", "copy its folder (osp_core/builtin/NAME) and pass --model DIR, or leave out --write")
    from ..pipelines.caching import MagCacheCalibration, TeaCacheCalibration, fit_magcache_ratios, fit_teacache_coefficients

    if launched_world()[1] > 1:
        raise InputError("osp t2v calibrate-cache runs in one process", "run it without torchrun")
    plan = plan_sampling(SamplingJob(**{**job.__dict__, "cache": "none", "cache_threshold": None, "guidance_interval": None}), check_outputs=False)
    root = plan.repository.root
    if write and (root is None or plan.repository.is_hub):
        raise InputError(f"--write needs a local model folder, and '{job.model}' is a Hub repository", "download it and pass --model DIR, or leave out --write and copy the coefficients")
    progress = progress or NoProgress()
    run = SamplingRun(plan, progress)
    calibration = TeaCacheCalibration() if method == "teacache" else MagCacheCalibration()
    with quiet_libraries():
        pipe, embeddings = run.load()
        calibration.attach(pipe.transformer)
        try:
            for prompt_index, encoded in embeddings.items():
                run.denoise(pipe, prompt_index, encoded, [calibration])
        finally:
            calibration.detach()
    sampling = {"steps": plan.steps, "guidance": plan.guidance, "scheduler": plan.scheduler, "frames": plan.frames, "height": plan.height, "width": plan.width, "prompts": len(job.prompts)}
    if method == "magcache":
        ratios = fit_magcache_ratios(calibration.runs)
        fit = CacheFit(ratios, len(ratios), None, job.model, plan.version, sampling, method="magcache")
        stored = {"magcache_ratios": ratios, "magcache_scheduler": plan.scheduler}
    else:
        coefficients = fit_teacache_coefficients(calibration.pairs, degree)
        x, y = (np.array(v) for v in zip(*calibration.pairs))
        rms = float(np.sqrt(np.mean((np.polyval(coefficients, x) - y) ** 2)))
        fit = CacheFit(coefficients, len(calibration.pairs), rms, job.model, plan.version, sampling)
        stored = {"teacache_coefficients": coefficients}
    if write:
        fit.written = str(write_sampling_file(root, {**read_sampling_file(root), **stored}))
    return fit
