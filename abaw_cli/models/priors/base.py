"""The frozen expression prior: a pretrained expression CNN whose logits are features, never a target.

Every prior takes the project's model input (float RGB in [0, 1], shape (N, 3, H, W), any H, W) and
does its own preprocessing (resize / grayscale / normalise as the network was trained), so a
checkpoint alone says how to feed it. It is frozen and stays in eval mode whatever its parent does:
the authors' EMMA left its DAN in train mode, so its BatchNorm statistics drifted during training.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from abaw_cli.models.priors.label_orders import LABEL_ORDERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ExpressionPrior(nn.Module, abc.ABC):
    """Base of the frozen priors.

    Attributes: `spec` (the --cnn string it was built from), `class_names` (native order),
    `num_outputs` (= len(class_names)), `abaw_index_map` (native index -> index in
    abaw_cli.labels.EXPRESSIONS, or None where ABAW has no such class), `label_order` (its name in
    label_orders.LABEL_ORDERS) and `config` (a plain dict that rebuilds the architecture without
    any weight file: see priors.prior_from_config).
    """

    kind: str = ""

    def __init__(self, spec: str, label_order: str) -> None:
        super().__init__()
        if label_order not in LABEL_ORDERS:
            raise ValueError(f"unknown label order {label_order!r}; known: {', '.join(LABEL_ORDERS)}")
        self.spec = spec
        self.label_order = label_order
        self.class_names, self.abaw_index_map = LABEL_ORDERS[label_order]
        self.num_outputs = len(self.class_names)

    @abc.abstractmethod
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB (N, 3, H, W) -> the network's own input."""

    @abc.abstractmethod
    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        """Preprocessed input -> (N, num_outputs) expression logits in native order."""

    @abc.abstractmethod
    def arch_config(self) -> dict[str, Any]:
        """What, besides kind/spec/label_order, rebuilds this architecture (plain python values)."""

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, "label_order": self.label_order, **self.arch_config()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        # fp32 and no graph: the prior is frozen and small, and its logits should not depend on
        # whether the caller runs under bf16 autocast.
        with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
            return self.classify(self.preprocess(images.float()))

    def train(self, mode: bool = True) -> "ExpressionPrior":
        # A parent's .train() reaches here: stay in eval mode so BatchNorm keeps its running stats.
        return super().train(False)

    def freeze(self) -> "ExpressionPrior":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, classes={self.num_outputs}"


def check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expression prior expects RGB images (N, 3, H, W), got shape {tuple(images.shape)}")


def resize(images: torch.Tensor, size: tuple[int, int], antialias: bool) -> torch.Tensor:
    """Plain (no crop) bilinear resize to size = (height, width); a no-op at that size already."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)
