"""HSEmotion / EmotiEffLib EfficientNet AffectNet models as a frozen expression prior.

Their .pt files are whole pickled timm models (torch.save(model)), pickled under timm 0.4-0.9; on
timm >= 1.0.7 such a model breaks at forward time. So the model is only unpickled to take its
state dict, which is loaded strictly into a fresh `tf_efficientnet_bN` built by today's timm.
Unpickling runs code stored in the file: HSEMOTION_PICKLE_WARNING says so wherever a user picks
the prior. Plain state-dict files are read with weights_only=True and run nothing.
Heads: 8 (AffectNet-8, alphabetical), 7 (AffectNet-7), or 10 (`va_mtl`: 8 logits, valence,
arousal). Preprocessing as HSEmotion's: plain resize to the model size (224 for b0, 260 for b2),
ImageNet mean/std.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from abaw_cli.models.priors.base import IMAGENET_MEAN, IMAGENET_STD, ExpressionPrior, check_images, resize

log = logging.getLogger(__name__)

HSEMOTION_PICKLE_WARNING = (
    "hsemotion:PATH files are whole pickled models: loading one runs code stored in the file "
    "(torch.load weights_only=False), so use only files from a source you trust."
)
# Architectures tried, in order, when matching a state dict's key names and shapes.
CANDIDATE_ARCHS = ("tf_efficientnet_b0", "tf_efficientnet_b2", "tf_efficientnet_b1", "tf_efficientnet_b3")
# head rows -> (label order, number of expression logits); 10 and 9 carry valence and arousal after them.
HEADS = {8: ("hsemotion8", 8), 10: ("hsemotion8", 8), 7: ("hsemotion7", 7), 9: ("hsemotion7", 7)}


def read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict with today's classifier names, architecture named by the pickle or None)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        log.warning("%s: %s", path, HSEMOTION_PICKLE_WARNING)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    arch_hint = None
    if isinstance(obj, nn.Module):
        cfg = getattr(obj, "pretrained_cfg", None) or getattr(obj, "default_cfg", None) or {}
        arch_hint = cfg.get("architecture") if isinstance(cfg, dict) else None
        obj = obj.state_dict()
    elif isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a pickled timm EfficientNet or its state dict")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    # HSEmotion's AffectNet heads are nn.Sequential(nn.Linear): classifier.0.* -> classifier.*
    state = {("classifier." + k[len("classifier.0."):] if k.startswith("classifier.0.") else k): v
             for k, v in obj.items()}
    if "classifier.weight" not in state:
        raise ValueError(f"{path}: no classifier weight (classifier.weight / classifier.0.weight)")
    return state, arch_hint


def match_architecture(state: dict[str, torch.Tensor], head_rows: int, hint: str | None) -> tuple[str, int]:
    """(timm architecture whose state-dict names and shapes equal `state`'s, its input size)."""
    candidates = list(CANDIDATE_ARCHS)
    if hint:
        name = hint.split(".")[0].removesuffix("_ns")  # timm 0.4-0.8 names: tf_efficientnet_b0_ns
        if name in timm.list_models() and name not in candidates:
            candidates.insert(0, name)
    wanted = {k: tuple(v.shape) for k, v in state.items()}
    for arch in candidates:
        with torch.device("meta"):
            model = timm.create_model(arch, num_classes=head_rows, pretrained=False)
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == wanted:
            return arch, int(model.pretrained_cfg["input_size"][-1])
    raise ValueError(f"state dict matches none of {', '.join(candidates)} (head {head_rows} rows)")


class HSEmotionPrior(ExpressionPrior):
    kind = "hsemotion"

    def __init__(self, spec: str, arch: str, head_rows: int, input_size: int) -> None:
        if head_rows not in HEADS:
            raise ValueError(f"{spec}: classifier with {head_rows} outputs; known heads: {sorted(HEADS)}")
        label_order, num_logits = HEADS[head_rows]
        super().__init__(spec, label_order)
        self.arch, self.head_rows, self.input_size = arch, head_rows, input_size
        self.has_valence_arousal = head_rows == num_logits + 2
        self.net = timm.create_model(arch, num_classes=head_rows, pretrained=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    @classmethod
    def from_file(cls, spec: str, path: Path) -> "HSEmotionPrior":
        state, hint = read_model_file(path)
        head_rows = int(state["classifier.weight"].shape[0])
        try:
            arch, input_size = match_architecture(state, head_rows, hint)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        prior = cls(spec, arch, head_rows, input_size)
        prior.net.load_state_dict(state, strict=True)
        log.info("HSEmotion prior from %s: %s, %d head outputs, input %d", path, arch, head_rows, input_size)
        return prior

    def arch_config(self) -> dict[str, Any]:
        return {"arch": self.arch, "head_rows": self.head_rows, "input_size": self.input_size}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = resize(images, (self.input_size, self.input_size), antialias=True)
        return (x - self.mean) / self.std

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)[:, : self.num_outputs]

    def valence_arousal(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2) raw valence, arousal of a `va_mtl` model (its head rows after the logits)."""
        if not self.has_valence_arousal:
            raise ValueError(f"{self.spec}: this model has no valence/arousal outputs ({self.head_rows} head rows)")
        check_images(images)
        with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
            return self.net(self.preprocess(images.float()))[:, self.num_outputs:]
