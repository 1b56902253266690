"""Device, precision and seeding: chosen the same way by every stage."""

from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


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
    core held for them idled half of a 2-core machine (crop-faces x1.55 without it, issue 18).
    Dividing by the local ranks is the guard against oversubscription under torchrun."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads or cores_per_rank()))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
