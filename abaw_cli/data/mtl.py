"""The s-Aff-Wild2 multi-task set (and the demo set in the same layout) as torch datasets.

Layout under ROOT: `cropped_aligned/<video>/<frame:05d>.jpg` plus `training_set_annotations.txt`
and `validation_set_annotations.txt`, checked against data_manifests/s-aff-wild2-mtl.yaml first.

An item is `(image, target)`:
    image   float32 RGB in [0, 1], `(3, S, S)` at the model's input size S (the model normalises);
    target  float32 `(15,)` = [valence, arousal, expression, AU1 ... AU26] with the missing codes
            of `abaw_cli.labels` kept as they are (-5, -1, -1): the losses and metrics mask them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from abaw_cli.data.formats import MTLAnnotations
from abaw_cli.data.images import DecodedFaces
from abaw_cli.data.lsd import eval_transform
from abaw_cli.data.manifest import check_dataset
from abaw_cli.labels import MISSING_EXPRESSION, NUM_EXPRESSIONS

MANIFEST = "s-aff-wild2-mtl"  # data_manifests/s-aff-wild2-mtl.yaml
IMAGE_DIR = "cropped_aligned"

# The paper's crop margin: resize to 232, random crop 224 (scaled to other input sizes).
_TRAIN_RESIZE_RATIO = 232 / 224


def train_transform(input_size: int) -> v2.Transform:
    """uint8 face -> resize to input_size*232/224, colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.2,
    random crop, flip, float [0, 1]. Validation and prediction use data.lsd.eval_transform."""
    return v2.Compose([
        v2.Resize(round(input_size * _TRAIN_RESIZE_RATIO), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.2),
        v2.RandomCrop(input_size),
        v2.RandomHorizontalFlip(0.5),
        v2.ToDtype(torch.float32, scale=True),
    ])


def load_mtl_splits(root: str | Path, manifest: str | Path = MANIFEST) -> tuple[MTLAnnotations, MTLAnnotations]:
    """(train, validation) annotations of the copy under `root`, checked against the manifest first.

    manifest.check_dataset validates both annotation files (file, line and reason for a bad row)
    and that every listed image exists, and raises DatasetError listing every problem; counts far
    from the manifest's are only warned about.
    """
    report = check_dataset(root, manifest, splits=["train", "val"])
    return report.data["train"], report.data["val"]


def targets_tensor(ann: MTLAnnotations) -> torch.Tensor:
    """(N, 15) float32 [V, A, expression, 12 AUs], missing codes kept."""
    return torch.cat([
        torch.as_tensor(np.asarray(ann.valence_arousal), dtype=torch.float32),
        torch.as_tensor(np.asarray(ann.expression), dtype=torch.float32)[:, None],
        torch.as_tensor(np.asarray(ann.aus), dtype=torch.float32),
    ], dim=1)


class MTLDataset(Dataset):
    """The frames of one split, in annotation-file order (validation relies on that order).

    Frames are decoded once, as read, and held in memory (data.images.DecodedFaces, within its
    budget): a frame is read once per run instead of once per epoch, and the transforms see what
    they would see reading it each time (validation stays what `abaw predict` computes)."""

    def __init__(self, root: str | Path, annotations: MTLAnnotations, input_size: int, train: bool,
                 cache_bytes: int | None = None):
        self.image_dir = Path(root) / IMAGE_DIR
        self.annotations = annotations
        self.images = list(annotations.images)
        self.targets = targets_tensor(annotations)
        self.faces = DecodedFaces([self.image_dir / name for name in self.images], cache_bytes=cache_bytes)
        self.transform = train_transform(input_size) if train else eval_transform(input_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.faces[index]), self.targets[index]


def class_balanced_weights(expression: np.ndarray) -> torch.Tensor:
    """Per-frame sampling weights that draw the 8 expressions about equally often.

    Labelled frames weigh 1/count(class); frames without an expression label (which still carry
    VA and AU labels) get the average weight of the labelled frames, so they keep their share.
    """
    expr = np.asarray(expression).astype(np.int64)
    labelled = expr != MISSING_EXPRESSION
    counts = np.bincount(expr[labelled], minlength=NUM_EXPRESSIONS).astype(np.float64)
    weights = np.zeros(len(expr), dtype=np.float64)
    weights[labelled] = 1.0 / counts[expr[labelled]]
    weights[~labelled] = weights[labelled].mean() if labelled.any() else 1.0
    return torch.as_tensor(weights, dtype=torch.double)
