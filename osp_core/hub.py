"""Where model files come from: a local folder, the Hugging Face Hub (with its cache and
`HF_HUB_OFFLINE`), or a model shipped inside the package (`builtin:NAME`)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HubUnavailableError, ModelLoadError

DEFAULT_REPO = "LanguageBind/Open-Sora-Plan-v1.1.0"
BUILTIN_PREFIX = "builtin:"
BUILTIN_ROOT = Path(__file__).parent / "builtin"

_OFFLINE_HINT = "pass --model DIR with a downloaded copy, or set HF_HUB_OFFLINE=1 to use the local cache"


def builtin_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not BUILTIN_ROOT.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_ROOT.iterdir() if p.is_dir())


def is_hub_id(model: str) -> bool:
    """`model` names a Hub repository (owner/name), not a local folder or builtin:NAME."""
    if model.startswith(BUILTIN_PREFIX) or Path(model).expanduser().exists():
        return False
    return model.count("/") == 1 and not model.startswith((".", "/", "~"))


def resolve_model_dir(model: str, subfolders: list[str] | None = None) -> Path:
    """A local folder holding `model` (repo id, folder or builtin:NAME).

    For a Hub repo only `subfolders` and the JSON/markdown files (configs) are fetched (every
    file when None; configs only for an empty list). Raises `ModelLoadError` for a missing
    folder and `HubUnavailableError` when the Hub cannot be reached and the cache does not
    hold the files.
    """
    if model.startswith(BUILTIN_PREFIX):
        name = model[len(BUILTIN_PREFIX):]
        path = BUILTIN_ROOT / name
        if not path.is_dir():
            known = ", ".join(BUILTIN_PREFIX + n for n in builtin_models()) or "none in this install"
            raise ModelLoadError(f"unknown built-in model '{model}'", f"available: {known}")
        return path
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if not is_hub_id(model):
        raise ModelLoadError(
            f"model folder '{model}' does not exist",
            "pass an existing folder or a Hub repo id such as " + DEFAULT_REPO,
        )
    return Path(_snapshot(model, subfolders))


def _snapshot(repo_id: str, subfolders: list[str] | None) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    patterns = None
    if subfolders is not None:
        patterns = [f"{s.strip('/')}/*" for s in subfolders] + ["*.json", "*.md"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ModelLoadError(f"cannot access Hub repo '{repo_id}' ({type(exc).__name__})", "check the id, or log in with `hf auth login`") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        if _offline():
            raise HubUnavailableError(
                f"'{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                "pass --model DIR with a downloaded copy, or unset HF_HUB_OFFLINE to download it",
            ) from exc
        raise HubUnavailableError(f"'{repo_id}' is not in the local cache and the Hub cannot be reached", _OFFLINE_HINT) from exc
    except OSError as exc:  # requests/httpx connection errors derive from OSError
        raise HubUnavailableError(f"the Hugging Face Hub cannot be reached for '{repo_id}'", _OFFLINE_HINT) from exc


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
