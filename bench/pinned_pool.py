"""Run independent training runs in parallel processes, each pinned to its own share of the cores.

    results = run_pinned(fn, [(args...), ...], jobs=2)   # results in the order of the argument list

Small models train faster as two single-threaded processes than as one two-threaded one. Each
worker is pinned to its cores before torch starts threads: the training engine takes its thread
count from the affinity set (runtime.cores_per_rank), so the jobs split the machine instead of
every job spinning on all of it. With jobs <= 1 the runs go one after another in this process.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch


def _init_worker(core_sets) -> None:
    cores = core_sets.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


def run_pinned(fn: Callable[..., Any], calls: Sequence[tuple], jobs: int, threads: int | None = None) -> list[Any]:
    """fn(*call) for every call; with jobs > 1 in that many spawned processes, the first
    max(jobs, threads) cores of this process dealt round-robin between them. `fn` must be a
    module-level function (it is pickled)."""
    if jobs <= 1:
        return [fn(*call) for call in calls]
    context = multiprocessing.get_context("spawn")
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if threads:
        available = available[: max(jobs, threads)]
    core_sets = context.Queue()
    for job in range(jobs):
        core_sets.put(set(available[job::jobs]) or {available[job % len(available)]})
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                                                initargs=(core_sets,)) as pool:
        futures = [pool.submit(fn, *call) for call in calls]
        return [f.result() for f in futures]
