"""THE training engine: one loop for pretrain-mae, train-mtl and cotrain.

A training stage describes its run as a `Task` (the contract is documented on the class);
`Engine(cfg, task, run_dir).fit()` does the rest and owns the run folder:

- device (runtime.resolve_device) and bf16 autocast on CUDA (no loss scaler is needed for bf16,
  so none is saved); TF32 matmuls on CUDA.
- torchrun DDP: joins the process group from the env vars (gloo on CPU, nccl on CUDA), wraps the
  model in DistributedDataParallel, shards data with distributed.EpochSampler; only rank 0 writes.
- lr = base_lr x effective_batch / 256 (effective = batch x accum x world size; `lr` overrides),
  written to the log. AdamW(betas), per-iteration linear warm-up then cosine to min_lr (timm
  CosineLRScheduler, stepped with step_update; honours param-group "lr_scale"). --max-steps
  shortens the whole schedule (warm-up keeps its share).
- gradient accumulation (DDP no_sync on non-final micro-steps), gradient clipping (clip_grad).
- checkpoint-last.pt every `checkpoint_every_steps` optimiser steps and at every epoch end, in THE
  checkpoint format (train/checkpoint.py) with train_state = optimiser, loop position, per-rank RNG
  states (tensors and lists: weights_only loading works), best epoch, history.
- the best epoch: the one whose `selection_metric` is strictly higher than every earlier one.
  best.pt (same format, no train_state) is written then, the task's `on_best` hook runs, and
  metrics.json records it. Stages read results from `fit()`'s FitResult, not from the files.
- resume=True continues EXACTLY: the sampler order of an epoch is a function of (seed, epoch), each
  item's augmentation runs under its own seed (SeededDataset), so a resumed run sees the same
  batches, masks and dropout draws and ends with identical parameters.
- a non-finite loss or gradient norm (measured every step, logged as grad_norm) raises
  NonFiniteLossError before the optimiser steps; the last good checkpoint-last.pt is left untouched.
- an image that cannot be decoded is skipped (the next item is drawn in its place under the same
  seed), named in a warning and counted (`unreadable_images` in log.jsonl and metrics.json); a run
  stops with UnreadableDataError once more than `max_unreadable_share` of the set is unreadable.
  `check_images=True` decodes every image of the task before training (a progress bar).
- rich progress (loss, lr, images/s, ETA), log.jsonl (a row per `log_every_steps` steps plus a row
  per epoch with "type": "epoch"), config.yaml, metrics.json and loss_curve.png in run_dir.

Data loading is deterministic for any num_workers (per-item seeds); num_workers=0 is fine on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import TextColumn
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate

from abaw_cli.atomic import atomic_write_text
from abaw_cli.config import dump_config, to_dict
from abaw_cli.image_files import UnreadableImageError, check_images, show_paths
from abaw_cli.plots import save_curves
from abaw_cli.progress import make_progress
from abaw_cli.runtime import autocast, cores_per_rank, cpu_threads, resolve_device, seed_everything
from abaw_cli.train import distributed as D
from abaw_cli.train.checkpoint import load_checkpoint, make_checkpoint, save_atomic

log = logging.getLogger(__name__)

CHECKPOINT_LAST = "checkpoint-last.pt"
CHECKPOINT_BEST = "best.pt"
METRICS_FILE = "metrics.json"
# How many items in a row SeededDataset tries before it gives up on a stretch of unreadable files.
_MAX_SUBSTITUTES = 32


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training stage (nested as `optim` in stage configs)."""

    epochs: int = 30
    max_steps: int | None = None  # stop after this many optimiser steps (schedule shortened to fit)
    batch_size: int = 64  # per process
    accum_steps: int = 1
    base_lr: float = 5e-4  # lr = base_lr * effective_batch / 256
    lr: float | None = None  # absolute lr; overrides the base_lr scaling
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    layer_decay: float = 1.0  # < 1: layer-wise lr decay (model needs group_matcher)
    clip_grad: float | None = None  # max gradient norm; None = no clipping
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    num_workers: int = 4
    checkpoint_every_steps: int = 500
    log_every_steps: int = 10
    max_unreadable_share: float = 0.001  # stop once more than this share of the images is unreadable
    seed: int = 0
    device: str = "auto"


def cpu_training_threads(num_workers: int) -> int:
    """Intra-op threads for CPU training: the cores left after the data-loader workers and the other
    local ranks. Oversubscribed OpenMP threads spin-wait on each other: measured here on 2 cores,
    MAE cpu-small trained at 6-7 img/s with 2 threads beside 2 loader workers, 66-84 img/s with 1."""
    return max(1, cores_per_rank() - num_workers)


class EngineError(RuntimeError):
    """A run that cannot start or continue (bad run folder, dataset too small, ...)."""


class UnreadableDataError(EngineError):
    """More of the training images are unreadable than a run tolerates."""


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; training stopped before the bad update."""


class Task(ABC):
    """What a training stage supplies to the engine: model, data, loss, validation, extra files.

    `kind` names the checkpoint kind ("mae" | "mtl" | "cotrain": the registry builder that rebuilds
    the model); `selection_metric` is the key of validate()'s dict whose highest value picks the
    best epoch (None: no best.pt); `curve_keys` are the epoch-row keys ("val_<name>",
    "train_loss") the engine plots to val_curves.png under `curve_title`; `epoch` is set by the
    engine when an epoch starts (also after a resume), for schedules inside training_step.
    """

    kind: str = "mae"
    selection_metric: str | None = None
    curve_keys: tuple[str, ...] = ()
    curve_title: str = "validation"
    find_unused_parameters: bool = False  # passed to DDP
    epoch: int = 0

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model, built on CPU after seed_everything(cfg.seed); the engine moves it."""

    @abstractmethod
    def model_config(self) -> dict:
        """Plain dict for the registry builder (a checkpoint's "model_config")."""

    @abstractmethod
    def train_dataset(self) -> Dataset:
        """Map-style dataset; items are collated by `collate_fn()` (default: torch's). An item whose
        image cannot be decoded raises image_files.UnreadableImageError (the engine skips it)."""

    @abstractmethod
    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, {"name": float}) for one micro-batch. `batch` is already on `device`; `model` may
        be DDP-wrapped: call model(...) for the forward, use `unwrap(model)` for attributes. Runs
        under bf16 autocast on CUDA."""

    def train_sampler_weights(self) -> Sequence[float] | torch.Tensor | None:
        """Optional: one weight per item for class-balanced draws (with replacement)."""
        return None

    def collate_fn(self) -> Callable | None:
        return None

    def image_paths(self) -> Sequence[str | Path] | None:
        """Every image the training data reads (for `check_images` and the unreadable share)."""
        return None

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> list[dict]:
        return default_param_groups(model, cfg)

    def validate(self, model: nn.Module, device: torch.device, epoch: int) -> dict[str, float] | None:
        """Optional; called every epoch (and when --max-steps ends a run) on RANK 0 ONLY, with the
        UNWRAPPED model in eval mode under torch.no_grad() + autocast; other ranks wait at a
        barrier, then every rank gets the same dict (history is identical on all ranks)."""
        return None

    def validation_details(self) -> dict:
        """Optional: the last validate()'s numbers that are not scalars (per class, thresholds);
        kept with the best epoch in metrics.json."""
        return {}

    def checkpoint_meta(self, model: nn.Module, val_metrics: dict | None) -> dict:
        """Optional: the "meta" of best.pt / checkpoint-last.pt (label order, input size, ...)."""
        return {}

    def on_best(self, model: nn.Module, run_dir: Path, epoch: int, metrics: dict[str, float]) -> None:
        """Optional, rank 0, unwrapped model: a new best epoch (best.pt is written already)."""
        return None

    def on_epoch_end(self, model: nn.Module, run_dir: Path, epoch: int, history: list[dict]) -> None:
        """Optional, rank 0, unwrapped model: plots and extra files (MAE writes encoder.pt here)."""
        return None


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def default_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay for 1-D params (norms, biases) and the model's
    no_weight_decay() names (pos/cls tokens; matched as suffixes so wrapped ViTs work);
    layer-wise lr decay through the model's group_matcher when cfg.layer_decay < 1."""
    names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    names |= {"cls_token", "pos_embed", "mask_token", "decoder_pos_embed"}
    no_wd = sorted(names | {f"*.{n}" for n in names})
    if cfg.layer_decay < 1.0:
        return param_groups_layer_decay(model, cfg.weight_decay, no_weight_decay_list=no_wd, layer_decay=cfg.layer_decay)
    return param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=no_wd)


class SeededDataset(Dataset):
    """Wraps a dataset so that item `(index, seed)` is produced under its own RNG seed.

    Augmentations (torch, numpy or python `random`) then depend only on the sampler's draw, not on
    worker count, rank or where a run was resumed; the caller's RNG state is left untouched.
    An unreadable item is replaced by the next readable one (same seed, so still deterministic);
    an item is `(data, ((path, reason), ...))` with the files skipped to produce it.
    """

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        skipped: list[tuple[str, str]] = []
        for offset in range(min(_MAX_SUBSTITUTES, len(self.base))):
            try:
                return self._seeded((index + offset) % len(self.base), seed), tuple(skipped)
            except UnreadableImageError as exc:
                skipped.append((exc.path, exc.reason))
        raise UnreadableDataError(f"{len(skipped)} training items in a row are unreadable: {show_paths(p for p, _ in skipped)}")

    def _seeded(self, index: int, seed: int):
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only: torch.manual_seed would also queue a reseed of every
                # accelerator (0.8 ms per item on a CPU-only machine, a quarter of an MAE step's
                # time per image at cpu-small) and, with num_workers=0 on CUDA, reseed the GPU
                # streams that fork_rng(devices=[]) does not restore. Same CPU draws either way.
                torch.default_generator.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                return self.base[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SkippedAwareCollate:
    """Collates SeededDataset items: (the task's batch, the files skipped for it)."""

    def __init__(self, collate: Callable | None):
        self.collate = collate or default_collate

    def __call__(self, items: list) -> tuple[Any, list[tuple[str, str]]]:
        return self.collate([data for data, _ in items]), [s for _, skipped in items for s in skipped]


def rng_state() -> dict:
    """RNG states as tensors/lists/ints only (loadable with weights_only=True)."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(rows: list[dict], path: Path) -> None:
    """Train loss and lr against optimiser step (the step rows of log.jsonl), via plots.save_curves."""
    steps = [r for r in rows if r.get("type") == "step"]
    if steps:
        save_curves(steps, ["loss", "lr"], path, title="training", x_key="step")


@dataclass
class Schedule:
    """How long a run is and at which learning rate, from the config and the data size."""

    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    lr: float

    @classmethod
    def plan(cls, cfg: TrainConfig, n_items: int, world: int) -> Schedule:
        global_batch = cfg.batch_size * cfg.accum_steps * world
        steps_per_epoch = n_items // global_batch
        if steps_per_epoch < 1:
            raise EngineError(
                f"the training set has {n_items} items, fewer than one optimiser step's global batch of "
                f"{global_batch} (batch {cfg.batch_size} x accum {cfg.accum_steps} x {world} processes); lower --batch/--accum"
            )
        full = cfg.epochs * steps_per_epoch
        total = min(full, cfg.max_steps) if cfg.max_steps else full
        warmup = cfg.warmup_epochs * steps_per_epoch * (total / full if full else 1.0)
        lr = cfg.lr if cfg.lr is not None else cfg.base_lr * global_batch / 256
        return cls(global_batch, steps_per_epoch, total, int(round(warmup)), lr)


@dataclass
class LoopState:
    """Where a run stands; checkpoint-last.pt's train_state holds it, --resume restores it."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: dict | None = None  # {"epoch", "step", "value", "metrics", "details"} of the best epoch
    history: list[dict] = field(default_factory=list)  # the epoch rows of log.jsonl
    epoch_losses: list[float] = field(default_factory=list)  # step losses of the current epoch
    saved_step: int | None = None  # the step checkpoint-last.pt holds (None: not written yet)
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason, as this rank met them
    unreadable_total: int = 0  # unreadable images met by all ranks (each rank's new ones, summed)


@dataclass
class FitResult:
    """What a finished `Engine.fit()` hands its stage (the same on every rank)."""

    run_dir: Path
    history: list[dict]
    best: dict | None  # {"epoch", "step", "value", "metrics", "details"}, or None without validation
    main: bool  # True in the process that wrote the run folder (rank 0): the one that reports
    unreadable: list[str]  # unreadable images this process skipped

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT_BEST


@dataclass
class _Parts:
    """The objects one run trains with."""

    device: torch.device
    model: nn.Module  # unwrapped
    train_model: nn.Module  # DDP-wrapped under torchrun, else `model`
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    sampler: D.EpochSampler
    loader: DataLoader
    schedule: Schedule
    n_images: int


class _RunLog:
    """log.jsonl and the progress bar of rank 0 (other ranks: no-ops)."""

    def __init__(self, path: Path, main: bool, kind: str, total: int, completed: int):
        self.path, self.main = path, main
        self.progress = make_progress(
            TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"), TextColumn("{task.fields[ips]} img/s")
        )
        self._bar_args = (kind, total, completed)
        self._file = None
        self._bar = None

    def __enter__(self) -> _RunLog:
        if self.main:
            self._file = open(self.path, "a")
            self.progress.start()
            kind, total, completed = self._bar_args
            self._bar = self.progress.add_task(kind, total=total, completed=completed, loss="-", lr="-", ips="-")
        return self

    def __exit__(self, *exc) -> None:
        if self.main:
            self.progress.stop()
            self._file.close()

    def write(self, row: dict) -> None:
        if self.main:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def show(self, step: int, loss: float, lr: float, ips: float) -> None:
        if self.main:
            self.progress.update(self._bar, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", ips=f"{ips:.1f}")


class Engine:
    """Runs a Task; see the module docstring. `run_config` (the stage's whole config dataclass) is
    written to config.yaml and into checkpoints; it defaults to `cfg`."""

    def __init__(self, cfg: TrainConfig, task: Task, run_dir: str | Path, resume: bool = False,
                 run_config: Any = None, check_images: bool = False):
        self.cfg = cfg
        self.task = task
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.run_config = run_config if run_config is not None else cfg
        self.check_images = check_images
        self.model: nn.Module | None = None  # the unwrapped model once fit() has built it
        self.history: list[dict] = []
        self.main = True

    @property
    def last_path(self) -> Path:
        return self.run_dir / CHECKPOINT_LAST

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    # ------------------------------------------------------------------ public
    def fit(self) -> FitResult:
        device = resolve_device(self.cfg.device)
        created = D.init_distributed(device)
        try:
            with cpu_threads(device, cpu_training_threads(self.cfg.num_workers)):
                return self._run(device)
        finally:
            if created:
                D.cleanup_distributed()

    # ------------------------------------------------------------------ the run, step by step
    def _run(self, device: torch.device) -> FitResult:
        self.main = D.is_main()
        self._check_run_folder()
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        parts = self._build(device)
        state, rng = self._restore(parts) if self.resume else (LoopState(), None)
        self.history = state.history
        if self.main:
            self._start_run_folder(parts.schedule)
        if self.check_images:
            self._check_all_images(state, parts.n_images)
        # Per-rank streams for masking/drop-path; restored exactly on resume.
        if rng is not None:
            set_rng_state(rng)
        else:
            seed_everything(self.cfg.seed + 1000 * D.rank() + (state.global_step if self.resume else 0))
        if self.resume:
            state.saved_step = state.global_step
        with _RunLog(self.log_path, self.main, self.task.kind, parts.schedule.total_steps, state.global_step) as run_log:
            try:
                while state.epoch < self.cfg.epochs and state.global_step < parts.schedule.total_steps:
                    self._train_epoch(parts, state, run_log)
                    self._end_epoch(parts, state, run_log)
            except KeyboardInterrupt:
                if self.main:
                    log.warning("interrupted at step %d; %s holds step %s: continue with --resume",
                                state.global_step, self.last_path, state.saved_step)
                raise
        return FitResult(self.run_dir, state.history, state.best, self.main, list(state.unreadable))

    def _check_run_folder(self) -> None:
        if self.resume and not self.last_path.exists():
            raise EngineError(f"--resume: {self.last_path} does not exist (nothing to resume)")
        if not self.resume and self.last_path.exists():
            raise EngineError(f"{self.run_dir} already holds a run ({CHECKPOINT_LAST}); pass --resume to continue it or choose a new --out")

    def _build(self, device: torch.device) -> _Parts:
        cfg, task, world = self.cfg, self.task, D.world_size()
        seed_everything(cfg.seed)  # identical initial weights on every rank
        model = task.build_model().to(device)
        self.model = model
        dataset = task.train_dataset()
        schedule = Schedule.plan(cfg, len(dataset), world)
        # fused: one kernel over all parameters instead of a Python loop per tensor (on CPU, torch's
        # default there): 6 ms against 17 ms per step for two 4-block ViT-Tiny views.
        optimizer = torch.optim.AdamW(task.param_groups(model, cfg), lr=schedule.lr, betas=tuple(cfg.betas),
                                      weight_decay=cfg.weight_decay, fused=True)
        scheduler = CosineLRScheduler(
            optimizer, t_initial=max(1, schedule.total_steps - schedule.warmup_steps), lr_min=cfg.min_lr,
            warmup_t=schedule.warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False,
        )
        sampler = D.EpochSampler(len(dataset), cfg.batch_size, schedule.steps_per_epoch * cfg.accum_steps, cfg.seed,
                                 world, D.rank(), task.train_sampler_weights())
        loader = DataLoader(
            SeededDataset(dataset), batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
            collate_fn=SkippedAwareCollate(task.collate_fn()), pin_memory=device.type == "cuda",
            generator=torch.Generator(),  # keeps DataLoader's base-seed draw off the global RNG
            persistent_workers=cfg.num_workers > 0,
        )
        train_model = model
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            train_model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=task.find_unused_parameters)
        paths = task.image_paths()
        n_images = len(paths) if paths is not None else len(dataset)
        return _Parts(device, model, train_model, optimizer, scheduler, sampler, loader, schedule, n_images)

    def _restore(self, parts: _Parts) -> tuple[LoopState, dict | None]:
        """Model, optimiser and loop state from checkpoint-last.pt; (state, this rank's RNG state)."""
        ckpt = load_checkpoint(self.last_path, kinds=(self.task.kind,))
        ts = ckpt["train_state"]
        parts.model.load_state_dict(ckpt["model"])
        parts.optimizer.load_state_dict(ts["optimizer"])
        state = LoopState(
            epoch=ts["next_epoch"], step_in_epoch=ts["next_step_in_epoch"], global_step=ts["global_step"],
            best=ts.get("best"), history=list(ts.get("history", [])), epoch_losses=list(ts.get("epoch_losses", [])),
            unreadable=dict(ts.get("unreadable", {})), unreadable_total=int(ts.get("unreadable_total", 0)),
        )
        world = D.world_size()
        if ts.get("world_size") != world or ts.get("global_batch") != parts.schedule.global_batch:
            log.warning(
                "resuming with %d process(es) / global batch %d, saved with %s / %s: the data order will not repeat exactly",
                world, parts.schedule.global_batch, ts.get("world_size"), ts.get("global_batch"),
            )
        rngs = ts["rng"]
        if self.main:  # drop log rows written after the checkpoint by the interrupted run
            rows = [r for r in read_log(self.log_path) if r.get("step", 0) <= state.global_step]
            atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in rows))
        return state, (rngs[D.rank()] if len(rngs) == world else None)

    def _start_run_folder(self, schedule: Schedule) -> None:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(self.run_config, self.run_dir / "config.yaml")
        log.info(
            "lr %.3g = %s (effective batch %d = batch %d x accum %d x %d process(es)); %d steps/epoch, %d steps, %d warm-up",
            schedule.lr, "lr override" if cfg.lr is not None else f"base lr {cfg.base_lr:g} x {schedule.global_batch} / 256",
            schedule.global_batch, cfg.batch_size, cfg.accum_steps, D.world_size(), schedule.steps_per_epoch,
            schedule.total_steps, schedule.warmup_steps,
        )

    def _check_all_images(self, state: LoopState, n_images: int) -> None:
        """--check-images: decode every image once (rank 0, progress bar) before training."""
        problems = None
        paths = self.task.image_paths()
        if paths is None:
            log.warning("--check-images: this stage does not list its images; nothing was checked")
            return
        if self.main:
            progress = make_progress(transient=True)
            with progress:
                bar = progress.add_task("checking images", total=len(paths))
                problems = check_images(paths, on_done=lambda n: progress.advance(bar, n))
            log.info("--check-images: %d of %d images decode%s", len(paths) - len(problems), len(paths),
                     "" if not problems else f"; unreadable: {show_paths(f'{p} ({r})' for p, r in problems)}")
        problems = D.broadcast_object(problems)
        self._raise_if_too_many(len(problems), n_images, [p for p, _ in problems])
        for path, reason in problems:
            if path not in state.unreadable:
                state.unreadable[path] = reason
                state.unreadable_total += 1

    def _raise_if_too_many(self, unreadable: int, n_images: int, first: list[str]) -> None:
        if unreadable > self.cfg.max_unreadable_share * n_images:
            raise UnreadableDataError(
                f"{unreadable} of {n_images} training images are unreadable, more than the "
                f"{self.cfg.max_unreadable_share:.1%} a run skips: {show_paths(first)}. Fix or remove them "
                "(--check-images lists every one before training starts)"
            )

    def _train_epoch(self, parts: _Parts, state: LoopState, run_log: _RunLog) -> None:
        cfg, schedule = self.cfg, parts.schedule
        parts.sampler.set_epoch(state.epoch, start_batch=state.step_in_epoch * cfg.accum_steps)
        self.task.epoch = state.epoch
        parts.train_model.train()
        batches = iter(parts.loader)
        t_log, imgs_since = time.perf_counter(), 0
        while state.step_in_epoch < schedule.steps_per_epoch and state.global_step < schedule.total_steps:
            parts.scheduler.step_update(state.global_step)
            stats = self._optimiser_step(parts, batches, state)
            state.global_step += 1
            state.step_in_epoch += 1
            state.epoch_losses.append(stats["loss"])
            imgs_since += schedule.global_batch
            last_of_epoch = state.step_in_epoch == schedule.steps_per_epoch or state.global_step == schedule.total_steps
            if state.global_step % cfg.log_every_steps == 0 or last_of_epoch:
                dt = time.perf_counter() - t_log
                ips = imgs_since / dt if dt > 0 else 0.0
                lr = max(g["lr"] for g in parts.optimizer.param_groups)
                run_log.write({"type": "step", "step": state.global_step, "epoch": state.epoch, "lr": lr,
                               "images_per_s": ips, **stats, "unreadable_images": state.unreadable_total})
                run_log.show(state.global_step, stats["loss"], lr, ips)
                t_log, imgs_since = time.perf_counter(), 0
            if cfg.checkpoint_every_steps and state.global_step % cfg.checkpoint_every_steps == 0 and not last_of_epoch:
                self._save_last(parts, state)

    def _optimiser_step(self, parts: _Parts, batches, state: LoopState) -> dict[str, float]:
        """One optimiser step over `accum_steps` micro-batches -> the logged numbers (rank-averaged)."""
        cfg, accum, device = self.cfg, self.cfg.accum_steps, parts.device
        ddp = parts.train_model is not parts.model
        loss_sum = torch.zeros((), device=device)
        logs_sum: dict[str, float] = {}
        new_unreadable = 0
        for micro in range(accum):
            batch, skipped = next(batches)
            new_unreadable += self._note_unreadable(state, skipped)
            batch = to_device(batch, device)
            with parts.train_model.no_sync() if ddp and micro < accum - 1 else contextlib.nullcontext():
                with autocast(device, cfg.amp):
                    loss, logs = self.task.training_step(parts.train_model, batch, device)
                (loss / accum).backward()
            loss_sum += loss.detach().float()
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v)
        keys = sorted(logs_sum)
        packed = torch.stack([loss_sum / accum] + [torch.tensor(logs_sum[k] / accum, device=device) for k in keys]
                             + [torch.tensor(float(new_unreadable), device=device)])
        packed = D.all_reduce_sum(packed.float())
        values = (packed[:-1] / D.world_size()).tolist()
        state.unreadable_total += int(packed[-1].item())
        self._raise_if_too_many(state.unreadable_total, parts.n_images, list(state.unreadable))
        grad_norm = self._clip_gradients(parts, values[0], state)
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        return {"loss": values[0], **dict(zip(keys, values[1:])), "grad_norm": grad_norm}

    def _note_unreadable(self, state: LoopState, skipped: list[tuple[str, str]]) -> int:
        """Record (and warn about) the files skipped for a batch; how many were new on this rank."""
        new = 0
        for path, reason in skipped:
            if path not in state.unreadable:
                state.unreadable[path] = reason
                new += 1
                log.warning("skipped an unreadable training image: %s (%s)", path, reason)
        return new

    def _clip_gradients(self, parts: _Parts, loss: float, state: LoopState) -> float | None:
        """Clip and measure the gradient norm (returned); refuse a non-finite loss or norm before the update."""
        grad_norm = None
        if math.isfinite(loss):  # the norm is always measured: a NaN gradient must not reach the weights
            max_norm = self.cfg.clip_grad if self.cfg.clip_grad else float("inf")
            grads = [p for p in parts.model.parameters() if p.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
            if math.isfinite(grad_norm):
                return grad_norm
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        kept = (f"the last good checkpoint {self.last_path} (step {state.saved_step}) is kept"
                if state.saved_step is not None else "no checkpoint had been written yet")
        parts.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(
            f"non-finite {what} at epoch {state.epoch}, optimiser step {state.global_step + 1}: training stopped before the update; "
            f"{kept}. Lower the learning rate (--lr / base_lr) or check the input data, then run again (--resume continues from the checkpoint)."
        )

    def _end_epoch(self, parts: _Parts, state: LoopState, run_log: _RunLog) -> None:
        """Validate, record the epoch, pick the best, write metrics.json and checkpoint-last.pt."""
        complete = state.step_in_epoch == parts.schedule.steps_per_epoch
        val = self._validate(parts.model, parts.device, state.epoch)
        row = {
            "type": "epoch", "epoch": state.epoch, "step": state.global_step, "partial": not complete,
            "train_loss": float(np.mean(state.epoch_losses)) if state.epoch_losses else float("nan"),
            "lr": max(g["lr"] for g in parts.optimizer.param_groups),
            "unreadable_images": state.unreadable_total,
        }
        if val:
            row.update({f"val_{k}": v for k, v in val.items()})
        state.history.append(row)
        run_log.write(row)
        if self._is_new_best(val, state.best):
            state.best = self._save_best(parts.model, val, state)
        if self.main:
            self.task.on_epoch_end(parts.model, self.run_dir, state.epoch, state.history)
            self._plot_curves(state.history)
        if complete:
            state.epoch, state.step_in_epoch, state.epoch_losses = state.epoch + 1, 0, []
        if self.main:
            self._write_metrics(state)
        self._save_last(parts, state)

    def _plot_curves(self, history: list[dict]) -> None:
        plot_loss_curve(read_log(self.log_path), self.run_dir / "loss_curve.png")
        keys = [k for k in self.task.curve_keys if any(k in row for row in history)]
        if keys:
            save_curves(history, keys, self.run_dir / "val_curves.png", title=self.task.curve_title)

    def _validate(self, model: nn.Module, device: torch.device, epoch: int) -> dict | None:
        val = None
        if self.main:
            was_training = model.training
            model.eval()
            with torch.no_grad(), autocast(device, self.cfg.amp):
                val = self.task.validate(model, device, epoch)
            model.train(was_training)
            val = {k: float(v) for k, v in val.items()} if val else None
        D.barrier()
        val = D.broadcast_object(val)
        name = self.task.selection_metric
        if name and val and name not in val:  # checked on every rank, so all of them stop together
            raise EngineError(f"validate() returned {sorted(val)} but the selection metric is {name!r}")
        return val

    def _is_new_best(self, val: dict | None, best: dict | None) -> bool:
        """Strictly higher than every earlier epoch (decided alike on every rank: `val` is shared)."""
        name = self.task.selection_metric
        return bool(name and val) and (best is None or val[name] > best["value"])

    def _save_best(self, model: nn.Module, val: dict, state: LoopState) -> dict:
        """The best-epoch record; rank 0 writes best.pt and runs the task's on_best hook."""
        name = self.task.selection_metric
        best = {"epoch": state.epoch, "step": state.global_step, "value": val[name], "metrics": dict(val), "details": {}}
        if self.main:
            best["details"] = self.task.validation_details()
            meta = dict(self.task.checkpoint_meta(model, val))
            meta.setdefault("metrics", val)
            ckpt = make_checkpoint(self.task.kind, self.task.model_config(), model.state_dict(), meta, to_dict(self.run_config))
            save_atomic(ckpt, self.run_dir / CHECKPOINT_BEST)
            log.info("new best %s = %.4f -> %s", name, val[name], self.run_dir / CHECKPOINT_BEST)
            self.task.on_best(model, self.run_dir, state.epoch, val)
        return D.broadcast_object(best)

    def _save_last(self, parts: _Parts, state: LoopState) -> None:
        rngs = D.all_gather_objects(rng_state())  # a collective: every rank calls it
        if self.main:
            train_state = {
                "optimizer": parts.optimizer.state_dict(),
                "next_epoch": state.epoch,
                "next_step_in_epoch": state.step_in_epoch,
                "global_step": state.global_step,
                "best": state.best,
                "history": state.history,
                "epoch_losses": list(state.epoch_losses),
                "unreadable": dict(state.unreadable),
                "unreadable_total": state.unreadable_total,
                "rng": rngs,
                "world_size": D.world_size(),
                "global_batch": parts.schedule.global_batch,
                "scaler": None,  # bf16 autocast needs no loss scaling
            }
            val = next((h for h in reversed(state.history) if any(k.startswith("val_") for k in h)), None)
            val_metrics = {k[4:]: v for k, v in val.items() if k.startswith("val_")} if val else None
            meta = dict(self.task.checkpoint_meta(parts.model, val_metrics))
            ckpt = make_checkpoint(self.task.kind, self.task.model_config(), parts.model.state_dict(), meta,
                                   to_dict(self.run_config), train_state)
            save_atomic(ckpt, self.last_path)
        state.saved_step = state.global_step

    def _write_metrics(self, state: LoopState) -> None:
        best = state.best
        metrics = {
            "global_step": state.global_step,
            "epochs_done": sum(1 for h in state.history if not h.get("partial")),
            "selection_metric": self.task.selection_metric,
            "best": best["value"] if best else None,
            "best_epoch": {**best, "checkpoint": CHECKPOINT_BEST} if best else None,
            "last": state.history[-1] if state.history else None,
            "unreadable_images": {"count": state.unreadable_total, "paths": dict(list(state.unreadable.items())[:100])},
        }
        atomic_write_text(self.run_dir / METRICS_FILE, json.dumps(metrics, indent=2))
