"""One training loop on Accelerate, shared by the VAE and text-to-video recipes.

The trainer owns what every run needs: the process group (`parallel.layout.process_group`,
joined before the Accelerator, which finds it joined), the Accelerator (device, autocast and
gradient accumulation of the DDP route, optimizer stepping, trackers; launched by `torchrun` or
plainly), the parallel layout (`parallelize`: FSDP2 and sequence parallel, applied by the
recipe through `Trainer.parallelize`), seeding, the data order and position (`Progress`),
checkpoints and resume (`RunCheckpoints`: one dict of stateful parts), EMA, metrics (console
callback, TensorBoard, Weights & Biases), Ctrl-C/SIGTERM handling and the final summary.
`Trainer._build` sets a run up; `Trainer._loop` runs it. A `Recipe` supplies the rest through a few
narrow override points: `build` (models, optimizers), `dataset`, `train_step`, `validate`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..io.atomic import ensure_writable_dir, is_temp_name, release_folders
from ..io.jsonfile import dumps, write_json
from ..parallel.layout import is_main_process, launched_world, process_group, rank_device
from .checkpoint import CheckpointUnreadableError, RunCheckpoints, checkpoint_strategy
from .config import config_to_dict
from .plan import RUN_FILES, check_config, check_previous_run, list_checkpoints, resolve_resume
from .wrapping import diffusers_part

logger = logging.getLogger("osp.train")
TENSORBOARD_FRAMES = 9
"""Frames of each sample in its TensorBoard image (a 3x3 grid)."""

Reporter = Callable[[str, dict[str, Any]], None]
"""Called as reporter(event, payload): 'start', 'log', 'checkpoint', 'skip', 'validate', 'stop',
'warning' (payload 'message'), 'end'."""

def _log_reporter(event: str, payload: dict[str, Any]) -> None:
    logger.info("%s %s", event, dumps(payload, default=str))


@dataclass
class Built:
    """What a recipe's `build` hands the trainer (before `accelerator.prepare`)."""

    model: nn.Module
    """The trained diffusers model, or a `TrainingForward` around it: checkpointed to model/ (and EMA'd)."""
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any] = field(default_factory=list)
    extra_models: list[nn.Module] = field(default_factory=list)
    """Other trained modules (e.g. the discriminator), prepared and checkpointed through Accelerate."""


class Recipe:
    """Override points of a training recipe. `self.trainer` is set before `build` is called."""

    name = "recipe"
    find_unused_parameters = False
    """DDP option: True when some parameters get no gradient in some steps."""
    trainer: Trainer

    def __init__(self, config: Any) -> None:
        self.config = config  # the recipe's config dataclass (T2VTrainConfig, VAETrainConfig, ...)

    def check(self, accelerator) -> None:
        """Refuse unsupported setups early (one-line errors)."""

    def build(self, accelerator) -> Built:
        raise NotImplementedError

    def prepared(self, model: nn.Module, optimizers: list, schedulers: list, extra_models: list) -> None:
        """Receive the prepared (wrapped) objects."""
        raise NotImplementedError

    def dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        from ..data.datasets import collate_clips

        return collate_clips(items)

    def train_step(self, micro_batches: list[dict[str, Any]], step: int) -> dict[str, float]:
        """One optimizer step over `micro_batches` (gradient accumulation); returns metrics with
        a 'loss' entry. `step` counts completed steps before this one."""
        raise NotImplementedError

    def validate(self, step: int, out_dir: Path) -> dict[str, Any]:
        """Optional periodic validation (main process); returns what to report."""
        return {}

    def validation_every(self) -> int:
        return 0

    def extra_state(self) -> dict[str, Any]:
        """JSON-able recipe state stored in the checkpoint."""
        return {}

    def model_files(self) -> Any:
        """How checkpoints hold the trained model (`checkpoint.ModelFiles`; None: the whole model in model/)."""
        return None

    def finished(self, checkpoint: Path) -> None:
        """Called on the main process when the run reached max_steps, with its last checkpoint:
        write what a finished run leaves beside its checkpoints (e.g. OUTPUT/lora/)."""

    def buckets(self) -> dict[str, int]:
        """Samples per clip shape (FxHxW) of bucketed data, for the start line and the summary
        ({}: one shape)."""
        return {}


class _PerOptimizerStep:
    """An lr schedule that advances once per optimizer step, not per micro-batch nor per rank
    (Accelerate's wrapper steps it once per process): its state means the same on any number
    of ranks, so a resharded resume continues the schedule."""

    def __init__(self, scheduler: Any, accelerator: Any) -> None:
        self.scheduler = scheduler
        self.accelerator = accelerator

    def step(self) -> None:
        if self.accelerator.sync_gradients:
            self.scheduler.step()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scheduler, name)


class _StopFlag:
    """Ctrl-C / SIGTERM set a flag; the loop finishes its step, checkpoints and exits cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a notebook worker)
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = dumps(value, default=str)
    return flat


def weights_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (bytes, in state-dict order): equal across ranks iff
    their weights are bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


_SHARDING_PLUGINS = {"FSDP": "ACCELERATE_USE_FSDP", "DEEPSPEED": "ACCELERATE_USE_DEEPSPEED", "MEGATRON_LM": "ACCELERATE_USE_MEGATRON_LM"}
"""Accelerate's sharding plugins and the variables `accelerate launch` sets for them."""


def _refuse_sharding_plugins(found: str = "") -> None:
    """Refuse a launch with one of Accelerate's sharding plugins: sharding is osp's own (FSDP2,
    tested on CPU ranks) and the plugins were never run. Checked on the variables before the
    Accelerator is built too, whose FSDP plugin would otherwise fail there first (e.g. on CPU)."""
    import os

    found = found or next((name for name, variable in _SHARDING_PLUGINS.items() if os.environ.get(variable, "").lower() in ("1", "true", "yes")), "")
    if found:
        raise InputError(
            f"accelerate launch with a {found} config is not supported",
            "launch with torchrun (or accelerate launch without a sharding plugin) and pass --strategy fsdp",
        )


@dataclass
class Progress:
    """Where the run stands: the loop advances it, a checkpoint stores it (trainer_state.json),
    a resume restores it."""

    world_size: int = 1
    batch_size: int = 1
    global_batch: int = 1
    step: int = 0
    consumed: int = 0
    """Global samples consumed: the data position, the same on any number of ranks."""
    skipped: dict[str, str] = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    earlier_train_seconds: float = 0.0
    """Spent in training steps by the runs this one resumed."""
    sampled_step: int | None = None
    """The last step whose samples were written (a resume does not sample it again)."""

    def train_seconds(self) -> float:
        return self.earlier_train_seconds + sum(self.step_seconds)

    def state_dict(self) -> dict[str, Any]:
        data = {"consumed": self.consumed, "world_size": self.world_size, "batch_size": self.batch_size, "global_batch": self.global_batch}
        return {"data": data, "samples_seen": self.consumed, "skipped": self.skipped, "loss_history": self.loss_history[-10000:], "train_seconds": self.train_seconds(), "sampled_step": self.sampled_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        data = state["data"]
        self.step = int(state["step"])
        # older checkpoints counted samples per rank
        self.consumed = int(data["consumed"]) if "consumed" in data else int(data["consumed_per_rank"]) * int(data.get("world_size", 1))
        self.skipped = dict(state.get("skipped", {}))
        # strict JSON stored non-finite losses as null
        self.loss_history = [math.nan if v is None else float(v) for v in state.get("loss_history", [])]
        self.earlier_train_seconds = float(state.get("train_seconds", 0.0))
        self.sampled_step = None if state.get("sampled_step") is None else int(state["sampled_step"])


class _JSONPart:
    """A part of the checkpoint that is only written (the run's config, the recipe's extra state)."""

    def __init__(self, key: str, value: Callable[[], Any]) -> None:
        self.key, self.value = key, value

    def state_dict(self) -> dict[str, Any]:
        return {self.key: self.value()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class _Run:
    """What `Trainer._build` hands the loop."""

    loader: Any
    sampler: Any
    resumed_from: Path | None


class Trainer:
    """Runs a `Recipe` under the `run` section of `config`."""

    def __init__(self, config: Any, recipe: Recipe, reporter: Reporter | None = None) -> None:
        check_config(config)
        self.config = config
        self.run_cfg = config.run
        self.recipe = recipe
        self.report = reporter or _log_reporter
        recipe.trainer = self
        self.output_dir = Path(self.run_cfg.output_dir)
        self.progress = Progress()
        self.parallel: Any = None  # the TrainParallel of this run (set before the recipe builds)
        self.validation_weights: dict[str, torch.Tensor] | None = None
        """Full model weights gathered for rank 0's validation when the model is sharded or wrapped."""

    @property
    def loss_history(self) -> list[float]:
        return self.progress.loss_history

    # --- run --------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run to `max_steps` (or until stopped); returns the summary (also written to summary.json)."""
        from ..errors import OSPError
        from ..parallel.launch import PeerProcessFailed, is_peer_failure

        created = not self.output_dir.exists()
        try:
            with contextlib.ExitStack() as stack:
                return self._loop(self._build(stack))
        except BaseException as exc:
            # a run refused before it wrote anything leaves no empty output folder behind
            # (the folder's own marker and temporaries are not written files)
            if created and self.output_dir.is_dir() and not any(p.is_file() and not is_temp_name(p.name) for p in self.output_dir.rglob("*")):
                release_folders(self.output_dir, above=False)
                shutil.rmtree(self.output_dir, ignore_errors=True)
            if isinstance(exc, (InputError, CheckpointUnreadableError)) and not is_main_process():
                exc.quiet = True  # every rank refuses the same input (or checks the same checkpoint files): rank 0 says it once
            if not isinstance(exc, OSPError) and isinstance(exc, Exception) and is_peer_failure(exc):
                raise PeerProcessFailed("another process of this run stopped", "see its error above (torchrun reports which rank failed)") from None
            raise

    def _build(self, stack: contextlib.ExitStack) -> _Run:
        """Everything before the first step: checks, the process group, the Accelerator and the
        layout, the recipe's models, the checkpoint's state, the data. `stack` undoes what
        outlives this call (the process group, deterministic kernels)."""
        from accelerate.utils import set_seed

        run = self.run_cfg
        self._check_device()
        previous_run = check_previous_run(self.output_dir, run.resume, run.overwrite)
        ensure_writable_dir(self.output_dir)
        stack.callback(torch.use_deterministic_algorithms, torch.are_deterministic_algorithms_enabled())
        if run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        device = self._device()
        if run.mixed_precision == "auto":
            from ..device import native_mixed_precision

            # resolved before anything reads it; checkpoints record what the run trained in
            run.mixed_precision = native_mixed_precision(device)
        if launched_world()[1] > 1:
            stack.enter_context(process_group(device))  # Accelerate finds it joined and uses it
        set_seed(run.seed)  # identical initial weights on every rank: seed before building
        accelerator = self.accelerator = self._accelerator(device)
        chosen = bool(self.config.parallel.strategy)
        self._resolve_strategy()
        self.parallel = self._parallel(accelerator)
        layout = self.parallel.layout
        self.progress = Progress(layout.world_size, run.batch_size, self._global_batch())
        self.recipe.check(accelerator)
        if layout.world_size > 1:
            from .parallelize import check_shared_output

            check_shared_output(self.output_dir, layout.rank, layout.world_size)
        self._build_model(accelerator)
        self.checkpoints = RunCheckpoints(accelerator, layout, self.output_dir, run.keep_last, self.warn, self._states(), self._run_model(), self.recipe.model_files())
        resumed_from = self._restore()
        if layout.mode == "fsdp" and layout.world_size == 1 and chosen:  # not when taken from the checkpoint resumed
            # after the restore: a refused checkpoint is one line
            self.warn("--strategy fsdp on one process: nothing to shard, it trains like a plain run (checkpoints are still Distributed Checkpoint folders, resumable on any number of ranks)")
        if resumed_from is None:
            set_seed(run.seed, device_specific=True)  # per-rank noise; a resume restores RNG states instead
        dataset = self.recipe.dataset()
        loader, sampler = self._loader(dataset, self.progress.consumed)
        if previous_run and run.overwrite:
            # only now, with the new run built and its data found, is the old one removed
            if layout.is_main:
                self._remove_previous_run()
            accelerator.wait_for_everyone()
        self._start(len(dataset), resumed_from)
        return _Run(loader, sampler, resumed_from)

    def _loop(self, run: _Run) -> dict[str, Any]:
        """Optimizer steps to `max_steps`, or until Ctrl-C / SIGTERM; logs, validates and
        checkpoints on the way; returns the summary."""
        cfg, progress, sampler = self.run_cfg, self.progress, run.sampler
        batches = iter(run.loader)
        start_step, stopped_by, last_logs, last_checkpoint = progress.step, "", {}, run.resumed_from
        every = self.recipe.validation_every()
        if every and progress.step < cfg.max_steps and progress.sampled_step != progress.step:
            self._validate(progress.step)  # the start: before the first step (a resume: unless sampled)
        with _StopFlag() as stop:
            while progress.step < cfg.max_steps:
                began = time.perf_counter()
                micro = [next(batches) for _ in range(cfg.gradient_accumulation_steps)]  # the sampler is endless
                for index, batch in enumerate(micro):
                    # per-sample randomness is keyed by the sample's global position
                    batch["position"] = sampler.step_positions(progress.consumed, index)
                    self._note_skips(batch.get("skipped", []))
                progress.consumed += sampler.global_batch
                last_logs = self._mean_over_ranks(self.recipe.train_step(micro, progress.step))
                if self.ema is not None:
                    self.ema.step(self.inner if self.sharded_ema else self.inner.parameters())
                progress.step += 1
                step = progress.step
                progress.step_seconds.append(time.perf_counter() - began)
                progress.loss_history.append(float(last_logs.get("loss", math.nan)))
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    self._log(step, last_logs)
                if every and step % every == 0:
                    self._validate(step)
                want_stop = self._agree_stop(stop.requested)
                if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or want_stop:
                    last_checkpoint = self._checkpoint(step)
                if want_stop:
                    stopped_by = stop.signal_name or "signal"
                    self.report("stop", {"step": step, "signal": stopped_by, "checkpoint": str(last_checkpoint)})
                    break
        if progress.step >= cfg.max_steps and last_checkpoint is not None and self.parallel.layout.is_main:
            self.recipe.finished(last_checkpoint)
        summary = self._summary(start_step, last_logs, last_checkpoint, stopped_by, sampler)
        self.accelerator.wait_for_everyone()  # no rank leaves while another is still in a collective
        self._drop_wrappers()
        self.accelerator.end_training()
        return summary

    def _drop_wrappers(self) -> None:
        """After a run of several DDP processes: the trainer and the recipe keep the bare modules,
        and the DDP wrappers (whose reducers hold the process group) are freed now, so the group
        is torn down with `end_training` while the interpreter is whole. A wrapper left for
        interpreter exit frees the group there, where gloo's worker threads can still reach for
        the GIL, and the rank aborts ("terminate called without an active exception") after a
        complete run. FSDP2's sharded modules are the model itself and stay as they are."""
        layout, acc = self.parallel.layout, self.accelerator
        if layout.world_size == 1 or layout.sharded:
            return
        self.model = acc.unwrap_model(self.model)
        self.extra_models = [acc.unwrap_model(m) for m in self.extra_models]
        self.recipe.prepared(self.model, self.optimizers, self.schedulers, self.extra_models)
        self.checkpoints = None  # its states held the wrapper; the run's last checkpoint is written
        acc.free_memory()  # Accelerate's own references to what it prepared; collects the cycles

    # --- build ------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        """This process's device: cpu when asked or when there is no accelerator (Accelerate
        only goes multi-process on CPU when told it is a CPU run), else its own accelerator."""
        from ..device import select_device

        if self.run_cfg.device == "cpu":
            return torch.device("cpu")
        return rank_device(select_device(None), launched_world()[2])

    def _accelerator(self, device: torch.device):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        run = self.run_cfg
        trackers: list[str] = []
        if run.report_to in ("tensorboard", "all"):
            trackers.append("tensorboard")
        if run.report_to in ("wandb", "all"):
            import importlib.util

            if importlib.util.find_spec("wandb") is None:
                raise InputError("report_to wandb needs the wandb package", "pip install wandb, or --report-to tensorboard")
            trackers.append("wandb")
        _refuse_sharding_plugins()
        accelerator = Accelerator(
            mixed_precision=run.mixed_precision,
            gradient_accumulation_steps=run.gradient_accumulation_steps,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=self.recipe.find_unused_parameters)],
            cpu=device.type == "cpu",
        )
        if accelerator.distributed_type.name in ("FSDP", "DEEPSPEED", "MEGATRON_LM", "XLA"):
            _refuse_sharding_plugins(accelerator.distributed_type.name)
        return accelerator

    def _check_device(self) -> None:
        wanted = self.run_cfg.device
        if wanted and wanted != "cpu":
            from ..device import select_device

            select_device(wanted)  # raises DeviceError with a hint when unavailable

    def _build_model(self, accelerator) -> None:
        """The recipe's models and optimizers, prepared for the layout, with the EMA."""
        built = self.recipe.build(accelerator)
        inner, _ = diffusers_part(built.model)
        if inner is None:
            raise TypeError("Built.model must be a diffusers model or a TrainingForward around one")
        self.inner = inner
        layout = self.parallel.layout
        if self.run_cfg.gradient_checkpointing and layout.mode == "ddp" and getattr(inner, "_supports_gradient_checkpointing", False):
            inner.enable_gradient_checkpointing()  # under fsdp, parallelize applies it per block
        self.ema = self._make_ema(inner)
        if layout.sharded:
            # FSDP2 wrapped the model in recipe.build (`self.parallelize`): Accelerate only steps
            # the optimizers with gradient accumulation and runs the lr schedules
            prepared = accelerator.prepare(*built.optimizers)
            prepared = prepared if isinstance(prepared, tuple) else (prepared,)
            objects = (built.model, *built.extra_models, *prepared, *(_PerOptimizerStep(s, accelerator) for s in built.schedulers))
        else:
            objects = accelerator.prepare(built.model, *built.extra_models, *built.optimizers, *built.schedulers)
            if not isinstance(objects, tuple):
                objects = (objects,)
        n_models = 1 + len(built.extra_models)
        self.model = objects[0]
        self.optimizers = list(objects[n_models : n_models + len(built.optimizers)])
        self.schedulers = list(objects[n_models + len(built.optimizers) :])
        if self.ema is not None:
            self.ema.to(accelerator.device)
        self.extra_models = list(objects[1:n_models])
        self.recipe.prepared(self.model, self.optimizers, self.schedulers, self.extra_models)

    def _states(self) -> dict[str, Any]:
        """The checkpoint's stateful parts, saved and loaded together (`RunCheckpoints`); the
        other trained modules, the grad scaler and the RNG go with the optimizers."""
        return {
            "model": self.model,
            "optimizers": self.optimizers,
            "schedulers": self.schedulers,
            "ema": self.ema,
            "progress": self.progress,
            "config": _JSONPart("config", lambda: config_to_dict(self.config)),
            "recipe": _JSONPart("recipe", lambda: {"name": self.recipe.name, **self.recipe.extra_state()}),
        }

    def _start(self, samples: int, resumed_from: Path | None) -> None:
        """Trackers on, and the start event."""
        acc, layout, run = self.accelerator, self.parallel.layout, self.run_cfg
        if layout.is_main:
            project = run.wandb_project if run.report_to in ("wandb", "all") else self.recipe.name
            acc.init_trackers(project, config=_flatten(config_to_dict(self.config)))
        self.report(
            "start",
            {
                "recipe": self.recipe.name,
                "processes": layout.world_size,
                "distributed": acc.distributed_type.name,
                "device": str(acc.device),
                "samples": samples,
                "step": self.progress.step,
                "max_steps": run.max_steps,
                "resumed_from": str(resumed_from) if resumed_from else None,
                "main": layout.is_main,
                "parallel": layout.to_dict(),
                "buckets": self.recipe.buckets(),
            },
        )

    # --- helpers ----------------------------------------------------------------------------
    @property
    def sharded_ema(self) -> bool:
        """Whether the EMA is held in shards like the weights (--strategy fsdp)."""
        from .ema import ShardedEMA

        return isinstance(self.ema, ShardedEMA)
    def _resolve_strategy(self) -> None:
        """Fill in parallel.strategy when not given: that of the checkpoint --resume continues
        (the newest with a readable state, for 'latest'), else ddp."""
        parallel = self.config.parallel
        if parallel.strategy:
            return
        parallel.strategy = "ddp"
        for candidate in self._resume_candidates():
            try:
                parallel.strategy = checkpoint_strategy(candidate)
                return
            except CheckpointUnreadableError:
                continue  # loading it fails (or falls back) with its own message

    def _resume_candidates(self) -> list[Path]:
        """The checkpoint --resume names, then (for 'latest') the older ones to fall back to."""
        root = self.output_dir / "checkpoints"
        first = resolve_resume(root, self.run_cfg.resume)
        if first is None:
            return []
        return [first] + ([c for c in reversed(list_checkpoints(root)) if c != first] if self.run_cfg.resume == "latest" else [])

    def _parallel(self, accelerator):
        from .parallelize import build_train_parallel, resolve_train_layout

        layout = resolve_train_layout(self.config.parallel, accelerator.num_processes, accelerator.process_index, self.run_cfg.mixed_precision, accelerator.local_process_index)
        return build_train_parallel(layout, accelerator.device)

    def parallelize(self, model: nn.Module) -> nn.Module:
        """`model` wrapped for this run's layout (recipes call it in `build`, before they create
        the optimizers: FSDP2 replaces the parameters)."""
        from .parallelize import parallelize

        return parallelize(model, self.parallel, self.config.parallel, self.run_cfg.mixed_precision, self.run_cfg.gradient_checkpointing)

    @property
    def schedule_ticks_per_step(self) -> int:
        """How often the lr schedule advances per optimizer step: Accelerate's wrapper (ddp) steps
        it once per process; fsdp runs it once per step (`_PerOptimizerStep`)."""
        return 1 if self.parallel.layout.sharded else self.accelerator.num_processes

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this rank's loss. Every rank of a sequence-parallel group computes the same
        loss from its share of the tokens: their gradients add up, while DDP and FSDP average
        over all ranks, hence the factor."""
        self.accelerator.backward(loss * self.parallel.layout.sp)

    def _mean_over_ranks(self, logs: dict[str, float]) -> dict[str, float]:
        """Metrics averaged over the ranks: the global batch's numbers, whatever the rank count."""
        acc = self.accelerator
        if acc.num_processes == 1 or not logs:
            return logs
        keys = sorted(k for k, v in logs.items() if isinstance(v, (int, float)))
        values = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=acc.device)
        mean = acc.reduce(values, reduction="mean")
        return {**logs, **{k: float(v) for k, v in zip(keys, mean.tolist())}}

    def warn(self, message: str) -> None:
        """One warning line for the console (rank 0 prints it)."""
        self.report("warning", {"message": message})

    def _remove_previous_run(self) -> None:
        for name in RUN_FILES:
            path = self.output_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def _run_model(self) -> str:
        """This run's model source, for messages: the config's model section, set keys only."""
        model = config_to_dict(self.config).get("model", {})
        chosen = [f"model.{k}={model[k]}" for k in ("config", "pretrained", "init_from_2d_vae") if model.get(k)]
        return "this run's " + (", ".join(chosen) if chosen else "default architecture")

    def _restore(self) -> Path | None:
        """Load the checkpoint --resume names into every stateful part; returns it, or None for a
        fresh run. With 'latest', a checkpoint with an unreadable file is skipped for the next
        older one, and the console says so."""
        candidates = self._resume_candidates()
        for index, candidate in enumerate(candidates):
            try:
                self.checkpoints.load(candidate)
                return candidate
            except CheckpointUnreadableError as exc:
                if index + 1 == len(candidates):
                    raise
                self.warn(f"{exc.message}; resuming from the older checkpoint {candidates[index + 1]} instead")
        return None

    def _make_ema(self, model: nn.Module):
        if not self.run_cfg.ema:
            return None
        if self.parallel.layout.mode == "fsdp":
            from .ema import ShardedEMA

            return ShardedEMA(model, decay=self.run_cfg.ema_decay)
        from diffusers.training_utils import EMAModel

        return EMAModel(model.parameters(), decay=self.run_cfg.ema_decay, model_cls=type(model), model_config=model.config)

    def _loader(self, dataset, consumed: int):
        from ..data.datasets import GlobalBatchSampler

        acc, run, layout = self.accelerator, self.run_cfg, self.parallel.layout
        # ranks of one sequence-parallel group read the same samples
        # bucketed data: each micro-batch from one bucket (`groups`: the bucket of each sample)
        groups = getattr(dataset, "groups", None)
        sampler = GlobalBatchSampler(len(dataset), run.batch_size, run.gradient_accumulation_steps, layout.dp, layout.dp_rank, seed=run.seed, start=consumed, groups=groups)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.run_cfg.batch_size,
            sampler=sampler,
            num_workers=self.run_cfg.num_workers,
            collate_fn=self.recipe.collate,
            pin_memory=acc.device.type == "cuda",
            # its own generator: creating the iterator must not draw from the global RNG,
            # or a resumed run's noise would be shifted against an uninterrupted one
            generator=torch.Generator().manual_seed(self.run_cfg.seed),
        )
        return loader, sampler

    def _note_skips(self, skipped: list) -> None:
        for path, reason in skipped:
            if path not in self.progress.skipped:
                self.progress.skipped[path] = reason
                self.report("skip", {"path": path, "reason": reason})

    def _agree_stop(self, local: bool) -> bool:
        acc = self.accelerator
        if acc.num_processes == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=acc.device)
        return bool(acc.reduce(flag, reduction="sum").item() > 0)

    def _log(self, step: int, logs: dict[str, float]) -> None:
        recent = self.progress.step_seconds[-self.run_cfg.log_every :]
        payload = {**logs, "sec_per_step": sum(recent) / max(len(recent), 1)}
        self.accelerator.log(payload, step=step)
        if self.parallel.layout.is_main:
            self.report("log", {"step": step, **payload})

    def _validate(self, step: int) -> None:
        acc = self.accelerator
        self.validation_weights = None
        layout = self.parallel.layout
        if layout.sharded or layout.sp > 1:
            # sharded or wrapped for sequence parallel: rank 0 samples from the gathered full weights
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # collective
            _, prefix = diffusers_part(acc.unwrap_model(self.model))
            if self.sharded_ema:
                full = self.ema.full_weights(full, prefix)  # sample with the average, as a DDP run does
            self.validation_weights = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
        if layout.is_main:
            with torch.random.fork_rng(devices=[acc.device] if acc.device.type == "cuda" else []):  # sampling must not move the run's RNG
                out = self.recipe.validate(step, self.output_dir / "samples" / f"step-{step:08d}")
            frames, prompts = out.pop("frames", None), out.pop("prompts", None)
            if frames:
                self._log_samples(step, frames, prompts or [])
            if out:
                self.report("validate", {"step": step, **out})
        self.progress.sampled_step = step
        acc.wait_for_everyone()

    def _log_samples(self, step: int, frames: list[torch.Tensor], prompts: list[str]) -> None:
        """Each sample's frames to TensorBoard as one image (`sprite_grid`: up to
        `TENSORBOARD_FRAMES` frames taken evenly, tiled; add_video would need moviepy), tagged
        samples/NN, and the prompts as text."""
        tracker = next((t for t in self.accelerator.trackers if t.name == "tensorboard"), None)
        if tracker is None:
            return
        from ..io.previews import sprite_grid

        for index, video in enumerate(frames):
            grid, _, _, _ = sprite_grid(video, TENSORBOARD_FRAMES)
            tracker.writer.add_image(f"samples/{index:02d}", grid.numpy(), step, dataformats="HWC")
        if prompts:
            tracker.writer.add_text("samples/prompts", "\n\n".join(f"{i:02d}: {p}" for i, p in enumerate(prompts)), step)
        tracker.writer.flush()

    def _gather_skips(self) -> dict[str, str]:
        if self.accelerator.num_processes == 1:
            return dict(self.progress.skipped)
        from accelerate.utils import gather_object

        merged: dict[str, str] = {}
        for part in gather_object([self.progress.skipped]):
            merged.update(part)
        return merged

    def _checkpoint(self, step: int) -> Path:
        self.progress.skipped = self._gather_skips()
        path = self.checkpoints.save(step)
        if self.parallel.layout.is_main:
            self.report("checkpoint", {"step": step, "path": str(path)})
        return path

    def _global_batch(self) -> int:
        return self.run_cfg.batch_size * self.run_cfg.gradient_accumulation_steps * self.parallel.layout.dp

    def _summary(self, start_step: int, last_logs: dict, checkpoint: Path | None, stopped_by: str, sampler) -> dict[str, Any]:
        acc, progress, layout = self.accelerator, self.progress, self.parallel.layout
        skipped = self._gather_skips()
        digests = None
        if not layout.sharded:
            from accelerate.utils import gather_object

            mine = weights_digest(self.inner)
            digests = gather_object([mine]) if acc.num_processes > 1 else [mine]
        losses = [v for v in progress.loss_history if not math.isnan(v)]
        limit = self.config.data.max_skip_report
        epoch, _ = sampler.position(progress.consumed)
        summary = {
            "recipe": self.recipe.name,
            "steps": progress.step,
            "steps_this_run": progress.step - start_step,
            "samples_seen": progress.consumed,
            "epoch": epoch,
            "processes": acc.num_processes,
            "parallel": layout.to_dict(),
            "global_batch": self._global_batch(),
            "buckets": self.recipe.buckets(),
            "skipped_samples": len(skipped),
            "skipped": [{"path": p, "reason": r} for p, r in list(skipped.items())[:limit]],
            "losses": {
                "first": losses[0] if losses else None,
                "last": losses[-1] if losses else None,
                "min": min(losses) if losses else None,
                "last_logged": last_logs,
            },
            "seconds_per_step": (sum(progress.step_seconds) / len(progress.step_seconds)) if progress.step_seconds else None,
            "train_seconds": progress.train_seconds(),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "stopped_by_signal": stopped_by or None,
            "rank_weight_digests": digests,
            "ranks_in_sync": (len(set(digests)) == 1) if digests else None,
            "output_dir": str(self.output_dir),
        }
        if layout.is_main:
            write_json(self.output_dir / "summary.json", summary, default=str)
            self.report("end", summary)
        return summary
