"""Which model `abaw predict` (and the Python API) uses, and what it was trained on.

    choice = choose_model(None)      # --model, else $ABAW_MODEL, else make pipeline's model
    choice.path, choice.origin       # Path("runs/pipeline/train-mtl/best.pt"), "make pipeline's model"

A demo-trained model (checkpoint meta `dataset`: demo-mtl / demo-lsd) learned its expression and
AU heads from rendered faces; `demo_model_warning` says so once when it is asked about anything
that is not demo data (a source outside a tree with demo_summary.json).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from abaw_cli.data.manifest import DEMO_MANIFESTS, is_demo_data, pick_manifest

MODEL_ENV = "ABAW_MODEL"
# What `make pipeline` leaves, relative to the folder it ran in (the Makefile's RUNS default).
PIPELINE_MODEL = Path("runs/pipeline/train-mtl/best.pt")
MAKE_A_MODEL = (
    "make one with `make pipeline` (the whole method on the embedded demo data, about 14 min on 2 CPU "
    "cores; it leaves runs/pipeline/train-mtl/best.pt) or `abaw train-mtl --data ROOT --out runs/emma`, "
    "then pass --model PATH or set ABAW_MODEL=PATH"
)


class NoModelError(ValueError):
    """No model was given and none of the default places holds one."""


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    origin: str  # "--model", "$ABAW_MODEL" or "make pipeline's model"

    def __str__(self) -> str:
        return f"{self.path} ({self.origin})"


def choose_model(model: str | os.PathLike | None, cwd: Path | None = None) -> ModelChoice:
    """`model` when given; else $ABAW_MODEL; else runs/pipeline/train-mtl/best.pt under `cwd`
    (the current folder). Raises NoModelError naming both places and how to make a model."""
    if model is not None:
        return ModelChoice(Path(model), "--model")
    env = os.environ.get(MODEL_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise NoModelError(f"${MODEL_ENV} is {env}, which is not a file; point it at a best.pt, or {MAKE_A_MODEL}")
        return ModelChoice(path, f"${MODEL_ENV}")
    pipeline = (cwd or Path.cwd()) / PIPELINE_MODEL
    if pipeline.is_file():
        return ModelChoice(pipeline if cwd is not None else PIPELINE_MODEL, "make pipeline's model")
    raise NoModelError(
        f"no model: --model is not given, ${MODEL_ENV} is not set, and there is no {PIPELINE_MODEL} "
        f"in {(cwd or Path.cwd())}; {MAKE_A_MODEL}"
    )


def trained_dataset(ckpt: dict) -> str | None:
    """The data manifest a train-mtl / cotrain checkpoint learned from: its meta `dataset`, or for
    checkpoints older than that field, what its run config's data root resolves to today."""
    dataset = (ckpt.get("meta") or {}).get("dataset")
    if dataset:
        return str(dataset)
    data = (ckpt.get("config") or {}).get("data") or {}
    task = {"mtl": "mtl", "cotrain": "lsd"}.get(ckpt.get("kind", ""))
    if not data.get("root") or task is None:
        return None
    return pick_manifest(data["root"], data.get("manifest", "auto"), task)


def demo_model_warning(dataset: str | None, kind: str, model: Path, inputs: Iterable[Path]) -> str | None:
    """One warning when a demo-trained model predicts anything that is not demo data, else None."""
    if dataset not in DEMO_MANIFESTS:
        return None
    real = next((p for p in inputs if not is_demo_data(p)), None)
    if real is None:
        return None
    if kind == "mtl":
        heads = "its expression and AU heads learned from rendered demo faces only, and say little about real faces"
        advice = ("valence/arousal come mostly through its frozen prior, and the prior's own reading is in the "
                  "prior_expression / prior_* columns (--overlay-label prior): the prior was trained on real faces")
    else:
        heads = "its 6 classes learned from rendered demo faces only"
        advice = "read its labels on real faces with that in mind"
    return f"{model} was trained on the demo data ({dataset}): {heads} such as {real}; {advice}."
