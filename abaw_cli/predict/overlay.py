"""The overlay video: each frame with its faces' boxes, expression label, VA gauge and active AUs.

    with OverlayWriter(path, fps, (width, height)) as out:
        out.write(draw_frame(frame_rgb, prediction, space))

Drawing happens on a BGR copy (OpenCV's order); the writer keeps the input's size and frame rate
and writes one output frame per input frame, so the overlay lines up with the per-frame table.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from abaw_cli.atomic import AtomicWriter, PendingFile
from abaw_cli.labels import EXPRESSIONS
from abaw_cli.predict.heads import OutputSpace
from abaw_cli.predict.records import FramePrediction

# Distinct BGR colours for tracks 0, 1, 2, ...
TRACK_COLOURS: tuple[tuple[int, int, int], ...] = (
    (80, 220, 80), (60, 160, 255), (255, 120, 60), (200, 80, 220), (40, 220, 220), (220, 220, 40),
)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def track_colour(track: int) -> tuple[int, int, int]:
    return TRACK_COLOURS[track % len(TRACK_COLOURS)]


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour, thickness: int = 1, background=True) -> None:
    """Text with a dark box behind it, so it reads on any background."""
    (w, h), base = cv2.getTextSize(text, FONT, scale, thickness)
    x, y = org
    if background:
        cv2.rectangle(img, (x - 2, y - h - 3), (x + w + 2, y + base + 1), (0, 0, 0), cv2.FILLED)
    cv2.putText(img, text, (x, y), FONT, scale, colour, thickness, cv2.LINE_AA)


def draw_va_gauge(img: np.ndarray, centre: tuple[int, int], radius: int, valence: float, arousal: float, colour) -> None:
    """The circumplex: valence to the right, arousal up; the dot is the prediction (clipped to the disc)."""
    cx, cy = centre
    overlay = img.copy()
    cv2.circle(overlay, centre, radius, (30, 30, 30), cv2.FILLED)
    cv2.addWeighted(overlay, 0.55, img, 0.45, 0, dst=img)
    cv2.circle(img, centre, radius, (200, 200, 200), 1, cv2.LINE_AA)
    cv2.line(img, (cx - radius, cy), (cx + radius, cy), (150, 150, 150), 1)
    cv2.line(img, (cx, cy - radius), (cx, cy + radius), (150, 150, 150), 1)
    small = max(0.3, radius / 90)
    _text(img, "V", (cx + radius - 10, cy - 3), small, (200, 200, 200), background=False)
    _text(img, "A", (cx + 3, cy - radius + 12), small, (200, 200, 200), background=False)
    v, a = float(valence), float(arousal)
    norm = max(1.0, float(np.hypot(v, a)))  # VA is a linear output: keep an outlier on the rim
    dot = (int(round(cx + radius * v / norm)), int(round(cy - radius * a / norm)))
    cv2.circle(img, dot, max(3, radius // 10), colour, cv2.FILLED, cv2.LINE_AA)
    _text(img, f"V{v:+.2f} A{a:+.2f}", (cx - radius, cy + radius + int(16 * small / 0.4)), small, (230, 230, 230))


# What the label above a face says (--overlay-label): the model's expression, or its prior's.
OVERLAY_LABELS = ("model", "prior")


def face_label(values: np.ndarray, space: OutputSpace, label: str = "model") -> str:
    """`Happiness 0.83` from the model's classes, or `prior Happiness 0.83` from EMMA's prior."""
    if label == "prior":
        k = int(space.prior_index(values))
        if k < 0:
            return "prior -"
        return f"prior {EXPRESSIONS[k]} {float(values[space.prior_slice][k]):.2f}"
    k = int(space.class_index(values))
    return f"{space.classes[k]} {float(values[space.class_slice][k]):.2f}"


def draw_frame(frame_rgb: np.ndarray, prediction: FramePrediction, space: OutputSpace, label: str = "model") -> np.ndarray:
    """A BGR copy of `frame_rgb` with the frame's predictions drawn on it; `label` (OVERLAY_LABELS)
    picks whose expression names each face."""
    img = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
    h, w = img.shape[:2]
    scale = max(0.35, min(h, w) / 720)
    thick = 1 if scale < 0.6 else 2
    clock = f" {prediction.time_s:6.2f}s" if prediction.time_s is not None else ""
    _text(img, f"#{prediction.frame}{clock}", (6, int(20 * scale / 0.5)), scale, (255, 255, 255))
    if not prediction.faces:
        _text(img, "no face", (6, int(44 * scale / 0.5)), scale, (120, 120, 255))
        return img
    radius = max(22, min(h, w) // 9)
    for slot, face in enumerate(prediction.faces):
        colour = track_colour(face.track)
        x1, y1, x2, y2 = (int(round(c)) for c in face.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, thick + 1)
        text = face_label(face.values, space, label)
        if len(prediction.faces) > 1:
            text = f"[{face.track}] {text}"
        _text(img, text, (x1, max(int(18 * scale / 0.5), y1 - 6)), scale, colour, thick)
        if space.aus:
            active = [name for name, on in zip(space.aus, space.au_decisions(face.values)) if on]
            lines = [" ".join(active[i : i + 4]) for i in range(0, len(active), 4)] or ["no AU"]
            step = int(22 * scale / 0.5)
            for i, line in enumerate(lines):
                _text(img, line, (x1, min(h - 4, y2 + step * (i + 1))), scale * 0.85, colour)
        if space.has_va:
            # One gauge per face, stacked down the right edge of the frame.
            centre = (w - radius - 10, 10 + radius + slot * (2 * radius + 40))
            if centre[1] + radius < h:
                draw_va_gauge(img, centre, radius, face.values[0], face.values[1], colour)
    return img


class OverlayWriter(AtomicWriter):
    """An mp4 (mp4v) writer that writes to a temporary name and renames on a clean close."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        # OpenCV picks the container from the suffix: the temporary name keeps it.
        self._file = PendingFile(self.path, suffix=self.path.suffix or ".mp4")
        self.size = (int(size[0]), int(size[1]))
        self._writer = cv2.VideoWriter(str(self._file.tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps) or 25.0, self.size)
        if not self._writer.isOpened():
            raise OSError(f"{self.path}: OpenCV cannot open an mp4v video writer here")
        self.frames = 0

    def write(self, frame_bgr: np.ndarray) -> None:
        if (frame_bgr.shape[1], frame_bgr.shape[0]) != self.size:
            raise ValueError(f"overlay frame is {frame_bgr.shape[1]}x{frame_bgr.shape[0]}, the video is {self.size[0]}x{self.size[1]}")
        self._writer.write(frame_bgr)
        self.frames += 1

    def close(self) -> Path:
        self._writer.release()
        self._file.commit()
        return self.path

    def abort(self) -> None:
        self._writer.release()
        self._file.abort()

