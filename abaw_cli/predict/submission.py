"""ABAW image sets (test lists, annotation files, LSD class trees) -> the official submission file.

The images are aligned crops already: each is only resized to the model's input (the same
eval transform as validation), batched by a DataLoader (decoding in worker processes), and
predicted. The submission keeps the list's image names and order exactly; formats writes it
(header, column order, value ranges) atomically.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from abaw_cli.data.formats import write_lsd_submission, write_mtl_submission
from abaw_cli.data.lsd import UnlabeledFaces, eval_transform
from abaw_cli.predict.batching import FacePredictor
from abaw_cli.predict.heads import OutputSpaceError
from abaw_cli.predict.lists import ImageSet

log = logging.getLogger(__name__)


@dataclass
class SetSummary:
    name: str
    images: int
    seconds: float
    written: Path

    @property
    def fps(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def default_workers(n_images: int) -> int:
    """Decoding workers: none for small sets (starting processes costs more), else up to 4."""
    if n_images < 512:
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def check_task(image_set: ImageSet, predictor: FacePredictor) -> None:
    """An MTL submission needs VA and AUs, which only an mtl (EMMA) checkpoint predicts."""
    if image_set.task == "mtl" and predictor.space.kind != "mtl":
        raise OutputSpaceError(
            f"{image_set.origin}: an MTL submission needs valence, arousal and AUs, but the model is a "
            f"{predictor.space.kind!r} checkpoint (6 LSD classes only): use a train-mtl best.pt"
        )


def predict_image_set(
    image_set: ImageSet,
    predictor: FacePredictor,
    out: Path,
    batch: int = 64,
    workers: int | None = None,
    progress=None,
) -> SetSummary:
    check_task(image_set, predictor)
    space = predictor.space
    dataset = UnlabeledFaces(image_set.paths(), eval_transform(space.input_size))
    workers = default_workers(len(dataset)) if workers is None else workers
    loader = DataLoader(
        dataset, batch_size=batch, shuffle=False, num_workers=workers,
        pin_memory=predictor.device.type == "cuda", persistent_workers=False,
    )
    values = np.empty((len(dataset), space.width), np.float32)
    task = progress.add_task(image_set.name[:28], total=len(dataset), fps="") if progress is not None else None
    started = time.perf_counter()
    done = 0
    for images in loader:
        v = predictor(images)
        values[done : done + len(v)] = v
        done += len(v)
        if task is not None:
            progress.update(task, advance=len(v), fps=f"{done / max(time.perf_counter() - started, 1e-9):.1f} img/s")
    keys = list(image_set.keys)
    if image_set.task == "mtl":
        written = write_mtl_submission(
            out, keys, values[:, :2], space.class_index(values), space.au_decisions(values).astype(np.int64)
        )
    else:
        written = write_lsd_submission(out, keys, np.argmax(space.lsd_scores(values), axis=1))
    return SetSummary(image_set.name, len(keys), time.perf_counter() - started, written)

