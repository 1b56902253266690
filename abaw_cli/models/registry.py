"""Rebuild a model from a checkpoint: `kind` -> builder(model_config) -> nn.Module.

Model modules register their builder with `@register("kind")`; `load_model` then needs nothing but
the checkpoint file, which is what lets `abaw predict video.mp4 --model best.pt` work alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from abaw_cli.train.checkpoint import load_checkpoint

_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {}
# Modules that register builders, imported on first use so that importing the registry stays cheap.
_BUILDER_MODULES = {"mae": "abaw_cli.models.mae", "mtl": "abaw_cli.models.emma", "cotrain": "abaw_cli.models.cotex"}


def register(kind: str) -> Callable:
    def deco(fn: Callable[[dict], nn.Module]) -> Callable[[dict], nn.Module]:
        _BUILDERS[kind] = fn
        return fn

    return deco


def build_model(kind: str, model_config: dict) -> nn.Module:
    if kind not in _BUILDERS and kind in _BUILDER_MODULES:
        importlib.import_module(_BUILDER_MODULES[kind])
    if kind not in _BUILDERS:
        raise KeyError(f"no model builder registered for kind {kind!r}")
    return _BUILDERS[kind](model_config)


def load_model(path: str | Path, kinds: tuple[str, ...] | None = None, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Model in eval mode on `device`, plus the checkpoint (without the weights) for its meta."""
    ckpt = load_checkpoint(path, kinds=kinds)
    model = build_model(ckpt["kind"], ckpt["model_config"])
    model.load_state_dict(ckpt.pop("model"))
    return model.to(device).eval(), ckpt
