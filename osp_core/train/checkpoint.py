"""Checkpoints that a kill at any moment cannot corrupt.

Layout of `OUTPUT/checkpoints/step-000123/`:

    model/              diffusers format (config.json + diffusion_pytorch_model.safetensors);
                        a LoRA run writes adapter/ instead (PEFT format, `AdapterFiles`)
    model_ema/          the EMA weights, same format (when EMA is on)
    accelerate/         optimizers, lr schedulers, grad scaler, per-rank RNG states and the
                        other trained modules (e.g. the VAE discriminator), through
                        Accelerate's save_state (--strategy ddp; fsdp: DistributedCheckpointManager)
    trainer_state.json  step, data position, samples seen, skipped samples, config, losses

Everything is written into `.step-000123.tmp/` and renamed when complete, so the newest
folder with a `trainer_state.json` is always usable; older ones beyond `keep_last` are removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError, ModelLoadError
from ..io.atomic import fsync_path, fsync_tree, plain_modes
from ..io.jsonfile import dumps
from ..parallel.layout import is_main_process
from .plan import STATE_FILE, list_checkpoints, resolve_resume, step_dir_name
from .wrapping import diffusers_part

logger = logging.getLogger("osp.train")


def checkpoint_strategy(checkpoint: Path) -> str:
    """The --strategy that wrote `checkpoint`: fsdp for a Distributed Checkpoint, else ddp."""
    return "fsdp" if read_state(checkpoint).get("checkpoint_format") == "dcp" else "ddp"


class CheckpointUnreadableError(ModelLoadError):
    """A file of a checkpoint is truncated or corrupt (`--resume latest` falls back past it)."""


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointUnreadableError(f"checkpoint '{checkpoint}' has no readable {STATE_FILE} ({exc.__class__.__name__})", "pick another checkpoint or --resume latest") from None


_TORCH_ZIP_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")
_CRC_CHECK_LIMIT = 64 * 2**20  # CRC-check whole torch.save files up to this size (RNG, scheduler, scaler states)


def verify_checkpoint(checkpoint: Path) -> None:
    """Raise `CheckpointUnreadableError` naming the first file of `checkpoint` that is truncated
    or corrupt: safetensors headers and sizes, torch.save zip archives (whole-file CRCs for the
    small ones, such as the RNG states, which Accelerate would otherwise skip silently when
    they fail to load), and the trainer state. Cheap: large tensors are not read."""
    import zipfile

    from safetensors import safe_open

    read_state(checkpoint)
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            elif path.suffix in _TORCH_ZIP_SUFFIXES:
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip() if path.stat().st_size <= _CRC_CHECK_LIMIT else None
                if bad is not None:
                    raise zipfile.BadZipFile(f"CRC error in {bad}")
        except Exception as exc:  # noqa: BLE001 - safetensors, zipfile and OS errors alike mean the file is unusable
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CheckpointUnreadableError(f"checkpoint file '{path}' is unreadable ({type(exc).__name__}: {reason})", "it is truncated or corrupt: resume from another checkpoint") from None


def _config_differences(saved: dict[str, Any], current: dict[str, Any], limit: int = 3) -> str:
    current = json.loads(dumps(current, default=str))  # as it would be saved: tuples are lists
    keys = [k for k in sorted(set(saved) | set(current)) if not k.startswith("_") and saved.get(k) != current.get(k)]
    shown = ", ".join(f"{k} {saved.get(k)!r} there, {current.get(k)!r} here" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_weights_fit(checkpoint: Path, saved: dict[str, Any], module: nn.Module, run_model: str, only: set[str] | None = None) -> None:
    """Raise one `ModelLoadError` line when the saved tensors do not fit `module` (its tensors
    named in `only`, when given): the first mis-shaped (or missing / unexpected) tensor, how the
    two model configs differ, and both configs' sources (the checkpoint's model/config.json and
    this run's `run_model`)."""
    own = {k: v for k, v in module.state_dict().items() if only is None or k in only}
    mismatched = next((k for k, v in saved.items() if k in own and own[k].shape != v.shape), None)
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    if mismatched is None and not missing and not unexpected:
        return
    if mismatched is not None:
        first = f"'{mismatched}' is {tuple(saved[mismatched].shape)} there, {tuple(own[mismatched].shape)} here"
    else:
        first = f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    config_file = checkpoint / "model" / "config.json"
    differences = ""
    current = dict(getattr(module, "config", {}) or {})
    if config_file.is_file() and current:
        try:
            differences = _config_differences(json.loads(config_file.read_text()), current)
        except (OSError, ValueError):
            differences = ""
    detail = f" ({differences})" if differences else ""
    raise ModelLoadError(
        f"checkpoint '{checkpoint}' was trained with another model config than this run's{detail}: {first}; configs: {config_file} vs {run_model}",
        "resume with the model config the checkpoint was trained with, or start over with --overwrite",
    )


def _write_model(folder: Path, inner: nn.Module, prefix: str, state: dict[str, Any]) -> None:
    """A diffusers model folder (config.json + safetensors) from a full state dict whose keys
    carry `prefix` (that of `inner` inside the trained module)."""
    from safetensors.torch import save_file

    folder.mkdir()
    inner.save_config(str(folder))
    weights = {k[len(prefix) :]: v.detach().to("cpu").contiguous() for k, v in state.items() if k.startswith(prefix)}
    save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))


class ModelFiles:
    """How a checkpoint holds the trained model: the whole diffusers model in `model/`."""

    holds_frozen = True
    """Whether frozen parameters are saved too (a Distributed Checkpoint's shards included)."""

    def write(self, checkpoint: Path, inner: nn.Module, prefix: str, state: dict[str, Any]) -> None:
        """Write `inner`'s weights from the full state dict `state` (keys with `prefix`) into `checkpoint`."""
        _write_model(checkpoint / "model", inner, prefix, state)

    def read(self, checkpoint: Path, inner: nn.Module, run_model: str) -> None:
        """Load what `write` wrote into `inner` (checked to fit first: one line when it does not)."""
        from safetensors.torch import load_file

        weights = checkpoint / "model" / "diffusion_pytorch_model.safetensors"
        if not weights.is_file() and (checkpoint / AdapterFiles.folder).is_dir():
            raise ModelLoadError(f"checkpoint '{checkpoint}' holds a LoRA adapter, not the whole transformer", "resume it with the --lora options it was trained with")
        if not weights.is_file():
            raise CheckpointUnreadableError(f"checkpoint '{checkpoint}' has no model weights", "pick another checkpoint")
        saved = load_file(str(weights))
        check_weights_fit(checkpoint, saved, inner, run_model)
        inner.load_state_dict(saved)


class AdapterFiles(ModelFiles):
    """A LoRA run's checkpoints: only the trained adapter, in PEFT's format, in `adapter/` (the
    frozen base is the run's --pretrained, rebuilt on resume and checked against the adapter's
    base record); the text encoder's adapter, when the run trains one, in `adapter/text_encoder/`."""

    folder = "adapter"
    holds_frozen = False

    def __init__(self, base_source: str, text: Callable[[], tuple[nn.Module, str] | None] = lambda: None) -> None:
        self.base_source = base_source
        self.text = text  # (the adapted text encoder, where it came from), or None

    def write(self, checkpoint: Path, inner: nn.Module, prefix: str, state: dict[str, Any]) -> None:
        from ..models.lora import adapted_names, adapter_state, base_record, write_adapter
        from ..pipelines.lora_inputs import TEXT_FOLDER

        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        names = adapted_names(inner)
        if names:
            write_adapter(checkpoint / self.folder, inner, adapter_state(inner, own), base_record(inner, names, self.base_source, own))
        text = self.text()
        if text is not None:
            encoder, source = text
            write_adapter(checkpoint / self.folder / TEXT_FOLDER, encoder, adapter_state(encoder), base_record(encoder, adapted_names(encoder), source))

    def read(self, checkpoint: Path, inner: nn.Module, run_model: str) -> None:
        from ..models.lora import adapted_names
        from ..pipelines.lora_inputs import ADAPTER_WEIGHTS, TEXT_FOLDER

        folder = checkpoint / self.folder
        if not folder.is_dir():
            raise ModelLoadError(f"checkpoint '{checkpoint}' holds no LoRA adapter (adapter/)", "resume it without --lora (it trained the whole transformer), or start over with --overwrite")
        text, transformer_adapted = self.text(), bool(adapted_names(inner))
        for part, adapted, saved in (("the transformer", transformer_adapted, (folder / ADAPTER_WEIGHTS).is_file()), ("the text encoder", text is not None, (folder / TEXT_FOLDER).is_dir())):
            if adapted != saved:
                held = "holds an" if saved else "holds no"
                raise ModelLoadError(f"checkpoint '{checkpoint}' {held} adapter of {part}, and this run's --lora-targets {'does not adapt' if saved else 'adapts'} it", "resume with the --lora-targets it was trained with, or start over with --overwrite")
        if transformer_adapted:
            _read_adapter_part(folder, inner, checkpoint)
        if text is not None:
            _read_adapter_part(folder / TEXT_FOLDER, text[0], checkpoint)


def _read_adapter_part(folder: Path, model: nn.Module, checkpoint: Path) -> None:
    """Load one adapter folder of a checkpoint into `model`'s trained adapter (base, shapes,
    alpha and dropout checked: one line when they differ)."""
    from ..models.lora import TRAINED_ADAPTER, check_base, load_adapter_state, read_adapter

    saved, tensors, base = read_adapter(folder)
    check_base(model, base, f"checkpoint '{checkpoint}'")
    load_adapter_state(model, tensors, TRAINED_ADAPTER, f"checkpoint '{checkpoint}'")
    # alpha and dropout leave no trace in the tensors' shapes: another value would silently
    # change the adapter's scale (or noise) mid-run
    own = model.peft_config[TRAINED_ADAPTER]
    for flag, field in (("--lora-alpha", "lora_alpha"), ("--lora-dropout", "lora_dropout")):
        then, now = float(getattr(saved, field)), float(getattr(own, field))
        if then != now:
            raise ModelLoadError(
                f"checkpoint '{checkpoint}' was trained with {flag} {then:g}, this run asks for {now:g}",
                f"resume with {flag} {then:g} (the LoRA options it was trained with), or start over with --overwrite",
            )


def _is_diffusers(module: nn.Module) -> bool:
    return diffusers_part(module)[0] is not None


class CheckpointManager:
    """Saves and restores a run through Accelerate, with the main model in diffusers format.

    `models` is what was passed to `accelerator.prepare` in order; the one diffusers model among
    them (the trained network) is written to `model/`, the rest through Accelerate.
    """

    def __init__(self, accelerator, output_dir: str | Path, keep_last: int = 3, warn: Callable[[str], None] | None = None, model_files: ModelFiles | None = None) -> None:
        self.accelerator = accelerator
        self.model_files = model_files or ModelFiles()
        self.warn = warn or logger.warning
        self.root = Path(output_dir) / "checkpoints"
        self.keep_last = keep_last
        # Skip Accelerate's copy of the diffusers model: model/ already holds it.
        accelerator.register_save_state_pre_hook(self._drop_diffusers_weights)
        accelerator.register_load_state_pre_hook(self._skip_diffusers_model)

    # --- accelerate hooks -------------------------------------------------------------------
    def _drop_diffusers_weights(self, models: list, weights: list, output_dir: str) -> None:
        if not weights:
            return
        for index in reversed(range(len(models))):
            if _is_diffusers(self.accelerator.unwrap_model(models[index])):
                weights.pop(index)

    def _skip_diffusers_model(self, models: list, input_dir: str) -> None:
        for index in reversed(range(len(models))):
            if _is_diffusers(self.accelerator.unwrap_model(models[index])):
                models.pop(index)

    # --- paths ------------------------------------------------------------------------------
    def resolve(self, resume: str) -> Path | None:
        """The checkpoint `resume` names for this run (`resolve_resume`)."""
        return resolve_resume(self.root, resume)

    # --- save / load ------------------------------------------------------------------------
    def save(
        self,
        step: int,
        model: nn.Module,
        state: dict[str, Any],
        ema_save: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write checkpoint `step` (collective: every rank must call it). Returns its folder."""
        acc = self.accelerator
        tmp, final = self._open(step)
        acc.save_state(str(tmp / "accelerate"))
        full_state = acc.get_state_dict(model)
        if is_main_process():
            inner, prefix = diffusers_part(acc.unwrap_model(model))
            self.model_files.write(tmp, inner, prefix, full_state)
            if ema_save is not None:
                ema_save(tmp / "model_ema")
            # the state file goes last: its presence marks the checkpoint complete
            (tmp / STATE_FILE).write_text(dumps({**state, "step": step}, indent=2, default=str))
            self._publish(tmp, final)
        acc.wait_for_everyone()
        return final

    def _open(self, step: int) -> tuple[Path, Path]:
        """(temporary folder, final folder) of checkpoint `step`; rank 0 creates the first (and
        removes what a killed run left), every rank waits for it."""
        final = self.root / step_dir_name(step)
        tmp = self.root / f".{final.name}.tmp"
        if is_main_process():
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".step-*.tmp"):  # leftovers of a killed run
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        self.accelerator.wait_for_everyone()
        return tmp, final

    def _publish(self, tmp: Path, final: Path) -> None:
        """Rank 0, once the checkpoint is complete: flush it, rename it into place, prune."""
        plain_modes(tmp)  # shareable as a plain write would be (safetensors writes 0600)
        fsync_tree(tmp)  # on disk before the rename makes it the newest checkpoint
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_path(self.root)
        self._prune()

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for old in list_checkpoints(self.root)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, checkpoint: Path, model: nn.Module, run_model: str = "this run's model config") -> dict[str, Any]:
        """Restore weights, optimizer/scheduler/RNG states into the prepared objects; returns the
        trainer state dict of the checkpoint. Every file is checked first
        (`verify_checkpoint`), so an unreadable one fails before anything is changed; a model
        that does not fit is one line naming the first mismatched tensor and both configs."""
        acc = self.accelerator
        verify_checkpoint(checkpoint)
        state = read_state(checkpoint)
        if state.get("checkpoint_format") == "dcp":
            raise InputError(
                f"checkpoint '{checkpoint}' was written by a --strategy fsdp run (Distributed Checkpoint), which this --strategy ddp run does not read",
                "resume it without --strategy (the checkpoint's is taken) or with --strategy fsdp, on any number of processes; or start over with --overwrite",
            )
        rng_file = checkpoint / "accelerate" / f"random_states_{acc.process_index}.pkl"
        if not rng_file.is_file():
            self.warn(f"checkpoint '{checkpoint}' has no RNG state for rank {acc.process_index}: its random numbers will differ from an uninterrupted run's")
        inner, _ = diffusers_part(acc.unwrap_model(model))
        self.model_files.read(checkpoint, inner, run_model)
        try:
            acc.load_state(str(checkpoint / "accelerate"))
        except Exception as exc:  # noqa: BLE001 - torch/accelerate raise many types; one line each
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            if "size mismatch" in str(exc) or "does not match" in str(exc):
                raise ModelLoadError(f"checkpoint '{checkpoint}' holds training state of another config ({first})", "resume with the config the checkpoint was trained with, or start over with --overwrite") from None
            raise CheckpointUnreadableError(f"cannot restore '{checkpoint / 'accelerate'}' ({type(exc).__name__}: {first})", "resume from another checkpoint") from None
        return state


DCP_DIR = "dcp"
RNG_DIR = "rng"

# What a DCP folder's `.metadata` pickle may name: DCP's own metadata records and the torch value
# types they hold. Anything else (a checkpoint from elsewhere could name any callable) is refused.
_DCP_METADATA_GLOBALS = {
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING",
    )),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in _DCP_METADATA_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"'{module}.{name}' is not allowed in a checkpoint's metadata")


def _dcp_reader(folder: Path) -> Any:
    """A DCP FileSystemReader for `folder` whose `.metadata` is unpickled with only DCP's own
    record types allowed (DCP itself unpickles it unrestricted; the tensors it loads with
    `weights_only=True`)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class _Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as stream:
                metadata = _MetadataUnpickler(stream).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return _Reader(str(folder))


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns that it assumes one process when no process group is joined: that is the case
    of --strategy fsdp on one process, and intended."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def verify_dcp_files(checkpoint: Path, state: dict[str, Any]) -> None:
    """Raise `CheckpointUnreadableError` naming the first file of `checkpoint`'s DCP folder that
    is missing or not the size it had when saved (`dcp_files` of the trainer state): a truncated
    or extended shard would otherwise fail inside DCP's reader, after some ranks have loaded.
    Checkpoints written before the sizes were recorded are not checked."""
    recorded = state.get("dcp_files") or {}
    for name, size in recorded.items():
        path = checkpoint / DCP_DIR / name
        try:
            found = path.stat().st_size
        except OSError as exc:
            raise CheckpointUnreadableError(f"checkpoint file '{path}' is unreadable ({type(exc).__name__})", "it is missing: resume from another checkpoint") from None
        if found != int(size):
            raise CheckpointUnreadableError(
                f"checkpoint file '{path}' is unreadable ({found} bytes, {size} when saved)", "it is truncated or corrupt: resume from another checkpoint"
            )


class DistributedCheckpointManager(CheckpointManager):
    """Checkpoints of `--strategy fsdp`: PyTorch Distributed Checkpoint (DCP) folders.

    Layout of `OUTPUT/checkpoints/step-000123/`:

        dcp/                model and optimizer state, each rank writing its own shards
                            (DCP reshards them on load: resume on any number of ranks)
        rng/rank-N.safetensors  each rank's torch RNG state (restored when the rank count matches)
        model/, model_ema/  the consolidated diffusers model (rank 0 gathers the full weights)
        trainer_state.json  as for DDP, plus the lr-scheduler states, the parallel layout and
                            the size of every dcp/ file (checked on every rank before loading)

    Every rank writes into `.step-000123.tmp/`; rank 0 renames it once every rank has finished
    (DCP's own barrier, then ours), so a kill at any moment leaves the last complete checkpoint.
    """

    def __init__(
        self, accelerator, output_dir: str | Path, keep_last: int, warn: Callable[[str], None] | None, optimizers: list, schedulers: list, layout: dict[str, Any], ema: Any = None,
        model_files: ModelFiles | None = None,
    ) -> None:
        self.accelerator = accelerator
        self.warn = warn or logger.warning
        self.root = Path(output_dir) / "checkpoints"
        self.keep_last = keep_last
        self.optimizers = [getattr(o, "optimizer", o) for o in optimizers]  # Accelerate's wrapper holds the torch optimizer
        self.schedulers = schedulers
        self.layout = layout
        self.ema = ema  # a ShardedEMA: its shards go into the DCP folder, its average into model_ema/
        self.model_files = model_files or ModelFiles()

    def _state_dicts(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        """Sharded model and optimizer states keyed by the diffusers model's own names: not by
        those of a wrapper (sequence parallel trains a `TrainingForward` around it), so that a
        checkpoint resumes under any layout."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        return get_state_dict(diffusers_part(model)[0], self.optimizers, options=self._options())

    def _options(self) -> Any:
        """DCP state-dict options: a LoRA run's frozen base is neither written nor expected on
        load (the run rebuilds it; `check_weights_fit` checked the adapters are all there)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        frozen = self.model_files.holds_frozen
        return StateDictOptions(ignore_frozen_params=not frozen, strict=frozen)

    def save(self, step: int, model: nn.Module, state: dict[str, Any], ema_save: Callable[[Path], None] | None = None) -> Path:
        """Write checkpoint `step` (collective: every rank must call it). Returns its folder.
        `ema_save` is not used: the sharded EMA given at construction is written here."""
        import torch
        import torch.distributed.checkpoint as dcp
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        acc = self.accelerator
        tmp, final = self._open(step)
        model_state, optim_state = self._state_dicts(model)
        shards = {"model": model_state, "optim": optim_state}
        if self.ema is not None:
            shards["ema"] = self.ema.shadow
        with _single_process_quiet():
            dcp.save(shards, checkpoint_id=str(tmp / DCP_DIR))
        # dcp.save returns once every rank's shards are written and synced, so rank 0 can list them
        dcp_files = _file_sizes(tmp / DCP_DIR) if is_main_process() else {}
        (tmp / RNG_DIR).mkdir(exist_ok=True)
        save_file({"cpu": torch.get_rng_state()}, str(tmp / RNG_DIR / f"rank-{acc.process_index}.safetensors"))
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # collective
        inner, prefix = diffusers_part(model)
        full_ema = self.ema.full_weights(full, prefix) if self.ema is not None else None  # collective too
        if is_main_process():
            self.model_files.write(tmp, inner, prefix, full)
            if full_ema is not None:
                _write_model(tmp / "model_ema", inner, prefix, full_ema)
            extra = {"checkpoint_format": "dcp", "parallel": self.layout, "schedulers": [s.state_dict() for s in self.schedulers], "dcp_files": dcp_files}
            if self.ema is not None:
                extra["ema_step"] = self.ema.optimization_step
            (tmp / STATE_FILE).write_text(dumps({**state, **extra, "step": step}, indent=2, default=str))
        acc.wait_for_everyone()  # every rank's shards and RNG file are written
        if is_main_process():
            self._publish(tmp, final)
        acc.wait_for_everyone()
        return final

    def load(self, checkpoint: Path, model: nn.Module, run_model: str = "this run's model config") -> dict[str, Any]:
        """Restore weights and optimizer states (resharded to this run's ranks), lr schedulers and,
        when the rank count matches, RNG states; returns the trainer state dict."""
        import torch
        import torch.distributed.checkpoint as dcp
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import set_state_dict

        acc = self.accelerator
        verify_checkpoint(checkpoint)
        state = read_state(checkpoint)
        if state.get("checkpoint_format") != "dcp" or not (checkpoint / DCP_DIR).is_dir():
            raise InputError(
                f"checkpoint '{checkpoint}' was written by a --strategy ddp run, which this --strategy fsdp run cannot reshard",
                "resume it without --strategy (the checkpoint's is taken) or with --strategy ddp, or start over with --overwrite",
            )
        verify_dcp_files(checkpoint, state)
        try:
            metadata = _dcp_reader(checkpoint / DCP_DIR).read_metadata()
        except Exception as exc:  # noqa: BLE001 - a missing or truncated .metadata file
            raise CheckpointUnreadableError(f"checkpoint '{checkpoint / DCP_DIR}' has no readable DCP metadata ({type(exc).__name__})", "resume from another checkpoint") from None
        inner, _ = diffusers_part(model)
        # the saved tensors' shapes, as meta tensors: checked against this run's model before loading
        head = "model."
        saved = {k[len(head):]: torch.empty(tuple(v.size), device="meta") for k, v in metadata.state_dict_metadata.items() if k.startswith(head) and hasattr(v, "size")}
        # a LoRA run's checkpoint holds the adapters (and buffers), not the frozen base
        trained = None if self.model_files.holds_frozen else {n for n, p in inner.named_parameters() if p.requires_grad} | {n for n, _ in inner.named_buffers()}
        check_weights_fit(checkpoint, saved, inner, run_model, only=trained)
        model_state, optim_state = self._state_dicts(model)
        shards = {"model": model_state, "optim": optim_state}
        # a checkpoint of a run without EMA: the average starts from the restored weights
        with_ema = self.ema is not None and any(k.startswith("ema.") for k in metadata.state_dict_metadata)
        if with_ema:
            shards["ema"] = self.ema.shadow
        try:
            with _single_process_quiet():
                dcp.load(shards, storage_reader=_dcp_reader(checkpoint / DCP_DIR))
        except Exception as exc:  # noqa: BLE001 - DCP raises per-rank CheckpointException with many causes
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise CheckpointUnreadableError(f"cannot restore '{checkpoint / DCP_DIR}' ({type(exc).__name__}: {first[:200]})", "resume from another checkpoint") from None
        set_state_dict(inner, self.optimizers, model_state_dict=model_state, optim_state_dict=optim_state, options=self._options())
        if with_ema:
            self.ema.optimization_step = int(state.get("ema_step", state["step"]))
        elif self.ema is not None:
            params = dict(inner.named_parameters())
            with torch.no_grad():
                for name in self.ema.names:
                    self.ema.shadow[name].copy_(params[name])
        for scheduler, saved_state in zip(self.schedulers, state.get("schedulers", [])):
            scheduler.load_state_dict(saved_state)
        rng_file = checkpoint / RNG_DIR / f"rank-{acc.process_index}.safetensors"
        if int(state.get("parallel", {}).get("world_size", 0)) == acc.num_processes and rng_file.is_file():
            torch.set_rng_state(load_file(str(rng_file))["cpu"])
        return state


_MANAGED_PARTS = ("model", "optimizers", "schedulers", "ema")
"""The parts the strategy's manager writes itself (Accelerate's state or DCP, model/, model_ema/)."""


class RunCheckpoints:
    """A run's checkpoints as one dict of stateful parts, saved and loaded in one call each
    (torchtitan's `CheckpointManager(states=...)`).

    `states` holds the model, its optimizers and lr schedulers and the EMA (written by the
    manager of the run's strategy: `CheckpointManager` for ddp, `DistributedCheckpointManager`
    for fsdp, which also keep each rank's RNG state), and any number of JSON parts, objects with
    `state_dict()` / `load_state_dict(state)` over the trainer state (the data position, the
    losses, the config, the recipe's extra state). A new part is one more entry in `states`.
    """

    def __init__(
        self, accelerator, layout: Any, output_dir: Path, keep_last: int, warn: Callable[[str], None], states: dict[str, Any], run_model: str, model_files: ModelFiles | None = None
    ) -> None:
        from .ema import ShardedEMA

        self.accelerator = accelerator
        self.states = states
        self.run_model = run_model
        self.ema = states.get("ema")
        self.sharded_ema = isinstance(self.ema, ShardedEMA)
        self.manager: CheckpointManager
        if layout.mode == "fsdp":
            self.manager = DistributedCheckpointManager(accelerator, output_dir, keep_last, warn, states["optimizers"], states["schedulers"], layout.to_dict(), ema=self.ema, model_files=model_files)
        else:
            self.manager = CheckpointManager(accelerator, output_dir, keep_last, warn=warn, model_files=model_files)

    def _json_parts(self) -> list[Any]:
        return [part for name, part in self.states.items() if name not in _MANAGED_PARTS]

    def save(self, step: int) -> Path:
        """Write checkpoint `step` of every part (collective). Returns its folder."""
        state: dict[str, Any] = {}
        for part in self._json_parts():
            state.update(part.state_dict())
        ema_save = self._save_ema if self.ema is not None and not self.sharded_ema else None
        # saving must not move the RNG (building the EMA copy initialises a model): a resumed
        # run restores the state saved here and must draw what an uninterrupted run draws next
        with self._rng_preserved():
            return self.manager.save(step, self.states["model"], state, ema_save=ema_save)

    def load(self, checkpoint: Path) -> dict[str, Any]:
        """Restore every part from `checkpoint`; returns its trainer state."""
        state = self.manager.load(checkpoint, self.states["model"], self.run_model)
        if self.ema is not None and not self.sharded_ema:  # the DCP manager restores its own
            with self._rng_preserved():  # building the EMA copy must not move the restored RNG
                self._load_ema(checkpoint / "model_ema")
        for part in self._json_parts():
            part.load_state_dict(state)
        return state

    def _inner(self) -> nn.Module:
        return diffusers_part(self.accelerator.unwrap_model(self.states["model"]))[0]

    def _rng_preserved(self) -> Any:
        """Run a block without moving the torch RNG of this rank (CPU and its accelerator)."""
        import torch

        device = self.accelerator.device
        devices = [device.index or 0] if device.type in ("cuda", "npu", "xpu") else []
        return torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda")

    def _save_ema(self, path: Path) -> None:
        """`EMAModel.save_pretrained`, with the trained model's buffers: diffusers builds the copy
        from the config, which would write freshly initialised buffers (e.g. LatteT2V's
        y_embedding) beside the averaged parameters."""
        inner = self._inner()
        model = type(inner).from_config(inner.config)
        model.load_state_dict(inner.state_dict())
        state = self.ema.state_dict()
        state.pop("shadow_params", None)
        model.register_to_config(**state)
        self.ema.copy_to(model.parameters())
        model.save_pretrained(str(path))

    def _load_ema(self, folder: Path) -> None:
        """What `_save_ema` wrote, read back into the EMA: the average's settings (decay,
        optimization_step, ...) from config.json and its weights from the safetensors.
        `EMAModel.from_pretrained` would build a model from that config, which the model
        refuses with warnings (the settings are not its options)."""
        from safetensors.torch import load_file

        if not folder.is_dir():
            return  # a checkpoint from a run without EMA: start the average from the current weights
        inner = self._inner()
        config = type(inner).load_config(str(folder))
        state = {key: config[key] for key in self.ema.state_dict() if key in config}
        weights: dict[str, Any] = {}
        for file in sorted(folder.glob("*.safetensors")):
            weights.update(load_file(str(file)))
        names = [name for name, _ in inner.named_parameters()]  # the order of the EMA's shadow parameters
        state["shadow_params"] = [weights[name].to(shadow.device, shadow.dtype) for name, shadow in zip(names, self.ema.shadow_params, strict=True)]
        self.ema.load_state_dict(state)
