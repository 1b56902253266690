"""The per-frame face table (`faces.csv`): one row per kept face per frame, and one row with
face=0 for a frame in which no face was found, so that frame numbers stay aligned with the video.

Columns (FACES_COLUMNS):
    source            output name of the source (its crops are in <source>[_<track>]/)
    input             the video file, or the image file the frame came from
    frame             frame index in the video (or position in an image folder)
    time_s            timestamp in seconds, empty for images
    track             face track id (0 with --faces largest), empty when face=0
    face              1 if a face was found in this frame, else 0
    x1 y1 x2 y2       face box in frame pixels
    score             MTCNN face probability
    left_eye_x ... mouth_right_y   the 5 landmarks in frame pixels (detector.LANDMARK_NAMES order)
    crop              path of the aligned crop, relative to the folder holding faces.csv

`write_rows` writes to a temporary name and renames, so a reader never sees half a table.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

from abaw_cli.atomic import atomic_open
from abaw_cli.faces.detector import LANDMARK_NAMES
from abaw_cli.faces.stream import Face, FrameFaces

LANDMARK_COLUMNS: tuple[str, ...] = tuple(f"{name}_{axis}" for name in LANDMARK_NAMES for axis in ("x", "y"))
FACES_COLUMNS: tuple[str, ...] = (
    "source", "input", "frame", "time_s", "track", "face", "x1", "y1", "x2", "y2", "score",
    *LANDMARK_COLUMNS, "crop",
)


def crop_folder(source_name: str, track: int, faces_mode: str) -> str:
    """Folder of a track's crops: <source> with --faces largest, <source>_<track> with --faces all."""
    return source_name if faces_mode == "largest" else f"{source_name}_{track}"


def crop_relpath(source_name: str, frame: int, track: int, faces_mode: str) -> str:
    return f"{crop_folder(source_name, track, faces_mode)}/{frame:05d}.jpg"


def _num(value: float, digits: int = 2) -> str:
    return f"{float(value):.{digits}f}"


def face_row(source_name: str, ff: FrameFaces, face: Face | None, crop: str = "") -> dict[str, str]:
    """One table row (all values as text); face=None gives the no-face row of that frame."""
    row = {
        "source": source_name,
        "input": str(ff.path) if ff.path is not None else "",
        "frame": str(ff.frame),
        "time_s": "" if ff.time_s is None else f"{ff.time_s:.4f}",
    }
    if face is None:
        row.update({c: "" for c in FACES_COLUMNS if c not in row})
        row["face"] = "0"
        return row
    row.update({"track": str(face.track), "face": "1"})
    row.update(zip(("x1", "y1", "x2", "y2"), map(_num, face.box)))
    row["score"] = _num(face.score, 5)
    row.update(zip(LANDMARK_COLUMNS, map(_num, face.landmarks.reshape(-1))))
    row["crop"] = crop
    return row


def write_rows(path: Path, rows: Iterable[dict[str, str]]) -> int:
    """Write a faces table atomically (temporary file + rename); returns the row count."""
    n = 0
    with atomic_open(path, "w", fsync=True) as f:
        writer = csv.DictWriter(f, fieldnames=FACES_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            n += 1
    return n


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a faces table; refuses a file whose header is not FACES_COLUMNS."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != FACES_COLUMNS:
            raise ValueError(f"{path}: line 1: not a faces table (columns {reader.fieldnames})")
        return list(reader)
