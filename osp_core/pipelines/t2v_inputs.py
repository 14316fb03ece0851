"""Text-to-video settings that can be checked before any model is imported or loaded:
frame counts, sizes, weight versions, scheduler names, the T5 encoder's location and optional
packages (no torch/diffusers imports here, so the CLI reports bad input at once)."""

from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HubUnavailableError, InputError, ModelLoadError
from ..hub import resolve_model_dir

DEFAULT_TEXT_ENCODER = "DeepFloyd/t5-v1_1-xxl"
DEFAULT_VERSION = "65x512x512"
# released transformer folders, used to pick weights by frame count before anything is downloaded
RELEASED_VERSIONS = ("65x512x512", "221x512x512")

# the original sampler's `--sample_method` names; the diffusers class is NAME + "Scheduler"
SCHEDULER_NAMES = (
    "PNDM",
    "DDIM",
    "DDPM",
    "EulerDiscrete",
    "EulerAncestralDiscrete",
    "DPMSolverMultistep",
    "DPMSolverSinglestep",
    "HeunDiscrete",
    "DEISMultistep",
    "KDPM2AncestralDiscrete",
)

# PNDM's default config starts with Runge-Kutta steps over the last 4 timesteps
MIN_STEPS = {"PNDM": 4}
# every scheduler's default config has 1000 training timesteps: more steps than that repeat
# timesteps (the step ratio rounds to 0), and `set_timesteps` builds arrays of one entry per
# step (PNDM several), so the count also sizes memory
MAX_STEPS = 1000

_VERSION_RE = re.compile(r"^(\d+)x(\d+)x(\d+)$")

SAMPLING_FILE = "sampling.json"
"""Optional file at a model repository's root with its sampling defaults (e.g. {"fps": 8})."""
SAMPLING_KEYS: dict[str, type] = {
    "fps": float,
    "steps": int,
    "guidance": float,
    "scheduler": str,
    # TeaCache's fitted polynomial (highest power first) and its default threshold for this model
    "teacache_coefficients": list,
    "teacache_threshold": float,
    # MagCache's fitted magnitude ratio per denoising step, and the scheduler they were fitted with
    "magcache_ratios": list,
    "magcache_scheduler": str,
    # `osp edit --strength` where none is given (1 without it: the region starts from noise)
    "edit_strength": float,
    # `--speed fast|fastest`: {name: {SPEED_FIELDS}} (`check_speed_profiles`)
    "speed_profiles": dict,
}
FALLBACK_SAMPLING = {"fps": 24.0, "steps": 150, "guidance": 7.5, "scheduler": "PNDM", "edit_strength": 1.0}
"""Defaults of the original sampler, for repositories without sampling.json (the released one);
an edit's region starts from noise."""
# the smallest value each number may take, and whether the bound itself is allowed
_SAMPLING_LOWER = {"fps": (0.0, False), "steps": (1, True), "guidance": (0.0, True), "teacache_threshold": (0.0, False), "edit_strength": (0.0, False)}
CACHE_MAX_THRESHOLD = 1.0  # every cache threshold lies in [0, 1]
_SAMPLING_UPPER = {"steps": MAX_STEPS, "teacache_threshold": CACHE_MAX_THRESHOLD, "edit_strength": 1.0}  # the largest, allowed
TEACACHE_MAX_DEGREE = 9  # sampling.json holds 2 to 10 coefficients
# list keys of sampling.json: (fewest, most) entries
_SAMPLING_LIST_LENGTHS = {"teacache_coefficients": (2, TEACACHE_MAX_DEGREE + 1), "magcache_ratios": (2, 4 * MAX_STEPS)}

CACHE_METHODS = ("none", "pab", "teacache", "fbcache", "magcache", "easycache", "fastercache")
# the caches `--cache-threshold` applies to, and their default thresholds (None: the model's
# sampling.json); every one takes [0, 1], and 0 never skips (the same video as --cache none)
THRESHOLD_CACHES: dict[str, float | None] = {"teacache": None, "fbcache": 0.05, "magcache": 0.06, "easycache": 0.05}
# the caches that skip work of the unconditional half: they need guidance to be on
GUIDANCE_CACHES = ("fastercache",)
# the caches that replace the transformer's forward to skip its block stack (`caching.BlockStackCache`)
BLOCK_STACK_CACHES = ("teacache", "fbcache", "magcache", "easycache")


def prompt_lines(text: str, source: str, comments: bool = False, limit: int | None = None) -> list[str]:
    """The prompts of a prompt file's `text`: one per non-blank line, stripped (with `comments`,
    lines starting with # are skipped too). `source` names the file in the one-line error for
    a file without prompts, or (with `limit`) with more than `limit`."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not (comments and line.strip().startswith("#"))]
    if not lines:
        raise InputError(f"prompt file '{source}' has no prompts", "write one prompt per line" + (" (lines starting with # are comments)" if comments else ""))
    if limit is not None and len(lines) > limit:
        raise InputError(f"prompt file '{source}' has {len(lines)} prompts, more than the {limit} allowed", f"keep {limit} or fewer")
    return lines


def read_prompt_file(path: str | Path, comments: bool = False, limit: int | None = None) -> list[str]:
    """`prompt_lines` of the UTF-8 text file `path` (a BOM is dropped); a one-line `InputError`
    when it is missing, a folder or unreadable."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"prompt file '{path}' is a directory", "pass a text file with one prompt per line")
    if not path.is_file():
        raise InputError(f"prompt file '{path}' does not exist", "pass a text file with one prompt per line")
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: editors on Windows start files with a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read prompt file '{path}': {exc.__class__.__name__}", "pass a UTF-8 text file with one prompt per line") from None
    return prompt_lines(text, str(path), comments, limit)


def scheduler_name(name: str) -> str:
    """The canonical scheduler name (case-insensitive, optional "Scheduler" suffix)."""
    key = name.strip().lower().removesuffix("scheduler")
    for known in SCHEDULER_NAMES:
        if known.lower() == key:
            return known
    raise InputError(f"unknown scheduler '{name}'", "choose one of " + ", ".join(SCHEDULER_NAMES))


def fewest_steps(scheduler: Any) -> int:
    """The fewest steps `scheduler` can run: a canonical name (its default config, as osp
    builds it) or a diffusers scheduler (PNDM with `skip_prk_steps` runs any number)."""
    if isinstance(scheduler, str):
        return MIN_STEPS.get(scheduler, 1)
    if getattr(scheduler.config, "skip_prk_steps", False):
        return 1
    return MIN_STEPS.get(type(scheduler).__name__.removesuffix("Scheduler"), 1)


def check_steps(scheduler: str, steps: int, option: str = "--steps") -> None:
    """Raise `InputError` when `scheduler` (a canonical name) cannot run `steps` steps."""
    least = fewest_steps(scheduler)
    if steps < least:
        raise InputError(f"{scheduler} needs at least {least} steps, got {steps}", f"pass {option} {least} or more")
    check_max_steps(steps, option)


def check_max_steps(steps: int, option: str = "--steps") -> None:
    """Raise `InputError` when `steps` exceeds MAX_STEPS (any scheduler)."""
    if steps > MAX_STEPS:
        raise InputError(f"{option} must be <= {MAX_STEPS} (the schedulers' {MAX_STEPS} training timesteps), got {steps}", f"pass {option} {MAX_STEPS} or fewer")


def check_sampling_settings(settings: object, source: str) -> dict[str, float | int | str]:
    """`settings` (a sampling.json's content) with each value as its key's type; a one-line
    ModelLoadError naming `source` and the key when it is not a valid set of SAMPLING_KEYS."""
    if not isinstance(settings, dict):
        raise ModelLoadError(f"'{source}' is not a JSON object", 'write e.g. {"fps": 8}')
    checked: dict[str, float | int | str | list[float]] = {}
    for key, value in settings.items():
        kind = SAMPLING_KEYS.get(key)
        if kind is None:
            raise ModelLoadError(f"unknown key '{key}' in '{source}'", f"use only {', '.join(SAMPLING_KEYS)}")
        fewest, most = _SAMPLING_LIST_LENGTHS.get(key, (0, 0))
        if kind is dict:
            checked[key] = check_speed_profiles(value, source)
            continue
        if kind is list:
            ok = isinstance(value, list) and fewest <= len(value) <= most and all(_is_number(v, float) for v in value)
        else:
            ok = isinstance(value, str) if kind is str else _is_number(value, kind)
        if not ok:
            wanted = {int: "an integer", float: "a number", str: "a string", list: f"a list of {fewest} to {most} numbers"}[kind]
            raise ModelLoadError(f"'{key}' in '{source}' must be {wanted}, got {value!r}", f"fix {SAMPLING_FILE}")
        if key in _SAMPLING_LOWER:
            low, inclusive = _SAMPLING_LOWER[key]
            if value < low or (value == low and not inclusive) or value > _SAMPLING_UPPER.get(key, math.inf):
                bounds = f"{'>=' if inclusive else '>'} {low:g}" + (f" and <= {_SAMPLING_UPPER[key]:g}" if key in _SAMPLING_UPPER else "")
                raise ModelLoadError(f"'{key}' in '{source}' is out of range: {value!r} (it must be {bounds})", f"fix {SAMPLING_FILE}")
        checked[key] = [float(v) for v in value] if kind is list else kind(value)
    for key in ("scheduler", "magcache_scheduler"):
        if key in checked:
            checked[key] = scheduler_name(str(checked[key]))
    if "speed_profiles" in checked:
        # a profile's cache may need values read after it (TeaCache's coefficients, MagCache's ratios)
        for name, profile in checked["speed_profiles"].items():
            scheduler = profile.get("scheduler", checked.get("scheduler", FALLBACK_SAMPLING["scheduler"]))
            try:
                check_steps(scheduler, profile.get("steps", checked.get("steps", FALLBACK_SAMPLING["steps"])), "steps")
                check_cache_for_model(profile.get("cache", "none"), checked, scheduler)
            except InputError as exc:
                raise ModelLoadError(f"speed profile '{name}' in '{source}' cannot run: {exc.message}", f"fix speed_profiles.{name} in {SAMPLING_FILE}") from None
    return checked


def _is_number(value: object, kind: type) -> bool:
    """A finite JSON number of `kind` (int accepts whole floats such as 150.0)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return kind is float or float(value).is_integer()


def sampling_defaults(root: Path | None) -> dict[str, float | int | str]:
    """FALLBACK_SAMPLING updated with the repository's sampling.json (if `root` has one): the
    settings `osp t2v sample` uses where the user gives none. A malformed file is a one-line
    ModelLoadError naming the key."""
    defaults: dict[str, float | int | str] = dict(FALLBACK_SAMPLING)
    if root is not None:
        defaults.update(read_sampling_file(root))
    return defaults


def check_cache_options(method: str, threshold: float | None) -> str:
    """The canonical cache name; one-line `InputError`s for an unknown method or a threshold that
    does not apply or is out of range (0 <= threshold <= 1; 0 never skips)."""
    key = method.strip().lower()
    if key not in CACHE_METHODS:
        raise InputError(f"unknown cache '{method}'", "use " + ", ".join(CACHE_METHODS))
    if threshold is not None:
        if key not in THRESHOLD_CACHES:
            raise InputError(f"--cache-threshold applies to --cache {', '.join(THRESHOLD_CACHES)}, not to --cache {key}", "leave out --cache-threshold, or pass one of those caches")
        check_cache_threshold(threshold)
    return key


def check_cache_threshold(threshold: float | None) -> None:
    """A one-line `InputError` for a cache threshold outside [0, 1] (None: not given)."""
    if threshold is not None and (not math.isfinite(threshold) or not 0 <= threshold <= CACHE_MAX_THRESHOLD):
        raise InputError(f"--cache-threshold must be in [0, {CACHE_MAX_THRESHOLD:g}], got {threshold}", "pass e.g. --cache-threshold 0.1 (higher skips more steps; 0 never skips)")


def check_cache_for_model(method: str, sampling: dict[str, Any], scheduler: str | None = None, guidance: float | None = None) -> None:
    """One-line `InputError`s, before any model loads, for a cache this model or setting cannot
    take: TeaCache / MagCache without the model's fitted values, MagCache ratios fitted with
    another scheduler (a schedule's noise levels set how much each step changes), a cache of
    the unconditional half without guidance. `method` is canonical, `scheduler` too (None:
    not checked, as `guidance`)."""
    if method == "teacache" and sampling.get("teacache_coefficients") is None:
        raise InputError("this model has no TeaCache coefficients (teacache_coefficients in its sampling.json)", "fit them with `osp t2v calibrate-cache`, or use --cache pab")
    if method == "magcache":
        if sampling.get("magcache_ratios") is None:
            raise InputError("this model has no MagCache ratios (magcache_ratios in its sampling.json)", "fit them with `osp t2v calibrate-cache --method magcache`, or use --cache easycache (no calibration)")
        fitted = sampling.get("magcache_scheduler")
        if fitted is not None and scheduler is not None and fitted != scheduler:
            raise InputError(f"--cache magcache cannot take --scheduler {scheduler}: this model's MagCache ratios were fitted with {fitted}", f"pass --scheduler {fitted}, or fit ratios for {scheduler} with `osp t2v calibrate-cache --method magcache --scheduler {scheduler}`")
    if method in GUIDANCE_CACHES and guidance is not None and guidance <= 1.0:
        raise InputError(f"--cache {method} reuses the unconditional half of guidance, and --guidance {guidance:g} turns guidance off", "pass --guidance above 1, or another --cache")


# -- speed profiles (`--speed`) -------------------------------------------------------------

SPEED_PROFILES = ("default", "fast", "fastest")
"""`--speed` names: default is the model's plain settings; the others are held in its
sampling.json (`speed_profiles`) or, for the released weights, `RELEASED_SPEED_PROFILES`."""
SPEED_FIELDS: dict[str, type] = {"scheduler": str, "steps": int, "cache": str, "cache_threshold": float, "guidance_interval": list}
"""What a profile may set; each field is filled only where the user passed no option of its own."""
SPEED_HELP = "Speed profile: default (the model's settings), fast or fastest (the scheduler, steps, cache and threshold recorded in the model's sampling.json; the released weights' come from published measurements). Options given explicitly win over the profile's."


def check_speed_profiles(profiles: object, source: str) -> dict[str, dict[str, Any]]:
    """sampling.json's `speed_profiles` checked field by field (canonical scheduler and cache
    names, steps, threshold and interval in range); a one-line `ModelLoadError` naming `source`
    and the key. Whether a profile's cache fits the model is checked by the caller, once every
    key is read."""
    fix = f"fix speed_profiles in {SAMPLING_FILE}"
    if not isinstance(profiles, dict):
        raise ModelLoadError(f"'speed_profiles' in '{source}' must be an object of profiles, got {profiles!r}", fix)
    checked: dict[str, dict[str, Any]] = {}
    for name, profile in profiles.items():
        key = f"speed_profiles.{name}"
        if name not in SPEED_PROFILES[1:]:
            raise ModelLoadError(f"unknown speed profile '{name}' in '{source}'", f"name profiles {' or '.join(SPEED_PROFILES[1:])} (default is the model's own settings)")
        if not isinstance(profile, dict):
            raise ModelLoadError(f"'{key}' in '{source}' must be an object, got {profile!r}", fix)
        entry: dict[str, Any] = {}
        for field_name, value in profile.items():
            kind = SPEED_FIELDS.get(field_name)
            if kind is None:
                raise ModelLoadError(f"unknown key '{key}.{field_name}' in '{source}'", f"use only {', '.join(SPEED_FIELDS)}")
            ok = isinstance(value, list) and len(value) == 2 and all(_is_number(v, float) for v in value) if kind is list else isinstance(value, str) if kind is str else _is_number(value, kind)
            if not ok:
                wanted = {int: "an integer", float: "a number", str: "a string", list: "a list of two numbers [LO, HI]"}[kind]
                raise ModelLoadError(f"'{key}.{field_name}' in '{source}' must be {wanted}, got {value!r}", fix)
            try:
                if field_name == "scheduler":
                    value = scheduler_name(value)
                elif field_name == "cache":
                    value = check_cache_options(value, None)
                elif field_name == "steps":
                    value = int(value)
                    if value < 1:
                        raise InputError(f"steps must be >= 1, got {value}")
                    check_max_steps(value, "steps")
                elif field_name == "guidance_interval":
                    value = list(parse_guidance_interval(",".join(repr(float(v)) for v in value)))
                else:
                    value = float(value)
            except InputError as exc:
                raise ModelLoadError(f"'{key}.{field_name}' in '{source}' is not valid: {exc.message}", fix) from None
            entry[field_name] = value
        if "cache_threshold" in entry:
            try:
                check_cache_options(entry.get("cache", "none"), entry["cache_threshold"])
            except InputError as exc:
                raise ModelLoadError(f"'{key}.cache_threshold' in '{source}' is not valid: {exc.message}", fix) from None
        checked[name] = entry
    return checked


@dataclass(frozen=True)
class SpeedChoice:
    """The settings a run uses once its `--speed` profile and explicit options are resolved
    (`resolve_speed`); `from_profile` names the fields the profile filled."""

    speed: str
    scheduler: str
    steps: int
    cache: str
    cache_threshold: float | None
    guidance_interval: tuple[float, float] | None
    from_profile: tuple[str, ...] = ()


def check_speed_name(speed: str | None) -> str:
    """The canonical profile name (None: default); a one-line `InputError` for an unknown one."""
    name = "default" if speed is None else str(speed).strip().lower()
    if name not in SPEED_PROFILES:
        raise InputError(f"unknown speed profile '{str(speed)[:40]}'", "use --speed " + ", ".join(SPEED_PROFILES))  # cut: it may come over HTTP
    return name


def resolve_speed(
    speed: str | None,
    sampling: dict[str, Any],
    scheduler: str | None = None,
    steps: int | None = None,
    cache: str | None = None,
    cache_threshold: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    guidance: float | None = None,
    model: str = "the model",
) -> SpeedChoice:
    """The scheduler, steps, cache, threshold and guidance interval a run uses: each explicit
    option (not None) as given, else the `speed` profile's field (from `sampling`, the model's
    sampling defaults), else the model's default (no cache, guidance at every step). The
    profile's threshold goes with its cache only (an explicit --cache takes its own default),
    and its interval is dropped where `guidance` turns guidance off. One-line `InputError`s:
    an unknown profile, scheduler or cache, a profile the model does not define. Whether the
    result can run (steps for the scheduler, a cache for the model) is the caller's check."""
    name = check_speed_name(speed)
    profile: dict[str, Any] = {}
    if name != "default":
        profiles = sampling.get("speed_profiles") or {}
        if name not in profiles:
            have = ", ".join(["default", *profiles])
            raise InputError(f"{model} has no '{name}' speed profile (speed_profiles in its {SAMPLING_FILE})", f"use --speed {have}")
        profile = profiles[name]
    filled: list[str] = []

    def pick(field_name: str, given: Any, fallback: Any) -> Any:
        if given is not None:
            return given
        if field_name in profile:
            filled.append(field_name)
            return profile[field_name]
        return fallback

    chosen_scheduler = scheduler_name(str(pick("scheduler", scheduler, sampling["scheduler"])))
    chosen_steps = int(pick("steps", steps, sampling["steps"]))
    chosen_cache = check_cache_options(str(pick("cache", cache, "none")), None)
    threshold = cache_threshold
    if threshold is None and "cache_threshold" in profile and profile.get("cache", "none") == chosen_cache:
        threshold = profile["cache_threshold"]
        filled.append("cache_threshold")
    interval = guidance_interval
    if interval is None and "guidance_interval" in profile and (guidance is None or guidance > 1.0):
        interval = tuple(profile["guidance_interval"])
        filled.append("guidance_interval")
    return SpeedChoice(name, chosen_scheduler, chosen_steps, chosen_cache, threshold, interval, tuple(filled))


def parse_guidance_interval(text: str | None) -> tuple[float, float] | None:
    """'LO,HI' -> (LO, HI): noise levels 0 <= LO <= HI <= 1 (timestep / the schedule's training
    timesteps: 0 clean, 1 pure noise) where guidance runs; None for None. One-line `InputError`s."""
    if text is None:
        return None
    hint = "pass two noise levels LO,HI with 0 <= LO <= HI <= 1, e.g. --guidance-interval 0.2,0.8 (1 is pure noise)"
    parts = str(text).split(",")
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise InputError(f"--guidance-interval must be two numbers LO,HI, got '{text}'", hint) from None
    if not (math.isfinite(low) and math.isfinite(high)) or not (0 <= low <= 1 and 0 <= high <= 1):
        raise InputError(f"--guidance-interval must lie in [0, 1], got '{text}'", hint)
    if low > high:
        raise InputError(f"--guidance-interval is reversed: {low:g} > {high:g}", f"pass --guidance-interval {high:g},{low:g}")
    return low, high


def read_sampling_file(root: Path) -> dict:
    """The settings in `root`/sampling.json as written (empty when there is none), checked."""
    path = Path(root) / SAMPLING_FILE
    if not path.is_file():
        return {}
    try:
        given = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"'{path}' is not readable JSON ({exc})", f"fix or delete {SAMPLING_FILE}") from None
    return check_sampling_settings(given, str(path))


def write_sampling_file(root: Path, settings: dict) -> Path:
    """Write `settings` as `root`/sampling.json (checked, strict JSON, atomically)."""
    from ..io.jsonfile import write_json

    path = Path(root) / SAMPLING_FILE
    check_sampling_settings(settings, str(path))  # only what the sampler will accept
    return write_json(path, settings)


def version_size(version: str, available: list[str] | tuple[str, ...]) -> tuple[int, int, int]:
    """(frames, height, width) to sample when the user gives none: those the `version` weights
    were trained on; for a folder path (--transformer), those of the shortest available
    version, else DEFAULT_VERSION's."""
    if _VERSION_RE.match(version):
        return parse_version(version)
    if available:
        return parse_version(sorted(available, key=parse_version)[0])
    return parse_version(DEFAULT_VERSION)


def parse_version(version: str) -> tuple[int, int, int]:
    """'65x512x512' -> (65, 512, 512)."""
    match = _VERSION_RE.match(version)
    if not match:
        raise InputError(f"version '{version}' is not FRAMESxHEIGHTxWIDTH", "use e.g. 65x512x512 or 221x512x512")
    frames, height, width = (int(g) for g in match.groups())
    return frames, height, width


def local_versions(root: Path) -> list[str]:
    """Transformer folders (FRAMESxHxW with a config.json) in a model repository folder."""
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name) and (p / "config.json").is_file()]
    return sorted(found, key=parse_version)


def pick_version(num_frames: int, available: list[str] | tuple[str, ...]) -> str:
    """The weights trained for the shortest videos that still cover `num_frames` frames
    (the longest ones when none does)."""
    if not available:
        raise ModelLoadError("no transformer weights (folders like 65x512x512/) in the model repository", "point --model at an Open-Sora-Plan v1.1.0 repository")
    ordered = sorted(available, key=parse_version)
    for version in ordered:
        if parse_version(version)[0] >= num_frames:
            return version
    return ordered[-1]


def check_video_size(num_frames: int | None, height: int | None, width: int | None, temporal: int = 4, spatial: int = 16) -> None:
    """Raise `InputError` unless frames = `temporal`k+1 and height, width are multiples of
    `spatial` (16 = the VAE's 8x downsampling times the transformer's 2x2 patches). A value
    of None (not given yet) is not checked."""
    if num_frames is not None and (num_frames < 1 or (num_frames - 1) % temporal):
        lower = max((num_frames - 1) // temporal * temporal + 1, 1)
        raise InputError(f"frame count {num_frames} is not {temporal}k+1", f"use {lower} or {lower + temporal} frames")
    for name, value in (("height", height), ("width", width)):
        if value is not None and (value < spatial or value % spatial):
            nearest = max(round(value / spatial) * spatial, spatial)
            raise InputError(
                f"{name} {value} is not a multiple of {spatial} (8 for the VAE x 2 for the patches)",
                f"use e.g. {nearest}",
            )


# -- the T5 text encoder's location (checked before any big model is loaded) ---------------

T5_MODEL_TYPES = ("t5",)
_T5_HINT = f"pass --text-encoder with a T5 v1.1 encoder folder or Hub repo id such as {DEFAULT_TEXT_ENCODER}"


@dataclass
class T5Location:
    """Where the tokenizer and encoder load from: a folder (plus subfolder) or, for Hub weights
    not yet in the local cache, the repo id (transformers then downloads one weight format).
    `source` names it for sidecars and errors."""

    encoder: str
    encoder_subfolder: str | None
    tokenizer: str
    tokenizer_subfolder: str | None
    source: str


def locate_t5(source: str | Path | None, root: Path | None = None) -> T5Location:
    """Resolve the T5 encoder: `source` (folder or Hub repo id) when given, else the model
    repository's `text_encoder/` + `tokenizer/` (when `root` has them), else
    DeepFloyd/t5-v1_1-xxl. Hub ids go through `resolve_model_dir` (only configs are fetched
    here, so an unreachable Hub fails at once and in one line), and the config must be a T5
    one. Raises `ModelLoadError` / `HubUnavailableError`."""
    if source is None and root is not None and (root / "text_encoder" / "config.json").is_file():
        tokenizer_sub = "tokenizer" if (root / "tokenizer").is_dir() else "text_encoder"
        location = T5Location(str(root), "text_encoder", str(root), tokenizer_sub, f"{root}/text_encoder")
        check_t5_config(root / "text_encoder", location.source)
        return location
    name = str(source or DEFAULT_TEXT_ENCODER)
    local = Path(name).expanduser()
    looks_like_path = local.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_like_path and not local.is_dir():
        raise ModelLoadError(f"text encoder folder '{name}' does not exist", f"pass an existing folder or a Hub repo id such as {DEFAULT_TEXT_ENCODER}")
    if local.is_dir():
        folder = local
    else:
        try:
            folder = resolve_model_dir(name, subfolders=["text_encoder", "tokenizer"])
        except HubUnavailableError as exc:
            # hub.py's hint names --model; the fix here is the text encoder's own option
            fix = "unset HF_HUB_OFFLINE to download it" if "HF_HUB_OFFLINE is set" in exc.message else "set HF_HUB_OFFLINE=1 to use the local cache"
            raise HubUnavailableError(f"T5 text encoder {exc.message}", f"pass --text-encoder DIR with a downloaded T5 encoder, or {fix}") from None
    encoder_sub = "text_encoder" if (folder / "text_encoder" / "config.json").is_file() else None
    tokenizer_sub = "tokenizer" if (folder / "tokenizer").is_dir() else encoder_sub
    check_t5_config(folder / encoder_sub if encoder_sub else folder, name)
    encoder_dir = folder / encoder_sub if encoder_sub else folder
    tokenizer_dir = folder / tokenizer_sub if tokenizer_sub else folder
    if local.is_dir() or (_has_weights(encoder_dir) and _has_tokenizer(tokenizer_dir)):
        return T5Location(str(folder), encoder_sub, str(folder), tokenizer_sub, name)
    # configs fetched, weights not cached yet: transformers downloads them by repo id
    return T5Location(name, encoder_sub, name, tokenizer_sub, name)


def check_t5_config(folder: Path, source: str) -> None:
    """Raise `ModelLoadError` unless `folder/config.json` describes a T5 model."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"no config.json in text encoder folder '{source}'", _T5_HINT)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read '{config_path}': {exc.__class__.__name__}", _T5_HINT) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in T5_MODEL_TYPES:
        what = f"model_type {model_type}" if model_type else "no model_type"
        if isinstance(config, dict) and config.get("_class_name"):
            what += f", a {config['_class_name']}"
        raise ModelLoadError(f"text encoder '{source}' is not a T5 encoder ({what})", _T5_HINT)


def _has_weights(folder: Path) -> bool:
    """The folder holds complete encoder weights (single file or every shard of an index)."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return True
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return False
            return all((folder / shard).is_file() for shard in shards)
    return False


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()


def check_clean_caption_deps() -> None:
    """Raise `InputError` when caption cleaning's packages (beautifulsoup4, ftfy) are missing."""
    missing = []
    for module, package in (("bs4", "beautifulsoup4"), ("ftfy", "ftfy")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise InputError(f"--clean-caption needs {' and '.join(missing)}, which {verb} not installed", "pip install 'osp[clean-caption]', or leave out --clean-caption")
