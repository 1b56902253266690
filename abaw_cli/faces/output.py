"""The output folder of crop-faces: background JPEG writing, and the resume state that makes a
folder hold only completed sources.

    OUT/<source>/<frame:05d>.jpg            aligned crops (--faces largest)
    OUT/<source>_<track>/<frame:05d>.jpg    one folder per track (--faces all)
    OUT/faces.csv                           the face table (faces.manifest), all completed sources
    OUT/.crop-faces/settings.json           size/faces/fps/min-face of this folder (a rerun must match)
    OUT/.crop-faces/done/<source>.csv|.json a completed source's rows and summary (the resume record)
    OUT/.crop-faces/partial/                crops of the source being processed

How a source is committed (resume without half-done work): its crops are written into
partial/<source>/ while it runs; when its last frame is done the rows go to done/<source>.csv,
the crop folders are renamed into OUT/, and done/<source>.json is written last (atomically): a
source is complete exactly when its .json exists. A rerun removes partial/, skips completed
sources and rebuilds faces.csv from the done records, so an interrupted run leaves no partial
crops or rows behind.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from abaw_cli.atomic import atomic_write_text
from abaw_cli.faces.manifest import read_rows, write_rows

STATE_DIR = ".crop-faces"
JPEG_QUALITY = 95


class CropFacesError(ValueError):
    """Settings or an output folder that crop-faces cannot work with."""


@dataclass(frozen=True)
class CropSettings:
    """What decides the content of an output folder; a rerun into the same folder must match."""

    size: int = 112
    faces: str = "largest"
    fps: float | None = None
    min_face: int = 20


@dataclass
class SourceResult:
    name: str
    path: str
    status: str  # "done", "already done", "failed"
    frames: int = 0
    frames_with_face: int = 0
    faces: int = 0
    tracks: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def detection_rate(self) -> float:
        return self.frames_with_face / self.frames if self.frames else 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class CropWriter:
    """Encodes and writes JPEG crops in a background thread (cv2 releases the GIL while encoding)."""

    def __init__(self, max_pending: int = 256) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="crop-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            path, rgb = item
            if self._error is not None:
                continue  # drain after a failure; the error is raised by flush/close
            try:
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    raise OSError(f"{path}: JPEG encoding failed")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(buf.tobytes())
            except BaseException as exc:  # re-raised in the main thread
                self._error = exc
            finally:
                self._queue.task_done()

    def put(self, path: Path, rgb: np.ndarray) -> None:
        self._raise()
        self._queue.put((path, rgb))

    def flush(self) -> None:
        """Wait until everything handed over is on disk."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


class OutputFolder:
    """The resume state of one output folder; see the module docstring."""

    def __init__(self, root: Path, settings: CropSettings) -> None:
        self.root = Path(root)
        self.state = self.root / STATE_DIR
        self.done_dir = self.state / "done"
        self.partial_dir = self.state / "partial"
        self.settings = settings
        self.manifest = self.root / "faces.csv"

    def prepare(self) -> None:
        """Create the folder, check that its settings match, clear what an interrupted run left."""
        self.done_dir.mkdir(parents=True, exist_ok=True)
        settings_path = self.state / "settings.json"
        wanted = asdict(self.settings)
        if settings_path.exists():
            found = json.loads(settings_path.read_text())
            if found != wanted:
                diff = ", ".join(f"{k}: {found.get(k)} -> {wanted[k]}" for k in wanted if found.get(k) != wanted[k])
                raise CropFacesError(
                    f"--out {self.root} holds crops made with other settings ({diff}); use another --out "
                    "or the same settings to resume"
                )
        else:
            atomic_write_text(settings_path, json.dumps(wanted, indent=2))
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        for rows in self.done_dir.glob("*.csv"):  # rows whose source never committed
            if not rows.with_suffix(".json").exists():
                rows.unlink()

    def record(self, name: str) -> dict | None:
        path = self.done_dir / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def partial_folder(self, name: str) -> Path:
        return self.partial_dir / name

    def commit(self, result: SourceResult, rows: list[dict[str, str]], folders: list[str]) -> None:
        """Make a finished source part of the output (rows, then crops, then the done record)."""
        write_rows(self.done_dir / f"{result.name}.csv", rows)
        claimed = self._claimed_folders(exclude=result.name)
        pattern = re.compile(rf"^{re.escape(result.name)}(_\d+)?$")
        for stale in self.root.iterdir():  # crops of an earlier attempt that never committed
            if stale.is_dir() and pattern.match(stale.name) and stale.name not in claimed:
                shutil.rmtree(stale)
        for folder in folders:
            target = self.root / folder
            if target.exists():
                raise CropFacesError(f"{target} already belongs to another source; rename one of the inputs")
            os.replace(self.partial_folder(result.name) / folder, target)
        shutil.rmtree(self.partial_folder(result.name), ignore_errors=True)
        record = {**asdict(result), "folders": folders}
        atomic_write_text(self.done_dir / f"{result.name}.json", json.dumps(record, indent=2))

    def _claimed_folders(self, exclude: str) -> set[str]:
        claimed: set[str] = set()
        for rec_path in self.done_dir.glob("*.json"):
            if rec_path.stem != exclude:
                claimed.update(json.loads(rec_path.read_text()).get("folders", []))
        return claimed

    def write_manifest(self) -> int:
        """faces.csv = the rows of every completed source, sources sorted by name."""

        def rows() -> Iterable[dict[str, str]]:
            for rec_path in sorted(self.done_dir.glob("*.json")):
                yield from read_rows(rec_path.with_suffix(".csv"))

        return write_rows(self.manifest, rows())
