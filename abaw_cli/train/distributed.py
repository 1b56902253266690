"""torchrun / DDP plumbing and the sharded, resumable epoch sampler used by the engine.

- init_distributed(device) -> bool: joins the process group when torchrun's env vars say
  WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA); returns whether this call created it.
- cleanup_distributed(), rank(), world_size(), is_main(), barrier(), all_gather_objects(obj),
  broadcast_object(obj), all_reduce_sum(tensor).
- owner_ranks(weights, world), run_shared(weights, work): whole work items (crop-faces and
  predict sources) dealt to ranks, heaviest first to the least-loaded rank, so each item has one
  owner; every rank gets every item's result back, and a failure on one rank is raised on all
  (share_failure, also for checks that run on every rank before the work).
- EpochSampler: the engine's one sampler. For epoch e it draws ONE global order from a generator
  seeded by (seed, e) (a permutation, or class-balanced draws with replacement when weights are
  given) plus one augmentation seed per draw, then gives rank r the draws r, r+W, r+2W, ...
  So the union of the ranks' j-th batches is the single-process j-th batch of the same global
  size, and `set_epoch(e, start_batch=k)` skips the first k batches to resume mid-epoch exactly.
  It yields (dataset_index, sample_seed) pairs; see engine.SeededDataset.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

R = TypeVar("R")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group if WORLD_SIZE > 1 and none exists yet; True if created here."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list without DDP)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def owner_ranks(weights: Sequence[float], world: int) -> list[int]:
    """The rank that owns each item: items taken heaviest first (ties: input order), each given to
    the rank with the least weight so far (ties: the lower rank). Deterministic, so every rank
    computes the same assignment without talking to the others."""
    load = [0.0] * max(1, world)
    owner = [0] * len(weights)
    for i in sorted(range(len(weights)), key=lambda i: (-float(weights[i]), i)):
        r = min(range(len(load)), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += max(float(weights[i]), 1.0)  # an empty item still costs its start-up
    return owner


class RankFailedError(RuntimeError):
    """Raised on the ranks that did their share when another rank failed (its message is here)."""


def run_shared(weights: Sequence[float], work: Callable[[int], R]) -> dict[int, R]:
    """`work(i)` for each item i this rank owns (owner_ranks; every item without torchrun), then
    {i: result} for ALL items, gathered from every rank. An exception on any rank reaches every
    rank after the gather (the failing rank raises its own, the others RankFailedError), so no
    rank is left waiting for one that stopped."""
    owners = owner_ranks(weights, world_size())
    mine: dict[int, R] = {}
    failure: Exception | None = None
    try:
        for i, owner in enumerate(owners):
            if owner == rank():
                mine[i] = work(i)
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the others heard of it
        failure = exc
    merged: dict[int, R] = {}
    for part in share_failure(failure, mine):
        merged.update(part)
    return merged


def share_failure(failure: Exception | None, payload: Any = None) -> list[Any]:
    """Collective: every rank's `payload`, in rank order, once all ranks got here. When any rank
    passes a `failure`, it raises it and every other rank raises RankFailedError naming it, so a
    check that fails on one rank stops them all instead of leaving the others waiting."""
    gathered = all_gather_objects((payload, None if failure is None else f"rank {rank()}: {failure}"))
    if failure is not None:
        raise failure
    failed = [message for _, message in gathered if message]
    if failed:
        raise RankFailedError("; ".join(failed))
    return [p for p, _ in gathered]


class EpochSampler(Sampler):
    """Deterministic per-epoch order, sharded across ranks, that can start at any batch (see module doc)."""

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        batches_per_epoch: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        weights: Sequence[float] | torch.Tensor | None = None,
    ):
        self.n = dataset_len
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        if self.weights is not None and len(self.weights) != dataset_len:
            raise ValueError(f"sampler weights: {len(self.weights)} values for {dataset_len} samples")
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def global_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, sample seeds) of the whole epoch, before sharding."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        total = self.batches_per_epoch * self.batch_size * self.num_replicas
        if self.weights is not None:
            idx = torch.multinomial(self.weights, total, replacement=True, generator=g)
        else:
            idx = torch.randperm(self.n, generator=g)[:total]
        seeds = torch.randint(0, 2**62, (total,), generator=g)
        return idx, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        idx, seeds = self.global_order(self.epoch)
        idx, seeds = idx[self.rank :: self.num_replicas], seeds[self.rank :: self.num_replicas]
        start = self.start_batch * self.batch_size
        return iter(zip(idx[start:].tolist(), seeds[start:].tolist()))
