"""THE training engine: one loop for pretrain-mae, train-mtl and cotrain.

A stage describes its training as a `Task`; `Engine(cfg, task, run_dir).fit()` does the rest.

    class MyTask(Task):
        kind = "mtl"                        # checkpoint kind: "mae" | "mtl" | "cotrain"
        selection_metric = "p_mtl"          # key of validate()'s dict, higher is better -> best.pt
        def build_model(self) -> nn.Module  # built on CPU after seed_everything(cfg.seed); engine moves it
        def model_config(self) -> dict      # plain dict for the registry builder (checkpoint "model_config")
        def train_dataset(self) -> Dataset  # map-style; items are collated by `collate_fn()` (default torch's)
        def train_sampler_weights(self)     # optional: one weight per item for class-balanced draws
        def training_step(self, model, batch, device) -> (loss, {"name": float, ...})
            # `self.epoch` holds the current epoch (set by the engine, also after a resume).
            # `batch` is already on `device`; `model` may be DDP-wrapped: call model(...) for the
            # forward, use engine.unwrap(model) for attributes. Runs under bf16 autocast on CUDA.
        def param_groups(self, model, cfg)  # optional; default: default_param_groups (below)
        def validate(self, model, device, epoch) -> dict | None
            # optional; called every epoch (and when --max-steps ends a run) on RANK 0 ONLY, with the
            # UNWRAPPED model in eval mode under torch.no_grad() + autocast; other ranks wait at a
            # barrier, then every rank gets the same dict (history is identical on all ranks).
        def checkpoint_meta(self, model, val_metrics) -> dict   # optional: best.pt / checkpoint meta
        def on_epoch_end(self, model, run_dir, epoch, history)  # optional, rank 0, unwrapped model:
            # plots, extra files (MAE writes encoder.pt and its reconstruction grid here)

Engine responsibilities
- device (runtime.resolve_device) and bf16 autocast on CUDA (runtime.autocast; no loss scaler is
  needed for bf16, so none is saved); TF32 matmuls on CUDA.
- torchrun DDP: joins the process group from the env vars (gloo on CPU, nccl on CUDA), wraps the
  model in DistributedDataParallel, shards data with distributed.EpochSampler; only rank 0 writes.
- lr = base_lr x effective_batch / 256 (effective = batch x accum x world size; `lr` overrides),
  written to the log. AdamW(betas), per-iteration linear warm-up then cosine to min_lr
  (timm CosineLRScheduler, stepped with step_update; honours param-group "lr_scale").
  --max-steps shortens the whole schedule (warm-up keeps its share).
- gradient accumulation (DDP no_sync on non-final micro-steps), gradient clipping (clip_grad).
- checkpoint-last.pt every `checkpoint_every_steps` optimiser steps and at every epoch end, written
  atomically in THE checkpoint format (train/checkpoint.py) with train_state = optimiser,
  epoch/step position, global step, per-rank RNG states (python/numpy/torch/cuda as tensors and
  lists: weights_only loading works), best metric, history. best.pt (same format, no
  train_state) whenever `selection_metric` improves.
- resume=True continues EXACTLY: the sampler order of an epoch is a function of (seed, epoch), each
  item's augmentation runs under its own seed (SeededDataset), so a resumed run sees the same
  batches, masks and dropout draws and ends with identical parameters.
- a non-finite loss or gradient norm (measured every step, logged as grad_norm) raises
  NonFiniteLossError before the optimiser steps; the last good checkpoint-last.pt is left untouched.
- rich progress (loss, lr, images/s, ETA), log.jsonl (a row per `log_every_steps` steps plus a row
  per epoch with "type": "epoch"), config.yaml, metrics.json and loss_curve.png in run_dir.

Data loading is deterministic for any num_workers (per-item seeds); num_workers=0 is fine on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import TextColumn
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from abaw_cli.config import dump_config, to_dict
from abaw_cli.plots import save_curves
from abaw_cli.progress import make_progress
from abaw_cli.runtime import autocast, resolve_device, seed_everything
from abaw_cli.train import distributed as D
from abaw_cli.train.checkpoint import load_checkpoint, make_checkpoint, save_atomic

log = logging.getLogger(__name__)

CHECKPOINT_LAST = "checkpoint-last.pt"
CHECKPOINT_BEST = "best.pt"


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
    seed: int = 0
    device: str = "auto"


def cpu_training_threads(num_workers: int) -> int:
    """Intra-op threads for CPU training: the cores left after the data-loader workers and the other
    local ranks. Oversubscribed OpenMP threads spin-wait on each other: measured here on 2 cores,
    MAE cpu-small trained at 6-7 img/s with 2 threads beside 2 loader workers, 66-84 img/s with 1."""
    cores = os.cpu_count() or 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, cores // local_ranks - num_workers)


class EngineError(RuntimeError):
    """A run that cannot start or continue (bad run folder, dataset too small, ...)."""


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; training stopped before the bad update."""


class Task(ABC):
    """What a stage supplies to the engine (see the module docstring for the contract)."""

    kind: str = "mae"
    selection_metric: str | None = None
    find_unused_parameters: bool = False  # passed to DDP
    epoch: int = 0  # set by the engine when an epoch starts, for schedules inside training_step

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def model_config(self) -> dict: ...

    @abstractmethod
    def train_dataset(self) -> Dataset: ...

    @abstractmethod
    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]: ...

    def train_sampler_weights(self) -> Sequence[float] | torch.Tensor | None:
        return None

    def collate_fn(self):
        return None

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> list[dict]:
        return default_param_groups(model, cfg)

    def validate(self, model: nn.Module, device: torch.device, epoch: int) -> dict[str, float] | None:
        return None

    def checkpoint_meta(self, model: nn.Module, val_metrics: dict | None) -> dict:
        return {}

    def on_epoch_end(self, model: nn.Module, run_dir: Path, epoch: int, history: list[dict]) -> None:
        return None


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def default_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay for 1-D params (norms, biases) and the model's
    no_weight_decay() names (pos/cls tokens; matched as suffixes so wrapped ViTs work);
    layer-wise lr decay through the model's group_matcher when cfg.layer_decay < 1."""
    names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    names |= {"cls_token", "pos_embed", "mask_token", "decoder_pos_embed"}
    no_wd = sorted({n for n in names} | {f"*.{n}" for n in names})
    if cfg.layer_decay < 1.0:
        return param_groups_layer_decay(model, cfg.weight_decay, no_weight_decay_list=no_wd, layer_decay=cfg.layer_decay)
    return param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=no_wd)


class SeededDataset(Dataset):
    """Wraps a dataset so that item `(index, seed)` is produced under its own RNG seed.

    Augmentations (torch, numpy or python `random`) then depend only on the sampler's draw, not on
    worker count, rank or where a run was resumed; the caller's RNG state is left untouched.
    """

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                return self.base[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


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


class Engine:
    """Runs a Task; see the module docstring. `run_config` (the stage's whole config dataclass) is
    written to config.yaml and into checkpoints; it defaults to `cfg`."""

    def __init__(self, cfg: TrainConfig, task: Task, run_dir: str | Path, resume: bool = False, run_config: Any = None):
        self.cfg = cfg
        self.task = task
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.run_config = run_config if run_config is not None else cfg
        self.model: nn.Module | None = None  # the unwrapped model once fit() has built it
        self.history: list[dict] = []

    # ------------------------------------------------------------------ public
    def fit(self) -> list[dict]:
        device = resolve_device(self.cfg.device)
        created = D.init_distributed(device)
        threads_before = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(cpu_training_threads(self.cfg.num_workers))
        try:
            return self._fit(device)
        finally:
            torch.set_num_threads(threads_before)
            if created:
                D.cleanup_distributed()

    # ------------------------------------------------------------------ internals
    def _plan(self, n_items: int, world: int) -> dict:
        cfg = self.cfg
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
        return {"global_batch": global_batch, "steps_per_epoch": steps_per_epoch, "total_steps": total, "warmup_steps": int(round(warmup)), "lr": lr}

    def _fit(self, device: torch.device) -> list[dict]:
        cfg, task, run_dir = self.cfg, self.task, self.run_dir
        rank, world = D.rank(), D.world_size()
        main = rank == 0
        last_path, best_path, log_path = run_dir / CHECKPOINT_LAST, run_dir / CHECKPOINT_BEST, run_dir / "log.jsonl"
        if self.resume and not last_path.exists():
            raise EngineError(f"--resume: {last_path} does not exist (nothing to resume)")
        if not self.resume and last_path.exists():
            raise EngineError(f"{run_dir} already holds a run ({CHECKPOINT_LAST}); pass --resume to continue it or choose a new --out")
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        seed_everything(cfg.seed)  # identical initial weights on every rank
        model = task.build_model().to(device)
        self.model = model
        dataset = task.train_dataset()
        plan = self._plan(len(dataset), world)
        spe, total_steps, accum = plan["steps_per_epoch"], plan["total_steps"], cfg.accum_steps

        optimizer = torch.optim.AdamW(task.param_groups(model, cfg), lr=plan["lr"], betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=max(1, total_steps - plan["warmup_steps"]),
            lr_min=cfg.min_lr,
            warmup_t=plan["warmup_steps"],
            warmup_lr_init=0.0,
            warmup_prefix=True,
            t_in_epochs=False,
        )

        epoch, step_in_epoch, global_step = 0, 0, 0
        best_value: float | None = None
        history: list[dict] = []
        rng_to_restore = None
        resumed_losses: list[float] = []  # step losses of the epoch the checkpoint stopped inside
        if self.resume:
            ckpt = load_checkpoint(last_path, kinds=(task.kind,))
            ts = ckpt["train_state"]
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ts["optimizer"])
            epoch, step_in_epoch, global_step = ts["next_epoch"], ts["next_step_in_epoch"], ts["global_step"]
            best_value, history = ts.get("best_value"), list(ts.get("history", []))
            resumed_losses = list(ts.get("epoch_losses", []))
            if ts.get("world_size") != world or ts.get("global_batch") != plan["global_batch"]:
                log.warning(
                    "resuming with %d process(es) / global batch %d, saved with %s / %s: the data order will not repeat exactly",
                    world, plan["global_batch"], ts.get("world_size"), ts.get("global_batch"),
                )
            rngs = ts["rng"]
            rng_to_restore = rngs[rank] if len(rngs) == world else None
            del ckpt
            if main:  # drop log rows written after the checkpoint by the interrupted run
                rows = [r for r in read_log(log_path) if r.get("step", 0) <= global_step]
                tmp = log_path.with_name(".log.jsonl.tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
                tmp.replace(log_path)
        self.history = history

        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.run_config, run_dir / "config.yaml")
            log.info(
                "lr %.3g = %s (effective batch %d = batch %d x accum %d x %d process(es)); %d steps/epoch, %d steps, %d warm-up",
                plan["lr"],
                "lr override" if cfg.lr is not None else f"base lr {cfg.base_lr:g} x {plan['global_batch']} / 256",
                plan["global_batch"], cfg.batch_size, accum, world, spe, total_steps, plan["warmup_steps"],
            )
        sampler = D.EpochSampler(len(dataset), cfg.batch_size, spe * accum, cfg.seed, world, rank, task.train_sampler_weights())
        loader = DataLoader(
            SeededDataset(dataset),
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=task.collate_fn(),
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),  # keeps DataLoader's base-seed draw off the global RNG
            persistent_workers=cfg.num_workers > 0,
        )
        ddp = world > 1
        train_model: nn.Module = (
            DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=task.find_unused_parameters)
            if ddp
            else model
        )
        # Per-rank streams for masking/drop-path; restored exactly on resume.
        if rng_to_restore is not None:
            set_rng_state(rng_to_restore)
        else:
            seed_everything(cfg.seed + 1000 * rank + (global_step if self.resume else 0))
        saved_step = global_step if self.resume else None

        progress = make_progress(
            TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"), TextColumn("{task.fields[ips]} img/s")
        )
        log_file = open(log_path, "a") if main else None
        try:
            with progress if main else contextlib.nullcontext():
                bar = progress.add_task(task.kind, total=total_steps, completed=global_step, loss="-", lr="-", ips="-") if main else None
                while epoch < cfg.epochs and global_step < total_steps:
                    sampler.set_epoch(epoch, start_batch=step_in_epoch * accum)
                    task.epoch = epoch
                    train_model.train()
                    batches = iter(loader)
                    epoch_losses, resumed_losses = resumed_losses, []
                    t_log, imgs_since = time.perf_counter(), 0
                    while step_in_epoch < spe and global_step < total_steps:
                        scheduler.step_update(global_step)
                        stats = self._optimiser_step(train_model, model, optimizer, batches, device, ddp, epoch, global_step, saved_step)
                        global_step += 1
                        step_in_epoch += 1
                        epoch_losses.append(stats["loss"])
                        imgs_since += plan["global_batch"]
                        lr_now = max(g["lr"] for g in optimizer.param_groups)
                        if main and (global_step % cfg.log_every_steps == 0 or step_in_epoch == spe or global_step == total_steps):
                            dt = time.perf_counter() - t_log
                            ips = imgs_since / dt if dt > 0 else 0.0
                            row = {"type": "step", "step": global_step, "epoch": epoch, "lr": lr_now, "images_per_s": ips, **stats}
                            log_file.write(json.dumps(row) + "\n")
                            log_file.flush()
                            t_log, imgs_since = time.perf_counter(), 0
                            progress.update(bar, completed=global_step, loss=f"{stats['loss']:.4f}", lr=f"{lr_now:.2e}", ips=f"{ips:.1f}")
                        if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0 and step_in_epoch < spe and global_step < total_steps:
                            self._save_last(model, optimizer, epoch, step_in_epoch, global_step, best_value, history, plan, last_path, epoch_losses)
                            saved_step = global_step

                    # ---- epoch end (or the end of a --max-steps run inside an epoch)
                    complete = step_in_epoch == spe
                    val = self._validate(model, device, epoch)
                    row = {
                        "type": "epoch", "epoch": epoch, "step": global_step, "partial": not complete,
                        "train_loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
                        "lr": max(g["lr"] for g in optimizer.param_groups),
                    }
                    if val:
                        row.update({f"val_{k}": v for k, v in val.items()})
                    history.append(row)
                    if main:
                        log_file.write(json.dumps(row) + "\n")
                        log_file.flush()
                        best_value = self._maybe_save_best(model, val, best_value, best_path)
                        task.on_epoch_end(model, run_dir, epoch, history)
                        plot_loss_curve(read_log(log_path), run_dir / "loss_curve.png")
                        self._write_metrics(history, best_value, global_step)
                    best_value = D.broadcast_object(best_value)
                    next_epoch, next_step = (epoch + 1, 0) if complete else (epoch, step_in_epoch)
                    self._save_last(model, optimizer, next_epoch, next_step, global_step, best_value, history, plan, last_path, [] if complete else epoch_losses)
                    saved_step = global_step
                    epoch, step_in_epoch = next_epoch, next_step
        except KeyboardInterrupt:
            if main:
                log.warning("interrupted at step %d; %s holds step %s: continue with --resume", global_step, last_path, saved_step)
            raise
        finally:
            if log_file:
                log_file.close()
        return history

    def _optimiser_step(self, train_model, model, optimizer, batches, device, ddp, epoch, global_step, saved_step) -> dict[str, float]:
        cfg, accum = self.cfg, self.cfg.accum_steps
        loss_sum = torch.zeros((), device=device)
        logs_sum: dict[str, float] = {}
        for micro in range(accum):
            batch = to_device(next(batches), device)
            sync = micro == accum - 1
            with train_model.no_sync() if ddp and not sync else contextlib.nullcontext():
                with autocast(device, cfg.amp):
                    loss, logs = self.task.training_step(train_model, batch, device)
                (loss / accum).backward()
            loss_sum += loss.detach().float()
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v)
        keys = sorted(logs_sum)
        packed = torch.stack([loss_sum / accum] + [torch.tensor(logs_sum[k] / accum, device=device) for k in keys])
        packed = D.all_reduce_sum(packed.float()) / D.world_size()
        values = packed.tolist()
        grad_norm = None
        if math.isfinite(values[0]):  # the norm is always measured: a NaN gradient must not reach the weights
            max_norm = cfg.clip_grad if cfg.clip_grad else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm))
        if not math.isfinite(values[0]) or (grad_norm is not None and not math.isfinite(grad_norm)):
            what = f"loss {values[0]}" if not math.isfinite(values[0]) else f"gradient norm {grad_norm}"
            kept = (
                f"the last good checkpoint {self.run_dir / CHECKPOINT_LAST} (step {saved_step}) is kept"
                if saved_step is not None
                else "no checkpoint had been written yet"
            )
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"non-finite {what} at epoch {epoch}, optimiser step {global_step + 1}: training stopped before the update; "
                f"{kept}. Lower the learning rate (--lr / base_lr) or check the input data, then run again (--resume continues from the checkpoint)."
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": values[0], **dict(zip(keys, values[1:])), "grad_norm": grad_norm}

    def _validate(self, model: nn.Module, device: torch.device, epoch: int) -> dict | None:
        val = None
        if D.is_main():
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

    def _maybe_save_best(self, model, val, best_value, best_path) -> float | None:
        name = self.task.selection_metric
        if not name or not val:
            return best_value
        if best_value is None or val[name] > best_value:
            best_value = val[name]
            meta = dict(self.task.checkpoint_meta(model, val))
            meta.setdefault("metrics", val)
            ckpt = make_checkpoint(self.task.kind, self.task.model_config(), model.state_dict(), meta, to_dict(self.run_config))
            save_atomic(ckpt, best_path)
            log.info("new best %s = %.4f -> %s", name, best_value, best_path)
        return best_value

    def _save_last(self, model, optimizer, next_epoch, next_step, global_step, best_value, history, plan, path, epoch_losses) -> None:
        rngs = D.all_gather_objects(rng_state())  # a collective: every rank calls it
        if not D.is_main():
            return
        train_state = {
            "optimizer": optimizer.state_dict(),
            "next_epoch": next_epoch,
            "next_step_in_epoch": next_step,
            "global_step": global_step,
            "best_value": best_value,
            "history": history,
            "epoch_losses": list(epoch_losses),
            "rng": rngs,
            "world_size": D.world_size(),
            "global_batch": plan["global_batch"],
            "scaler": None,  # bf16 autocast needs no loss scaling
        }
        val = next((h for h in reversed(history) if any(k.startswith("val_") for k in h)), None)
        meta = dict(self.task.checkpoint_meta(model, {k[4:]: v for k, v in val.items() if k.startswith("val_")} if val else None))
        ckpt = make_checkpoint(self.task.kind, self.task.model_config(), model.state_dict(), meta, to_dict(self.run_config), train_state)
        save_atomic(ckpt, path)

    def _write_metrics(self, history: list[dict], best_value: float | None, global_step: int) -> None:
        metrics = {
            "global_step": global_step,
            "epochs_done": sum(1 for h in history if not h.get("partial")),
            "last": history[-1] if history else None,
            "selection_metric": self.task.selection_metric,
            "best": best_value,
        }
        path = self.run_dir / "metrics.json"
        tmp = path.with_name(".metrics.json.tmp")
        tmp.write_text(json.dumps(metrics, indent=2))
        tmp.replace(path)
