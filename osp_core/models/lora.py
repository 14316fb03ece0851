"""LoRA adapters on a LatteT2V (or its T5 text encoder), through PEFT: added for training (`add_lora`), written in
PEFT's format (`write_adapter`: `adapter_config.json` + `adapter_model.safetensors`, which
`peft.PeftModel.from_pretrained` and diffusers' `load_lora_adapter` read), read back and
fitted (`read_adapter`, `load_adapter_state`), and merged into the weights at a scale each
(`merge_adapters`: sampling and `osp t2v lora merge` alike; `apply_adapters` merges a folder's
transformer part and its `text_encoder/` part into a pipeline's two models).

An adapter records the base it was trained on (`base_record`: where it came from and a probe
of its weights) in the safetensors metadata, so an adapter is not applied to another base.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelLoadError
from ..pipelines.lora_inputs import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_KEY, PEFT_PREFIX, target_pattern

TRAINED_ADAPTER = "default"
"""The name of the adapter a LoRA run trains (PEFT's default)."""
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
"""Where diffusers' `load_lora_adapter` reads an adapter's LoraConfig (keys carry its prefix)."""
PROBE_VALUES = 4
"""Base weights probed per adapted projection (`base_record`)."""
PROBE_TOLERANCE = 2e-2
"""Relative difference a probe allows: the same base in bf16 (0.4%) passes, another does not."""


def target_modules(model: nn.Module, targets: str) -> dict[str, nn.Linear]:
    """The linear projections `targets` (`--lora-targets`) names in `model`, by module name; one
    `InputError` when the pattern matches none, or matches a module that is not a linear layer."""
    import re

    pattern = re.compile(target_pattern(targets))
    matched = {name: module for name, module in model.named_modules() if name and pattern.fullmatch(name)}
    if not matched:
        raise InputError(f"--lora-targets '{targets}' matches no module of the transformer", "use spatial, temporal, cross or all, or a regex matching names such as transformer_blocks.0.attn1.to_q")
    other = next((name for name, module in matched.items() if not isinstance(module, nn.Linear)), None)
    if other is not None:
        raise InputError(f"--lora-targets '{targets}' matches '{other}', which is not a linear projection ({type(matched[other]).__name__})", "narrow the pattern to attention and feed-forward projections")
    return matched  # type: ignore[return-value]


def check_rank(modules: dict[str, nn.Linear], rank: int) -> None:
    """`InputError` when `rank` exceeds the narrowest side of a chosen projection (an adapter
    wider than its layer adds nothing a full update would not)."""
    name, module = min(modules.items(), key=lambda item: min(item[1].in_features, item[1].out_features))
    width = min(module.in_features, module.out_features)
    if rank > width:
        raise InputError(f"--lora {rank} is above the width of '{name}' ({module.in_features} -> {module.out_features})", f"pass --lora {width} or less, or narrower --lora-targets")


def lora_config(rank: int, alpha: float | None, dropout: float, targets: str) -> Any:
    """PEFT's LoraConfig for these options (alpha defaults to the rank)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout, target_modules=target_pattern(targets), init_lora_weights=True)


def add_lora(model: nn.Module, rank: int, alpha: float | None, dropout: float, targets: str) -> list[nn.Parameter]:
    """Freeze `model` and add trainable LoRA adapters (B = 0: the output is unchanged) on the
    projections `targets` names; returns the adapters' parameters (what the optimizer gets)."""
    from peft import inject_adapter_in_model

    check_rank(target_modules(model, targets), rank)
    model.requires_grad_(False)
    inject_adapter_in_model(lora_config(rank, alpha, dropout, targets), model, adapter_name=TRAINED_ADAPTER)
    trained = [p for name, p in model.named_parameters() if ".lora_" in name]
    for p in trained:
        p.requires_grad_(True)
    return trained


def adapted_names(model: nn.Module) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return sorted(name for name, module in model.named_modules() if isinstance(module, LoraLayer))


def _base_weight(module: nn.Module) -> torch.Tensor:
    return module.get_base_layer().weight if hasattr(module, "get_base_layer") else module.weight


def base_record(model: nn.Module, names: list[str], source: str, state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Where the base came from and a few of its weights at fixed places in each projection
    `names` lists (a probe that tells bases apart without hashing gigabytes); read from the
    full state dict `state` when given (the model's own weights may be shards)."""
    modules = dict(model.named_modules())
    probe = []
    for name in names:
        weight = state[f"{name}.base_layer.weight"] if state is not None else _base_weight(modules[name])
        flat = weight.detach().reshape(-1)
        picks = torch.linspace(0, flat.numel() - 1, PROBE_VALUES).long()
        probe.append([round(float(v), 7) for v in flat[picks].float().cpu()])
    return {"source": source, "modules": names, "probe": probe}


def check_base(model: nn.Module, record: dict[str, Any] | None, where: str) -> None:
    """`ModelLoadError` when the base `record` describes is not `model` (shapes are checked
    elsewhere; this catches other weights of the same config)."""
    if not record:
        return  # an adapter from elsewhere (PEFT, diffusers) says nothing of its base
    modules = dict(model.named_modules())
    for name, saved in zip(record.get("modules", []), record.get("probe", [])):
        if name not in modules:
            continue
        flat = _base_weight(modules[name]).detach().reshape(-1)
        picks = torch.linspace(0, flat.numel() - 1, len(saved)).long()
        here = flat[picks].float().cpu()
        there = torch.tensor(saved, dtype=torch.float32)
        if not torch.allclose(here, there, rtol=PROBE_TOLERANCE, atol=1e-6):
            raise ModelLoadError(
                f"{where} was trained on another base transformer ({record.get('source', 'unknown')}): the weights of '{name}' differ",
                "apply it to the transformer it was trained on (--model / --version / --transformer)",
            )


def adapter_state(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The trained adapter's tensors in PEFT's file naming (`base_model.model.NAME.lora_A.weight`),
    from `model` or from its full state dict `state` (keys as in `model`)."""
    from peft import get_peft_model_state_dict

    tensors = get_peft_model_state_dict(model, state_dict=state, adapter_name=TRAINED_ADAPTER, save_embedding_layers=False)
    return {f"{PEFT_PREFIX}{key}": value.detach().to("cpu").contiguous() for key, value in tensors.items()}


def write_adapter(folder: Path, model: nn.Module, tensors: dict[str, torch.Tensor], base: dict[str, Any]) -> None:
    """An adapter folder in PEFT's format: `adapter_config.json` (the LoraConfig, `base`'s
    source as `base_model_name_or_path`) and `adapter_model.safetensors` (the `tensors`, with
    the base record and diffusers' metadata in its header). `folder` must not exist yet."""
    from safetensors.torch import save_file

    import copy

    config = copy.copy(model.peft_config[TRAINED_ADAPTER])  # the run's own config stays as it was
    config.base_model_name_or_path = base["source"]
    folder.mkdir(parents=True)
    config.save_pretrained(str(folder))
    fields = json.loads((folder / ADAPTER_CONFIG).read_text())
    metadata = {"format": "pt", BASE_KEY: json.dumps(base), DIFFUSERS_METADATA_KEY: json.dumps({f"{PEFT_PREFIX.rstrip('.')}.{k}": v for k, v in fields.items()})}
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata=metadata)


def read_adapter(folder: Path) -> tuple[Any, dict[str, torch.Tensor], dict[str, Any] | None]:
    """(LoraConfig, tensors keyed as PEFT's `set_peft_model_state_dict` takes them, base record)
    of an adapter folder; unreadable files are one `ModelLoadError` naming them."""
    from peft import LoraConfig
    from safetensors import safe_open

    weights = folder / ADAPTER_WEIGHTS
    try:
        fields = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        known = set(LoraConfig.__dataclass_fields__)
        config = LoraConfig(**{k: v for k, v in fields.items() if k in known and k not in ("peft_type", "task_type")})
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"adapter config '{folder / ADAPTER_CONFIG}' is not a usable LoraConfig ({type(exc).__name__}: {exc})", "write the adapter again") from None
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise ModelLoadError(f"adapter file '{weights}' is unreadable ({type(exc).__name__}: {' '.join(str(exc).split())})", "it is truncated or corrupt: write it again") from None
    base = json.loads(metadata[BASE_KEY]) if BASE_KEY in metadata else None
    return config, {key.removeprefix(PEFT_PREFIX): value for key, value in tensors.items()}, base


def check_adapter_fits(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """`ModelLoadError` naming the first tensor of an adapter that does not fit `model`: a
    projection it lacks, or one of another width (an adapter for another model config)."""
    modules = dict(model.named_modules())
    for key, value in tensors.items():
        name, _, kind = key.partition(".lora_")
        module = modules.get(name)
        base = module.get_base_layer() if module is not None and hasattr(module, "get_base_layer") else module
        if base is None:
            raise ModelLoadError(f"{where} was made for another model: this {type(model).__name__} has no module '{name}'", "apply it to the model config it was trained on")
        if not isinstance(base, nn.Linear):
            continue  # other layers PEFT adapts (convolutions): their shapes are checked as they load
        expected = (value.shape[0], base.in_features) if kind.startswith("A") else (base.out_features, value.shape[1])
        if tuple(value.shape) != expected:
            side = f"{base.in_features} inputs" if kind.startswith("A") else f"{base.out_features} outputs"
            raise ModelLoadError(
                f"{where} was made for another model config: '{key}' is {tuple(value.shape)}, and '{name}' has {side} here",
                "apply it to the model config it was trained on",
            )


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor], adapter_name: str, where: str) -> None:
    """Copy an adapter's `tensors` into `model`'s injected adapter `adapter_name` (every tensor
    used, every adapter parameter filled)."""
    from peft import set_peft_model_state_dict

    check_adapter_fits(model, tensors, where)
    own = dict(model.named_parameters())
    for key, value in tensors.items():
        head, _, tail = key.rpartition(".")  # NAME.lora_A . weight
        target = own.get(f"{head}.{adapter_name}.{tail}")
        if target is not None and target.shape != value.shape:
            raise ModelLoadError(
                f"{where} was trained with another LoRA rank: '{key}' is {tuple(value.shape)} there, {tuple(target.shape)} here",
                "resume with the LoRA options it was trained with, or start over with --overwrite",
            )
    try:
        result = set_peft_model_state_dict(model, tensors, adapter_name=adapter_name)
    except RuntimeError as exc:  # torch's size mismatch, for layers `check_adapter_fits` leaves to it
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
        raise ModelLoadError(f"{where} was made for another model config ({first})", "apply it to the model config it was trained on") from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if f".lora_A.{adapter_name}." in k or f".lora_B.{adapter_name}." in k]
    if unexpected or missing:
        raise ModelLoadError(f"{where} does not fit the adapters of this run (unexpected {unexpected[:2]}, missing {missing[:2]})", "resume with the LoRA options it was trained with")


def merge_adapters(model: nn.Module, adapters: list[tuple[Path, float]], describe: Any = str) -> None:
    """Add each adapter folder's update, times its scale, into `model`'s weights, in place:
    W + sum_i scale_i x alpha_i / r_i x B_i A_i (the sum does not depend on the order). The
    adapters are checked against the model's shapes and base first; `describe(path)` names
    one in messages."""
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    read = [(path, scale, *read_adapter(path)) for path, scale in adapters]
    for path, _, _, tensors, base in read:
        check_adapter_fits(model, tensors, f"adapter '{describe(path)}'")
        check_base(model, base, f"adapter '{describe(path)}'")
    import warnings

    scales = {}
    for index, (path, scale, config, tensors, _) in enumerate(read):
        name = f"osp_{index}"
        config.target_modules = sorted({key.partition(".lora_")[0] for key in tensors})  # exactly the projections it holds
        config.inference_mode = True
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # several adapters are the point
            inject_adapter_in_model(config, model, adapter_name=name)
        load_adapter_state(model, tensors, name, f"adapter '{describe(path)}'")
        scales[name] = scale
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                names = [name for name in scales if name in module.lora_A]
                for name in names:
                    module.set_scale(name, scales[name])
                module.merge(adapter_names=names)
    _unload(model)


def apply_adapters(transformer: nn.Module, text_encoder: nn.Module, adapters: list[Any]) -> None:
    """Merge checked adapters (`lora_inputs.AdapterSpec`s) into a pipeline's models: each
    folder's transformer part into `transformer`, its `text_encoder/` part into `text_encoder`,
    both at the adapter's scale."""
    from ..pipelines.lora_inputs import TEXT_FOLDER

    parts = [(a.path, a.scale) for a in adapters if a.transformer]
    text = [(a.path / TEXT_FOLDER, a.scale) for a in adapters if a.text_encoder]
    if parts:
        merge_adapters(transformer, parts)
    if text:
        merge_adapters(text_encoder, text)


def _unload(model: nn.Module) -> None:
    """Replace every PEFT layer by its (merged) base layer: the model is a plain LatteT2V again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in layers:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """`model`'s LoRA adapters switched off (the frozen base alone) inside the block."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
