"""Datasets for the LSD task: labelled synthetic faces, labelled real validation faces, and
(optionally) unlabeled real faces for co-training.

Every item is a float32 RGB tensor in [0, 1] of shape (3, S, S), S = the model's input size; the
model normalises inside itself (see CONTRACTS: a checkpoint alone says how to preprocess).

Augmentation follows Masked CoTEX: resize to 228/224 of the input size (228 for 224, 114 for 112),
random crop to the input size, horizontal flip; validation: a plain resize to (S, S). The
`style_augment` switch adds colour, blur, JPEG and noise (style_transforms): off in the paper's
recipe, on in cpu-small.

Class imbalance (the real synthetic set is ~53% SADNESS and ~4% FEAR) is handled one of three ways,
chosen by `balance`:
  sampler  every class is drawn equally often (per-sample weights 1 / count[class], with replacement)
  weights  cross-entropy class weights n / (K * count[class]) (scikit-learn's "balanced" rule)
  none     neither: the data as it comes
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import Dataset
from torchvision.transforms import v2

from abaw_cli.image_files import read_rgb
from abaw_cli.labels import LSD_CLASSES, NUM_LSD_CLASSES

log = logging.getLogger(__name__)

BALANCE_CHOICES = ("sampler", "weights", "none")
# Masked CoTEX's train-time resize before the random crop: 228 for a 224 input.
TRAIN_RESIZE_RATIO = 228 / 224


def train_transform(input_size: int, style_augment: bool = False) -> v2.Transform:
    """Resize to 228/224 of the input size, random crop to the input size, horizontal flip; with
    `style_augment`, also the camera's side of the synthetic-to-real gap (style_transforms)."""
    geometry = [v2.Resize(round(input_size * TRAIN_RESIZE_RATIO), antialias=True),
                v2.RandomCrop(input_size), v2.RandomHorizontalFlip(0.5)]
    if not style_augment:
        return v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=True)])
    return v2.Compose([*geometry, *style_transforms()])


def style_transforms() -> list[v2.Transform]:
    """What a camera does to a face that a clean synthetic render lacks, each drawn per image:
    colour cast, contrast and exposure, grey frames, defocus, JPEG blocking and sensor grain.
    Input uint8 (3, S, S); output float32 in [0, 1]."""
    return [
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05)], p=0.8),
        v2.RandomGrayscale(p=0.1),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.2))], p=0.5),
        v2.RandomApply([v2.JPEG((30, 90))], p=0.5),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([v2.GaussianNoise(sigma=0.02, clip=True)], p=0.5),
    ]


def eval_transform(input_size: int) -> v2.Transform:
    """A plain resize to (S, S): the same preprocessing `predict` applies to a face crop."""
    return v2.Compose([
        v2.Resize((input_size, input_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ])


class LabelledFaces(Dataset):
    """(image, class index) pairs; index order = labels.LSD_CLASSES."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], transform: v2.Transform):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} images but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(read_rgb(self.paths[index])), int(self.labels[index])


class UnlabeledFaces(Dataset):
    """Images without labels (real faces for co-training)."""

    def __init__(self, paths: Sequence[str | Path], transform: v2.Transform):
        self.paths = [str(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(read_rgb(self.paths[index]))


class LabelledWithUnlabeled(Dataset):
    """Labelled item `index` plus one unlabeled image drawn uniformly at random.

    Pairing inside one dataset keeps a single loader (and a single sampler: class balancing,
    DistributedSampler sharding and exact resume all apply unchanged): every training batch then
    holds B labelled and B unlabeled faces. The draw uses torch's RNG, the same generator the
    random crops and flips use, so it is seeded and restored with them.
    """

    def __init__(self, labelled: LabelledFaces, unlabeled: UnlabeledFaces):
        if len(unlabeled) == 0:
            raise ValueError("the unlabeled set is empty")
        self.labelled = labelled
        self.unlabeled = unlabeled

    @property
    def labels(self) -> np.ndarray:
        return self.labelled.labels

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image, label = self.labelled[index]
        other = int(torch.randint(len(self.unlabeled), ()).item())
        return image, label, self.unlabeled[other]


def class_counts(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Images per LSD class, in LSD_CLASSES order."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_LSD_CLASSES)


def require_every_class(labels: Sequence[int] | np.ndarray, where: str) -> np.ndarray:
    """Counts per class; refuses a training set in which a class has no image at all."""
    counts = class_counts(labels)
    empty = [LSD_CLASSES[i] for i, c in enumerate(counts) if c == 0]
    if empty:
        raise ValueError(f"{where}: no training images for class(es) {', '.join(empty)}; every one of the 6 LSD classes is needed")
    return counts


def balanced_class_weights(labels: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Cross-entropy weights n / (K * count[k]): every class carries the same total weight."""
    y = np.asarray(labels, dtype=np.int64)
    weights = compute_class_weight("balanced", classes=np.arange(NUM_LSD_CLASSES), y=y)
    return torch.tensor(weights, dtype=torch.float32)


def balanced_sample_weights(labels: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Per-sample weights 1 / count[class]: a weighted sampler then draws every class equally often."""
    y = np.asarray(labels, dtype=np.int64)
    counts = class_counts(y).astype(np.float64)
    return torch.tensor(1.0 / counts[y], dtype=torch.double)


def check_balance(balance: str) -> str:
    if balance not in BALANCE_CHOICES:
        raise ValueError(f"balance must be one of {', '.join(BALANCE_CHOICES)} (got {balance!r})")
    return balance
