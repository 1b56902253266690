"""What train-mtl and cotrain share as fine-tuning stages: the `--init` encoder (or none), read
once, and the learning-rate rule for a model trained from scratch. The ViT architecture that
follows from the encoder is models.vit.resolve_vit_config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from abaw_cli.data.manifest import DatasetError
from abaw_cli.models.vit import EncoderLoadError, InitEncoder, read_init_encoder

log = logging.getLogger(__name__)

# --init value for a randomly initialised ViT.
INIT_NONE = "none"


def read_init(init: str) -> InitEncoder | None:
    """The `--init` encoder file, read once (None for `--init none`)."""
    if init == INIT_NONE:
        return None
    path = Path(init)
    if not path.is_file():
        raise EncoderLoadError(f"--init {path}: no such encoder file (use `--init none` for a random ViT)")
    return read_init_encoder(path)


def data_root(cfg: Any) -> Path:
    """The stage's --data root (`cfg.data.root`), which a new run must be given."""
    if not cfg.data.root:
        raise DatasetError("no --data given (and no earlier run config to take it from)")
    return Path(cfg.data.root)


def full_lr_from_scratch(cfg: Any) -> None:
    """With --init none there is nothing pretrained for layer-wise lr decay to preserve: every layer
    must learn, so the decay goes to 1.0 (`cfg` has `.init` and `.optim.layer_decay`)."""
    if cfg.init == INIT_NONE and cfg.optim.layer_decay < 1.0:
        log.info("--init none: layer-wise lr decay %.2f -> 1.0 (nothing pretrained to preserve)", cfg.optim.layer_decay)
        cfg.optim.layer_decay = 1.0
