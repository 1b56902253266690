"""Batched face detection with MTCNN (facenet-pytorch; its P/R/O-Net weights ship in the wheel).

    detector = FaceDetector(device="auto", min_face=20)
    for dets in detector.detect(frames):        # frames: list of HxWx3 uint8 RGB arrays
        dets.boxes      # (K, 4) float32, x1 y1 x2 y2 in pixels of that frame, largest face first
        dets.scores     # (K,)   float32, MTCNN O-Net face probability
        dets.landmarks  # (K, 5, 2) float32, (x, y) of LANDMARK_NAMES, in the same order

One `detect` call runs MTCNN once per distinct frame size in the list (MTCNN's batch mode needs
equal sizes), so a list of video frames is one batched forward pass per network stage.

Large photos: `detect(frames, max_side=640)` searches a copy scaled down so that its longer side
is at most `max_side` and maps the boxes and landmarks back to the full-resolution frame (the
caller cuts its aligned crop from there). MTCNN's image pyramid runs from min_face up to the
whole image, so its cost grows with (image side / min_face)^2: a 1350 px photo costs what a
640 px one does only if min_face grows with it. So on a copy `min_face` is measured in the copy's
pixels: a photo is searched exactly as the same photo saved at 640 px would be (in a 1350 px
photo the smallest face found is 20 x 1350 / 640 = 42 px at the default min_face of 20).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from abaw_cli.runtime import FreeCoreThreads, resolve_device

log = logging.getLogger(__name__)

# MTCNN's five points, in its output order.
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# MTCNN's own defaults (P-Net, R-Net, O-Net score thresholds).
DEFAULT_THRESHOLDS: tuple[float, float, float] = (0.6, 0.7, 0.7)
# Longer side of the copy that photos are searched on (see the module docstring): the size of a
# typical video frame, so photos detect at video speed (bench/bench_photos.py).
PHOTO_DETECT_SIDE = 640


@dataclass(frozen=True)
class Detections:
    """The faces found in one frame, largest box first (K may be 0)."""

    boxes: np.ndarray  # (K, 4) float32 x1 y1 x2 y2
    scores: np.ndarray  # (K,) float32
    landmarks: np.ndarray  # (K, 5, 2) float32

    def __len__(self) -> int:
        return len(self.boxes)

    @staticmethod
    def empty() -> "Detections":
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
        )

    def select(self, keep: np.ndarray) -> "Detections":
        """A subset (boolean mask or index array), order kept."""
        return Detections(self.boxes[keep], self.scores[keep], self.landmarks[keep])


def default_batch(device: torch.device) -> int:
    """Frames per detection pass: GPUs want many; on a CPU a few already keep the cores busy."""
    return 32 if device.type == "cuda" else 4


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """The shorter side of each (K, 4) box: what `min_face` is compared with."""
    return np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


class FaceDetector:
    """MTCNN on a chosen device; `detect` takes a list of RGB frames of any sizes.

    min_face: faces whose box is smaller than this (shorter side, pixels) are neither searched for
    (it sets MTCNN's image pyramid) nor returned. batch: how many frames callers should hand to one
    `detect` call (the streaming code reads it); `detect` itself takes any number. share_cores:
    on a CPU, before each `detect` set torch's thread count to the cores other processes leave
    free (runtime.FreeCoreThreads; what crop-faces and predict do), so that a busy neighbour
    cannot stall MTCNN's parallel sections; off, `detect` leaves the thread count alone.
    """

    def __init__(
        self,
        device: str | torch.device = "auto",
        min_face: int = 20,
        batch: int | None = None,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        share_cores: bool = False,
    ) -> None:
        from facenet_pytorch import MTCNN  # imported here: it pulls in torchvision, slow to load

        if min_face < 12:
            raise ValueError(f"--min-face must be at least 12 pixels, MTCNN's smallest window (got {min_face})")
        if len(thresholds) != 3 or not all(0.0 < t < 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities for P-, R- and O-Net (got {thresholds})")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.min_face = int(min_face)
        self.batch = int(batch) if batch else default_batch(self.device)
        if self.batch < 1:
            raise ValueError(f"--batch must be positive (got {batch})")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.threads = FreeCoreThreads() if share_cores and self.device.type == "cpu" else None
        self._mtcnn = MTCNN(
            min_face_size=self.min_face,
            thresholds=list(self.thresholds),
            select_largest=True,  # detect() then sorts every frame's boxes by area, largest first
            keep_all=True,
            device=self.device,
        ).eval()

    def __repr__(self) -> str:
        return f"FaceDetector(device={self.device}, min_face={self.min_face}, batch={self.batch})"

    def detect(self, frames: Sequence[np.ndarray], max_side: int | None = None) -> list[Detections]:
        """Faces in each frame (HxWx3 uint8 RGB), one Detections per frame, in input order, in
        that frame's pixels. `max_side`: search frames larger than this on a scaled-down copy
        (the module docstring; photos)."""
        if self.threads is not None:
            self.threads.update()
        results: list[Detections | None] = [None] * len(frames)
        by_size: dict[tuple[tuple[int, ...], tuple[float, float]], list[int]] = defaultdict(list)
        searched: dict[int, np.ndarray] = {}
        for i, frame in enumerate(frames):
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frame {i}: expected HxWx3 uint8 RGB, got {frame.shape} {frame.dtype}")
            searched[i], scale = _search_copy(frame, max_side)
            by_size[searched[i].shape, scale].append(i)
        for (_, scale), indices in by_size.items():
            stack = np.stack([searched[i] for i in indices])
            with torch.inference_mode():
                boxes, scores, points = self._mtcnn.detect(stack, landmarks=True)
            for i, b, s, p in zip(indices, boxes, scores, points):
                results[i] = self._to_detections(b, s, p, scale)
        return results  # type: ignore[return-value]

    def _to_detections(self, boxes, scores, points, scale: tuple[float, float] = (1.0, 1.0)) -> Detections:
        # facenet-pytorch returns None for a frame without faces and, under numpy 2, object arrays
        # (nested when all frames have the same face count): cast to plain float32 arrays.
        if boxes is None or len(boxes) == 0:
            return Detections.empty()
        dets = Detections(
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(scores, dtype=np.float32).reshape(-1),
            np.asarray(points, dtype=np.float32).reshape(-1, 5, 2),
        )
        # MTCNN's pyramid starts at min_face but its box regression can still return smaller boxes
        # (measured where MTCNN searched: in the copy's pixels for a scaled-down photo).
        dets = dets.select(box_sizes(dets.boxes) >= self.min_face)
        sx, sy = scale  # copy pixels per frame pixel, along x and y
        if (sx, sy) == (1.0, 1.0):
            return dets
        return Detections(
            dets.boxes / np.array([sx, sy, sx, sy], np.float32), dets.scores, dets.landmarks / np.array([sx, sy], np.float32)
        )


def _search_copy(frame: np.ndarray, max_side: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    """(the frame, or a copy whose longer side is `max_side`; its scale along x and y)."""
    h, w = frame.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return frame, (1.0, 1.0)
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Halving by area averaging while at least twice the target, then bilinear the rest of the way:
    # no aliasing, and 5x faster than one INTER_AREA resize by an odd factor (1.2 vs 5.8 ms for
    # 1350 -> 640 px; the two differ by 0.6 grey levels on average).
    copy = frame
    while copy.shape[1] >= 2 * size[0] and copy.shape[0] >= 2 * size[1]:
        copy = cv2.resize(copy, (copy.shape[1] // 2, copy.shape[0] // 2), interpolation=cv2.INTER_AREA)
    copy = cv2.resize(copy, size, interpolation=cv2.INTER_LINEAR)
    return copy, (size[0] / w, size[1] / h)
