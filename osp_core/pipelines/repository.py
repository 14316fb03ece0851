"""A text-to-video model repository, resolved once and handed on.

`ModelRepository.resolve(model)` finds where a repository laid out like
`LanguageBind/Open-Sora-Plan-v1.1.0` is (a Hub id, a local folder or builtin:NAME), which
transformer versions it has, its sampling defaults (`sampling.json`) and where its T5 comes from,
fetching nothing but small config files. Weights are fetched by `fetch` when a pipeline loads.
Sampling, editing and the web page all start from one of these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelLoadError
from ..hub import BUILTIN_PREFIX, DEFAULT_REPO, is_hub_id, resolve_model_dir
from .t2v_inputs import (
    FALLBACK_SAMPLING,
    RELEASED_VERSIONS,
    T5Location,
    local_versions,
    locate_t5,
    parse_version,
    pick_version,
    sampling_defaults,
)

# TeaCache's published polynomial for the released v1.1.0 weights (TeaCache, Liu et al. 2024,
# fitted on Open-Sora-Plan v1.1 65x512x512 sampling); applied to 221x512x512 too, which was
# trained from the 65-frame weights. Highest power first.
RELEASED_TEACACHE_COEFFICIENTS = [2.05943668e05, -1.48759286e04, 3.06085986e02, 1.31418080e00, 2.39658469e-03]
RELEASED_TEACACHE_THRESHOLD = 0.1  # the published "slow" setting (0.2 is "fast")
# `--speed` profiles of the released weights (no sampling.json), from TeaCache's measurements on
# them: its evaluation of Open-Sora-Plan v1.1.0 65x512x512 (ali-vilab/TeaCache,
# eval/teacache/experiments/opensora_plan.py) runs the original's sampler with rel_l1_thresh 0.1
# ("TeaCache-slow") and 0.2 ("TeaCache-fast"); the paper (arXiv 2411.19108) reports up to 4.41x
# over Open-Sora-Plan at -0.07% VBench. Step counts and schedulers stay the original's: the
# scheduler x steps curve is measured on builtin:shapes only, not on these weights
# (docs/sampling.md, Speed profiles).
RELEASED_SPEED_PROFILES = {
    "fast": {"scheduler": "PNDM", "steps": 150, "cache": "teacache", "cache_threshold": RELEASED_TEACACHE_THRESHOLD},
    "fastest": {"scheduler": "PNDM", "steps": 150, "cache": "teacache", "cache_threshold": 0.2},
}
EDIT_MODULE_FOLDER = "edit"  # an `osp edit` control module trained for the repository's transformer


def read_config_json(folder: Path) -> dict:
    """The config.json of a local model `folder`; `ModelLoadError` when it is unreadable or not an object."""
    path = Path(folder).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read '{path}' ({type(exc).__name__})", "pass a model folder with valid config files") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"'{path}' is not a JSON object", "pass a model folder with valid config files")
    return config


@dataclass
class ModelRepository:
    """Where a text-to-video model repository is and what it holds.

    `root` is a local folder with at least every config file (for a Hub id: its snapshot in the
    Hugging Face cache), or None for the released repository before anything is downloaded
    (its layout is known: `RELEASED_VERSIONS`, no sampling.json, T5 from DeepFloyd).
    `text_encoder` is the user's T5 override (None: the repository's `text_encoder/`, else
    DeepFloyd/t5-v1_1-xxl).
    """

    model: str
    root: Path | None
    versions: list[str]
    sampling: dict = field(default_factory=lambda: dict(FALLBACK_SAMPLING))
    text_encoder: str | None = None

    @classmethod
    def resolve(cls, model: str = DEFAULT_REPO, text_encoder: str | Path | None = None) -> ModelRepository:
        """Find `model` and read its layout and sampling.json (a Hub repo: config files only).
        Raises `ModelLoadError` (missing folder, malformed sampling.json) and
        `HubUnavailableError` (a Hub repo neither cached nor reachable)."""
        model = str(model)
        encoder = None if text_encoder is None else str(text_encoder)
        if model == DEFAULT_REPO:
            # the released repository is frozen at v1.1.0: its layout is known without the Hub
            sampling = {**FALLBACK_SAMPLING, "teacache_coefficients": RELEASED_TEACACHE_COEFFICIENTS, "teacache_threshold": RELEASED_TEACACHE_THRESHOLD, "speed_profiles": RELEASED_SPEED_PROFILES}
            return cls(model, None, list(RELEASED_VERSIONS), sampling, encoder)
        root = resolve_model_dir(model, subfolders=[])  # a Hub repo: its JSON files only
        return cls(model, root, local_versions(root), sampling_defaults(root), encoder)

    # -- what it holds ---------------------------------------------------------------------

    @property
    def is_hub(self) -> bool:
        return is_hub_id(self.model)

    @property
    def vae_source(self) -> str:
        """How a latents header names the VAE: the Hub id or builtin:NAME as given, a local
        folder as an absolute path (so `osp vae decode` finds it from any folder)."""
        if self.model.startswith(BUILTIN_PREFIX) or self.is_hub:
            return self.model
        return str(Path(self.model).expanduser().absolute())

    @property
    def trained_frames(self) -> list[int]:
        """The frame counts its weights were trained on, shortest first."""
        return sorted({parse_version(v)[0] for v in self.versions})

    @property
    def trained_sizes(self) -> list[tuple[int, int]]:
        """The (height, width) its weights were trained on, in the order of its versions."""
        return list(dict.fromkeys(parse_version(v)[1:] for v in self.versions))

    def check_version(self, version: str) -> None:
        """`ModelLoadError` unless `version` (FRAMESxHxW) is one of this repository's."""
        parse_version(version)
        if version in self.versions:
            return
        if self.root is None:  # the released repository: refused before anything downloads
            raise ModelLoadError(
                f"version '{version}' is not a released version of '{self.model}' (released: {', '.join(RELEASED_VERSIONS)})",
                "pass one of the released versions, or --model DIR for a repository with other versions",
            )
        raise ModelLoadError(f"version '{version}' is not in '{self.model}' (available: {', '.join(self.versions) or 'none'})", "pass --version with one of the available versions")

    def pick_version(self, num_frames: int | None) -> str:
        """The weights trained for the shortest videos that cover `num_frames` (the shortest of
        all when None; the longest when none covers it)."""
        return pick_version(1 if num_frames is None else num_frames, self.versions)

    def t5_location(self) -> T5Location:
        """Where T5 loads from, checked now (a T5 config, a reachable Hub or cache)."""
        return locate_t5(self.text_encoder, self.root)

    @property
    def has_text_encoder(self) -> bool:
        """The repository ships its own T5 (`text_encoder/`)."""
        return self.root is not None and (self.root / "text_encoder" / "config.json").is_file()

    @property
    def has_edit_module(self) -> bool:
        """The repository ships a trained `osp edit` control module (`edit/config.json`)."""
        return self.root is not None and (self.root / EDIT_MODULE_FOLDER / "config.json").is_file()

    def teacache(self) -> tuple[list[float], float] | None:
        """(coefficients, default threshold) of TeaCache for this model, if it has them."""
        coefficients = self.sampling.get("teacache_coefficients")
        if coefficients is None:
            return None
        return list(coefficients), float(self.sampling.get("teacache_threshold", RELEASED_TEACACHE_THRESHOLD))

    def read_config(self, part: str) -> dict:
        """The config.json of `part` (vae, a version, or a folder path given by --transformer),
        fetching only config files for a Hub repository."""
        folder = Path(part) if Path(part).is_absolute() or part.startswith((".", "~")) else None
        if folder is None:
            root = self.root if self.root is not None else resolve_model_dir(self.model, subfolders=[])
            folder = root / part
        return read_config_json(folder)

    # -- getting the files -----------------------------------------------------------------

    def fetch(self, parts: list[str]) -> Path:
        """A local folder holding `parts` (subfolders such as vae/, 65x512x512/): downloaded
        into the Hugging Face cache for a Hub repository, as is for a local one."""
        if self.root is not None and not self.is_hub:
            return self.root
        return resolve_model_dir(self.model, subfolders=parts)

    def fetch_edit_module(self) -> Path:
        """The local `edit/` folder: downloaded into the Hugging Face cache for a Hub repository."""
        return self.fetch([EDIT_MODULE_FOLDER]) / EDIT_MODULE_FOLDER

    def fetch_for_sampling(self, version: str | None, with_text_encoder: bool = True) -> Path:
        """Fetch the VAE, the `version` weights (None: none, e.g. --transformer) and the
        repository's own T5 when it is the one used; returns the local root."""
        parts = ["vae"] + ([version] if version else [])
        if with_text_encoder and self.text_encoder is None and self.has_text_encoder:
            parts += ["text_encoder", "tokenizer"]
        return self.fetch(parts)


def check_transformer_folder(folder: str | Path) -> Path:
    """A LatteT2V folder given in place of a version (a training checkpoint's model/)."""
    path = Path(folder).expanduser().absolute()  # relative to where the user is, not to the model
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"no config.json in transformer folder '{folder}'", "pass a LatteT2V folder, such as a training checkpoint's model/ or model_ema/")
    return path


def read_t5_config(t5: T5Location) -> dict:
    """The config.json of the T5 encoder `t5` points at (only config files fetched from the Hub)."""
    folder = Path(t5.encoder) if Path(t5.encoder).is_dir() else resolve_model_dir(t5.encoder, subfolders=[])
    return read_config_json(folder / (t5.encoder_subfolder or ""))


def model_sizes(transformer_config: dict, vae_config: dict, t5_config: dict) -> dict[str, tuple[int, int]]:
    """(parameters, repeated transformer blocks) of the transformer, VAE and T5 encoder built
    from their configs on the meta device: nothing allocated, nothing loaded."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from ..models.causal_vae import CausalVideoVAE
    from ..models.latte_t2v import LatteT2V
    from ..train.parallelize import transformer_blocks

    with torch.device("meta"):
        models = {"transformer": LatteT2V.from_config(transformer_config), "vae": CausalVideoVAE.from_config(vae_config), "text_encoder": T5EncoderModel(T5Config.from_dict(t5_config))}
    return {name: (sum(p.numel() for p in model.parameters()), len(transformer_blocks(model))) for name, model in models.items()}
