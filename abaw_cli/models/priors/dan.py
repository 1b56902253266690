"""DAN (Distract your Attention Network, yaoing/DAN) as a frozen expression prior.

The module names reproduce the public checkpoints' state-dict keys exactly, so a file's
`model_state_dict` loads strictly by its real names: `features.0..7` (ResNet-18 children without
avgpool/fc), `cat_head0..N` each with `sa` (spatial attention) and `ca` (channel attention),
`fc`, `bn`. The EMMA authors fed the VA head with DAN's post-BN logits (AffectNet order); so does
this prior. Preprocessing as DAN's demo: Resize((224, 224)) bilinear (PIL antialiases when it
shrinks), ImageNet mean/std.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from abaw_cli.models.priors.base import IMAGENET_MEAN, IMAGENET_STD, ExpressionPrior, resize

log = logging.getLogger(__name__)

DAN_INPUT_SIZE = 224
DAN_FEATURES = 512


class SpatialAttention(nn.Module):
    """1x1 reduce, then 3x3 + 1x3 + 3x1 convs summed; the channel-summed map reweights the input."""

    def __init__(self, channels: int = DAN_FEATURES) -> None:
        super().__init__()
        mid = channels // 2
        self.conv1x1 = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid))
        self.conv_3x3 = nn.Sequential(nn.Conv2d(mid, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.conv_1x3 = nn.Sequential(nn.Conv2d(mid, channels, (1, 3), padding=(0, 1)), nn.BatchNorm2d(channels))
        self.conv_3x1 = nn.Sequential(nn.Conv2d(mid, channels, (3, 1), padding=(1, 0)), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1x1(x)
        y = F.relu(self.conv_3x3(y) + self.conv_1x3(y) + self.conv_3x1(y))
        return x * y.sum(dim=1, keepdim=True)


class ChannelAttention(nn.Module):
    """Global average pool, then a sigmoid gate per channel (512 -> 32 -> 512)."""

    def __init__(self, channels: int = DAN_FEATURES, hidden: int = 32) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        return pooled * self.attention(pooled)


class CrossAttentionHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sa = SpatialAttention()
        self.ca = ChannelAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ca(self.sa(x))


class DAN(nn.Module):
    """DAN with the public key names; forward returns the post-BN logits (DAN's `out`)."""

    def __init__(self, num_classes: int = 8, num_heads: int = 4) -> None:
        super().__init__()
        trunk = torchvision.models.resnet18(weights=None)
        self.features = nn.Sequential(*list(trunk.children())[:-2])  # drop avgpool and fc
        self.num_heads = num_heads
        for i in range(num_heads):
            setattr(self, f"cat_head{i}", CrossAttentionHead())
        self.fc = nn.Linear(DAN_FEATURES, num_classes)
        self.bn = nn.BatchNorm1d(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        heads = torch.stack([getattr(self, f"cat_head{i}")(feats) for i in range(self.num_heads)], dim=1)
        if self.num_heads > 1:
            heads = F.log_softmax(heads, dim=1)  # across the heads axis, as DAN does
        return self.bn(self.fc(heads.sum(dim=1)))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a DAN file: {'model_state_dict': ...} (public layout) or a plain state dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: not loadable as tensors only (torch.load weights_only=True): {err}. "
            "Re-save its model_state_dict with torch.save in a trusted environment."
        ) from err
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a DAN checkpoint ({{'model_state_dict': state dict}}) or a state dict")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


class DANPrior(ExpressionPrior):
    kind = "dan"

    def __init__(self, spec: str, num_classes: int, num_heads: int, label_order: str) -> None:
        super().__init__(spec, label_order)
        if num_classes != self.num_outputs:
            raise ValueError(f"{spec}: {num_classes} DAN outputs but label order {label_order!r} has {self.num_outputs}")
        self.net = DAN(num_classes=num_classes, num_heads=num_heads)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    @classmethod
    def from_file(cls, spec: str, path: Path) -> "DANPrior":
        state = read_state_dict(path)
        if "fc.weight" not in state:
            raise ValueError(f"{path}: no fc.weight: not a DAN state dict (first keys: {list(state)[:5]})")
        num_classes = int(state["fc.weight"].shape[0])
        num_heads = sum(1 for k in state if k.startswith("cat_head") and k.endswith(".sa.conv1x1.0.weight"))
        if num_classes == 8:
            order = "affectnet8"
        elif num_classes == 7:
            # Shapes cannot tell AffectNet-7 from RAF-DB; the public file names can.
            order = "rafdb7" if "rafdb" in path.name.lower() else "affectnet7"
        else:
            raise ValueError(f"{path}: DAN with {num_classes} classes; known heads are 8 (AffectNet-8) and 7")
        prior = cls(spec, num_classes, num_heads, order)
        try:
            prior.net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: state dict does not match DAN({num_classes} classes, {num_heads} heads): {err}") from err
        log.info("DAN prior from %s: %d classes (%s order), %d heads", path, num_classes, order, num_heads)
        return prior

    def arch_config(self) -> dict[str, Any]:
        return {"num_classes": self.num_outputs, "num_heads": self.net.num_heads}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = resize(images, (DAN_INPUT_SIZE, DAN_INPUT_SIZE), antialias=True)
        return (x - self.mean) / self.std

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)
