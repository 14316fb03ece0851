"""Merging LoRA adapters into a transformer: `plan_merge(job)` checks the adapters, the base
and the output folder before torch loads; `run_merge(plan)` adds each adapter's update at its
scale into the base's weights (`models.lora.merge_adapters`, as sampling does) and writes a
LatteT2V folder that `osp t2v sample --transformer DIR` loads (`osp t2v lora merge`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..hub import DEFAULT_REPO
from ..pipelines.lora_inputs import TEXT_FOLDER, AdapterSpec, check_adapters

MERGED_RECORD = "lora_merged.json"
"""What a merged folder says it was made of (the base and each adapter's hash and scale)."""


@dataclass
class MergeJob:
    """Merge `lora` ("PATH[:SCALE]" specs, as `SamplingJob.lora`) into the `model`'s `version`
    transformer (None: its shortest), or into the LatteT2V folder `transformer`; write `output`."""

    lora: list[Any]
    output: Path
    model: str = DEFAULT_REPO
    version: str | None = None
    transformer: Path | None = None
    overwrite: bool = False


@dataclass
class MergePlan:
    job: MergeJob
    base: Path
    base_name: str
    adapters: list[AdapterSpec] = field(default_factory=list)


def plan_merge(job: MergeJob) -> MergePlan:
    """`job` checked without torch: at least one adapter, each readable; the base transformer
    found; the output folder new (or --overwrite) and creatable."""
    from ..io.atomic import check_creatable_dir
    from ..pipelines.repository import ModelRepository, check_transformer_folder

    if not job.lora:
        raise InputError("no adapter to merge", "pass --lora PATH[:SCALE] (repeatable)")
    adapters = check_adapters(job.lora)
    text = next((a for a in adapters if a.text_encoder), None)
    if text is not None:
        raise InputError(
            f"adapter '{text.path}' also adapts the text encoder ({TEXT_FOLDER}/), which a merged transformer folder cannot hold",
            "apply it with --lora PATH (osp t2v sample, osp edit, the web page) instead of merging it",
        )
    if job.transformer is not None and job.version is not None:
        raise InputError("--transformer and --version both choose the base weights", "pass only one of them")
    output = Path(job.output).expanduser()
    if output.exists() and not job.overwrite:
        raise InputError(f"'{output}' already exists", "pass --overwrite to replace it, or another -o")
    check_creatable_dir(output.parent)
    if job.transformer is not None:
        base = check_transformer_folder(job.transformer)
        base_name = str(base)
    else:
        repository = ModelRepository.resolve(job.model)
        version = repository.pick_version(None) if job.version is None else job.version
        repository.check_version(version)
        base = repository.fetch([version]) / version
        base_name = f"{job.model}:{version}"
    _check_apart(output, [("adapter", a.path) for a in adapters] + [("base transformer", base)])
    return MergePlan(job, base, base_name, adapters)


def _check_apart(output: Path, inputs: list[tuple[str, Path]]) -> None:
    """A one-line error when the output folder is, holds or lies inside a folder the merge reads
    (symlinks resolved): --overwrite would delete the input it is made from."""
    target = output.resolve()
    for kind, folder in inputs:
        source = folder.resolve()
        if target == source or source in target.parents or target in source.parents:
            raise InputError(f"-o '{output}' overlaps the {kind} '{folder}' the merge reads", "write the merged transformer to a folder of its own")


def run_merge(plan: MergePlan) -> dict[str, Any]:
    """Load the base in fp32, merge the adapters, write the folder whole (or nothing); returns
    what was written."""
    from ..io.atomic import atomic_dir
    from ..io.jsonfile import write_json
    from ..models.latte_t2v import LatteT2V
    from ..models.lora import merge_adapters
    from .progress import quiet_libraries

    started = time.perf_counter()
    output = Path(plan.job.output).expanduser()
    with quiet_libraries():
        model = LatteT2V.from_pretrained(str(plan.base))
    merge_adapters(model, [(a.path, a.scale) for a in plan.adapters])
    record = {"base": plan.base_name, "lora": [a.describe() for a in plan.adapters]}
    with atomic_dir(output) as tmp:
        model.save_pretrained(str(tmp))
        write_json(tmp / MERGED_RECORD, record)
    return {"output": str(output.absolute()), **record, "seconds": round(time.perf_counter() - started, 3)}
