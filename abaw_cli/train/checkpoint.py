"""The one checkpoint format of the project.

Every `.pt` the project writes (MAE `checkpoint-last.pt`, train-mtl / cotrain `best.pt` and
`checkpoint-last.pt`) is a dict:

    format       "abaw-checkpoint"
    version      1
    kind         "mae" | "mtl" | "cotrain": which builder in `models.registry` rebuilds the model
    model_config plain dict: everything the builder needs (sizes, input size, prior spec, ...)
    model        the model's state_dict
    meta         plain dict: label order, input size, normalisation, thresholds, metrics, ...
    config       the resolved run config (plain dict)
    train_state  only in checkpoint-last.pt: optimiser, scaler, schedule, epoch, step, RNG, sampler

Only tensors and plain Python values are stored, so `torch.load(weights_only=True)` reads it:
loading a checkpoint never runs code. `encoder.pt` (MAE encoder, official key names) is the one
deliberate exception in shape: `{"model": encoder_state_dict, "meta": {...}}`, like the public MAE files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from abaw_cli.atomic import atomic_open

FORMAT = "abaw-checkpoint"
VERSION = 1
KINDS = ("mae", "mtl", "cotrain")


class CheckpointError(ValueError):
    """A file that is not a checkpoint of the expected kind."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, file-size limit, unwritable folder); the file
    it would have replaced is untouched."""


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through atomic.atomic_open, fsynced: never half a file."""
    path = Path(path)
    # A writer killed mid-write (SIGKILL, power loss) leaves its temporary file: the next write of the
    # same file clears it (one process writes a given checkpoint, so none of these is in flight).
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            stale.unlink(missing_ok=True)
    try:
        with atomic_open(path, "wb", fsync=True) as fh:
            torch.save(obj, fh)
    except (OSError, RuntimeError) as exc:  # torch reports a short write as a RuntimeError
        code = exc.errno if isinstance(exc, OSError) else None
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:160]
        raise CheckpointWriteError(code, f"could not write the checkpoint (disk full or file-size limit?): {detail}", str(path)) from exc
    return path


def make_checkpoint(
    kind: str,
    model_config: dict,
    model_state: dict,
    meta: dict | None = None,
    config: dict | None = None,
    train_state: dict | None = None,
) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {KINDS}")
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model_config": model_config,
        "model": model_state,
        "meta": meta or {},
        "config": config or {},
    }
    if train_state is not None:
        ckpt["train_state"] = train_state
    return ckpt


def load_checkpoint(path: str | os.PathLike, kinds: tuple[str, ...] | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Read a project checkpoint, refusing anything else with a message that says what it is."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, not a torch file
        raise CheckpointError(f"{path}: not a readable abaw checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = " (it looks like an MAE encoder file: pass it as --init)" if isinstance(ckpt, dict) and "model" in ckpt else ""
        raise CheckpointError(f"{path}: not an abaw checkpoint{hint}")
    if kinds is not None and ckpt["kind"] not in kinds:
        raise CheckpointError(f"{path}: is a {ckpt['kind']!r} checkpoint; this command needs {' or '.join(repr(k) for k in kinds)}")
    return ckpt
