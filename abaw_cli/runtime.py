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
