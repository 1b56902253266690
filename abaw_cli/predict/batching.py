"""Batched model inference on face crops: uint8 crops in, OutputSpace value vectors out.

    predictor = FacePredictor(model, space, device)
    values = predictor(crops)    # crops: (N, H, W, 3) uint8 RGB (numpy) or (N, 3, S, S) float [0, 1]

Preprocessing is what the checkpoint implies and nothing more: resize to meta["input_size"]
(antialiased bilinear, the LSD/MTL eval transform) and scale to [0, 1]; each model normalises
inside itself. Resizing runs on the model's device, after one host->device copy of uint8 pixels
(a quarter of the bytes of float32). bf16 autocast on CUDA (runtime.inference_autocast).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from abaw_cli.data.lsd import eval_transform
from abaw_cli.models.registry import load_model
from abaw_cli.predict.heads import PREDICTING_KINDS, OutputSpace
from abaw_cli.predict.model_choice import trained_dataset
from abaw_cli.runtime import inference_autocast

log = logging.getLogger(__name__)


class FacePredictor:
    def __init__(self, model: nn.Module, space: OutputSpace, device: torch.device, dataset: str | None = None) -> None:
        self.model = model.eval()
        self.space = space
        self.device = device
        self.dataset = dataset  # the data manifest the model learned from (model_choice.trained_dataset)
        self._resize = eval_transform(space.input_size)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device) -> "FacePredictor":
        """Load a train-mtl / cotrain best.pt (any other checkpoint is a CheckpointError)."""
        model, ckpt = load_model(path, kinds=PREDICTING_KINDS, device=device)
        return cls(model, OutputSpace.from_checkpoint(ckpt), device, trained_dataset(ckpt))

    def preprocess(self, crops: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
        """(N, 3, S, S) float32 in [0, 1] on the device."""
        if isinstance(crops, torch.Tensor) and crops.is_floating_point():
            x = crops.to(self.device, non_blocking=True)
            size = self.space.input_size
            if x.shape[-2:] != (size, size):
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            return x
        if not isinstance(crops, torch.Tensor):
            crops = torch.from_numpy(np.ascontiguousarray(np.stack(crops) if isinstance(crops, (list, tuple)) else crops))
            crops = crops.permute(0, 3, 1, 2)  # NHWC uint8 -> NCHW
        if self.device.type == "cuda":
            crops = crops.pin_memory()
        return self._resize(crops.to(self.device, non_blocking=True))

    @torch.inference_mode()
    def __call__(self, crops) -> np.ndarray:
        """(N, width) float32 values (see heads.OutputSpace); N = 0 gives an empty array."""
        if len(crops) == 0:
            return np.zeros((0, self.space.width), np.float32)
        x = self.preprocess(crops)
        prior_logits = None
        with inference_autocast(self.device):
            if self.space.has_prior:  # EMMA: its prior's own reading too (heads.py)
                output, prior_logits = self.model.forward_with_prior(x)
            else:
                output = self.model(x)
        return self.space.decode(output, prior_logits)
