"""Device, CPU threads, precision and seeding: chosen the same way by every stage."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
PROC_STAT = Path("/proc/stat")  # Linux's CPU time counters, per core


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> the local CUDA device when there is one (the LOCAL_RANK one under torchrun), else CPU."""
    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise ValueError(f"--device must be one of {', '.join(DEVICE_CHOICES)} (got {name!r})")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if name.startswith("cuda"):
            raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device here")
        return torch.device("cpu")
    if name.startswith("cuda:"):
        return torch.device(name)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def cores_per_rank() -> int:
    """CPU cores this process may use: its affinity set (what taskset or a container grants, not the
    machine's count) shared evenly among the local ranks of a torchrun job, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


@contextlib.contextmanager
def cpu_threads(device: torch.device, threads: int | None = None):
    """On a CPU device, run torch with `threads` intra-op threads inside the block (default: all of
    cores_per_rank(); restored afterwards). No core is kept back for the decoder and writer threads
    beside a detector: they need a few percent of one core and release the GIL in OpenCV, and a
    core held for them idled half of a 2-core machine (issue 18: `abaw crop-faces` on two 200-frame
    demo videos took 25.5 s with it, 19 s without).
    Dividing by the local ranks is the guard against oversubscription under torchrun; FreeCoreThreads
    is the one against other processes on a shared machine."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads or cores_per_rank()))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class _CpuSample:
    wall_s: float
    own_cpu_s: float  # this process's CPU time, all its threads
    busy: int  # /proc/stat ticks of our cores spent running anything (steal too: the host took them)
    total: int  # all /proc/stat ticks of our cores


class FreeCoreThreads:
    """torch's intra-op thread count for a CPU loop on a machine other processes may share: the
    cores of this rank (cores_per_rank) that the others left free over the last `window_s`, read
    from /proc/stat with this process's own CPU time taken out; set by update() between units of
    work. An OpenMP parallel section waits for its slowest thread, and a thread that shares its
    core with a busy process runs a fraction of the time: on this 2-core machine MTCNN ran at 31
    frames/s on 2 threads when idle, and beside another busy job at 20 on 1 thread but 1.5-2.5 on 2
    (issue 18). Shrinks at once, grows a thread a window: ranks of one torchrun job, each counting
    the others as load, then settle on a split instead of swinging. The first update() waits until
    `first_window_s` has passed since construction: a first batch on 2 threads beside a busy
    neighbour took 2.5 s here, where 1 thread takes 0.2 s. All of the rank's cores where /proc/stat
    cannot be read."""

    def __init__(
        self,
        window_s: float = 0.5,
        first_window_s: float = 0.1,
        stat_path: Path | None = None,  # None: PROC_STAT
        clock: Callable[[], float] = time.monotonic,
        own_cpu: Callable[[], float] = time.process_time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.most = cores_per_rank()
        self.threads = self.most
        self.window_s, self.first_window_s = window_s, first_window_s
        self._decided = False
        self._stat_path, self._clock, self._own_cpu, self._sleep = stat_path or PROC_STAT, clock, own_cpu, sleep
        self._cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        self._last = self._sample()

    def _sample(self) -> _CpuSample | None:
        try:
            lines = self._stat_path.read_text().splitlines()
        except OSError:
            return None
        busy = total = 0
        for line in lines:
            name, _, fields = line.partition(" ")
            if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in self._cpus:
                ticks = [int(f) for f in fields.split()[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
        return _CpuSample(self._clock(), self._own_cpu(), busy, total) if total else None

    def busy_cores_of_others(self, before: _CpuSample, now: _CpuSample) -> float:
        """Cores' worth of CPU time that other processes used on our cores between two samples."""
        machine = len(self._cpus) * (now.busy - before.busy) / max(now.total - before.total, 1)
        own = (now.own_cpu_s - before.own_cpu_s) / max(now.wall_s - before.wall_s, 1e-9)
        return max(0.0, machine - own)

    def update(self) -> int:
        """Call between units of work, on the thread that runs them: once a window has passed,
        re-reads the machine; sets torch's thread count (to self.threads) and returns it."""
        if self._last is not None:
            waited = self._clock() - self._last.wall_s
            if not self._decided and waited < self.first_window_s:
                self._sleep(self.first_window_s - waited)
            now = self._sample() if not self._decided or waited >= self.window_s else None
            if now is not None:
                free = len(self._cpus) - self.busy_cores_of_others(self._last, now)
                target = min(self.most, max(1, int(free + 0.5)))
                self.threads = target if target < self.threads else min(target, self.threads + 1)
                self._last, self._decided = now, True
        if torch.get_num_threads() != self.threads:
            log.debug("torch threads %d -> %d (cores free of other work)", torch.get_num_threads(), self.threads)
            torch.set_num_threads(self.threads)
        return self.threads


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a run repeats."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU, where bf16 is slower to train."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_autocast(device: torch.device):
    """bf16 for inference on CUDA; fp32 on CPU keeps outputs comparable to the reference models."""
    return autocast(device, enabled=device.type == "cuda")
