"""A small tracker that gives each person a stable id across the frames of one source.

    tracker = FaceTracker()
    ids = tracker.update(detections)    # one int per detected face, in detection order

Each frame's faces are matched to the live tracks by the Hungarian algorithm
(scipy.optimize.linear_sum_assignment) on cost = (1 - box IoU) + landmark distance, where the
landmark distance is the mean distance of the five points divided by the track's face size. A pair
is allowed only when the boxes overlap (IoU >= min_iou) or the landmarks are close
(distance <= max_landmark_dist, 0.75 face sizes by default): the IoU scores overlap, the
landmarks follow faces that moved further than their size allows overlap to see (fast motion, or
frames sampled with --fps) and tell apart two faces whose boxes overlap. Unmatched faces start new tracks (ids 0, 1, 2 ... in order of appearance, the
larger face first within a frame); a track not seen for `max_age` frames is closed and its id is
never reused. There is no motion model: the video is read frame by frame (or at --fps), so faces
move little between two updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from abaw_cli.faces.detector import Detections


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of a (N, 4) and every box of b (M, 4), x1 y1 x2 y2 -> (N, M)."""
    a = np.asarray(a, np.float64)[:, None, :]
    b = np.asarray(b, np.float64)[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


@dataclass
class _Track:
    id: int
    box: np.ndarray  # (4,)
    landmarks: np.ndarray  # (5, 2)
    last_seen: int  # update count when last matched


class FaceTracker:
    def __init__(self, min_iou: float = 0.2, max_landmark_dist: float = 0.75, max_age: int = 25) -> None:
        self.min_iou = min_iou
        self.max_landmark_dist = max_landmark_dist
        self.max_age = max_age
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._step = 0

    def update(self, detections: Detections) -> list[int]:
        """Track ids for this frame's faces (same order as `detections`)."""
        self._step += 1
        self._tracks = [t for t in self._tracks if self._step - t.last_seen <= self.max_age]
        ids = [-1] * len(detections)
        if len(detections) and self._tracks:
            boxes = np.stack([t.box for t in self._tracks])
            marks = np.stack([t.landmarks for t in self._tracks])
            iou = box_iou(boxes, detections.boxes)  # (T, D)
            size = np.sqrt(np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0))
            dist = np.linalg.norm(marks[:, None] - detections.landmarks[None], axis=-1).mean(-1) / size[:, None]
            allowed = (iou >= self.min_iou) | (dist <= self.max_landmark_dist)
            cost = np.where(allowed, (1.0 - iou) + dist, 1e6)
            for t, d in zip(*linear_sum_assignment(cost)):
                if allowed[t, d]:
                    track = self._tracks[t]
                    track.box, track.landmarks, track.last_seen = detections.boxes[d], detections.landmarks[d], self._step
                    ids[d] = track.id
        for d, track_id in enumerate(ids):
            if track_id < 0:
                ids[d] = self._next_id
                self._tracks.append(_Track(self._next_id, detections.boxes[d], detections.landmarks[d], self._step))
                self._next_id += 1
        return ids
