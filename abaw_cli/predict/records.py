"""What flows through the predict pipeline: one FramePrediction per video frame (or image).

A face's predictions are one flat float vector (`values`) in the layout of its OutputSpace
(see heads.py), so that smoothing, the table, the overlay and the plot treat every model kind alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class FacePrediction:
    track: int
    box: np.ndarray  # (4,) float32, x1 y1 x2 y2 in frame pixels
    score: float  # detector confidence (1.0 for given crops)
    values: np.ndarray  # (D,) float32 in the OutputSpace layout

    def with_values(self, values: np.ndarray) -> "FacePrediction":
        return replace(self, values=values)


@dataclass(frozen=True)
class FramePrediction:
    frame: int  # index in the source (0-based)
    time_s: float | None  # None for image files: a folder of photos has no clock
    faces: tuple[FacePrediction, ...] = ()
    # The decoded RGB frame, kept only while an overlay still has to draw it.
    image: np.ndarray | None = field(default=None, compare=False, repr=False)

    def with_faces(self, faces: tuple[FacePrediction, ...]) -> "FramePrediction":
        return replace(self, faces=faces)
