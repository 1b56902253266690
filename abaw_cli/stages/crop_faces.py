"""`abaw crop-faces`: videos and photos -> aligned face crops in the s-Aff-Wild2 layout + faces.csv.

Output folder:
    OUT/<source>/<frame:05d>.jpg            aligned crops (--faces largest)
    OUT/<source>_<track>/<frame:05d>.jpg    one folder per track (--faces all)
    OUT/faces.csv                           the face table (faces.manifest), all completed sources
    OUT/.crop-faces/settings.json           size/faces/fps/min-face of this folder (a rerun must match)
    OUT/.crop-faces/done/<source>.csv|.json a completed source's rows and summary (the resume record)
    OUT/.crop-faces/partial/                crops of the source being processed

How a source is committed (resume without half-done work): its crops are written into
partial/<source>/ while it runs; when its last frame is done the rows go to done/<source>.csv,
the crop folders are renamed into OUT/, and done/<source>.json is written last (temporary name +
rename): a source is complete exactly when its .json exists. A rerun removes partial/, skips
completed sources and rebuilds faces.csv from the done records, so an interrupted run leaves no
partial crops or rows behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Callable, Iterable

import cv2
import numpy as np
import typer
from rich.table import Table

from abaw_cli.faces.align import CROP_SIZES
from abaw_cli.faces.detector import FaceDetector, default_batch
from abaw_cli.faces.manifest import crop_folder, crop_relpath, face_row, read_rows, write_rows
from abaw_cli.faces.sources import Skipped, Source, expand_inputs
from abaw_cli.faces.stream import FACES_MODES, decoder_threads_for, iter_frame_faces, reserve_core_for_io
from abaw_cli.faces.video import ImageSequenceReader, SourceError, VideoReader, open_source
from abaw_cli.options import BatchOption, DeviceOption, OutDirOption
from abaw_cli.progress import console, make_progress
from abaw_cli.runtime import resolve_device

log = logging.getLogger(__name__)

STATE_DIR = ".crop-faces"
JPEG_QUALITY = 95


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


@dataclass
class CropReport:
    results: list[SourceResult]
    skipped: list[Skipped]
    manifest: Path

    @property
    def usable(self) -> bool:
        """True when at least one source is complete in the output (now or by an earlier run)."""
        return any(r.status in ("done", "already done") for r in self.results)


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
                raise typer.BadParameter(
                    f"{self.root} holds crops made with other settings ({diff}); use another --out "
                    "or the same settings to resume",
                    param_hint="--out",
                )
        else:
            _write_text_atomic(settings_path, json.dumps(wanted, indent=2))
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
                raise RuntimeError(f"{target} already belongs to another source; rename one of the inputs")
            os.replace(self.partial_folder(result.name) / folder, target)
        shutil.rmtree(self.partial_folder(result.name), ignore_errors=True)
        record = {**asdict(result), "folders": folders}
        _write_text_atomic(self.done_dir / f"{result.name}.json", json.dumps(record, indent=2))

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


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def process_source(
    source: Source,
    reader: VideoReader | ImageSequenceReader,
    detector: FaceDetector,
    settings: CropSettings,
    out: OutputFolder,
    writer: CropWriter,
    on_frame: Callable[[int], None] | None = None,
) -> SourceResult:
    """Detect, align and write the crops of one opened source, then commit it (closes `reader`)."""
    result = SourceResult(source.name, str(source.path), "done")
    start = time.perf_counter()
    partial = out.partial_folder(source.name)
    rows: list[dict[str, str]] = []
    folders: dict[str, None] = {}  # ordered set
    tracks: set[int] = set()
    try:
        for ff in iter_frame_faces(reader, detector, settings.size, settings.faces, keep_image=False):
            result.frames += 1
            if not ff.faces:
                rows.append(face_row(source.name, ff, None))
            for face in ff.faces:
                rel = crop_relpath(source.name, ff.frame, face.track, settings.faces)
                writer.put(partial / rel, face.crop)
                folders[crop_folder(source.name, face.track, settings.faces)] = None
                tracks.add(face.track)
                rows.append(face_row(source.name, ff, face, rel))
            result.faces += len(ff.faces)
            result.frames_with_face += bool(ff.faces)
            if on_frame is not None:
                on_frame(1)
        writer.flush()
    finally:
        reader.close()
    result.tracks = len(tracks)
    result.seconds = time.perf_counter() - start
    if reader.unreadable:
        result.error = f"{len(reader.unreadable)} image(s) could not be decoded"
    out.commit(result, rows, list(folders))
    return result


def crop_faces(
    inputs: list[str | Path],
    out_dir: Path,
    settings: CropSettings = CropSettings(),
    device: str = "auto",
    batch: int | None = None,
    show_progress: bool = True,
) -> CropReport:
    """The whole stage as a function (the command and the benchmark call it)."""
    if settings.size not in CROP_SIZES:
        raise typer.BadParameter(f"must be one of {', '.join(map(str, CROP_SIZES))} (got {settings.size})", param_hint="--size")
    if settings.faces not in FACES_MODES:
        raise typer.BadParameter(f"must be one of {', '.join(FACES_MODES)} (got {settings.faces})", param_hint="--faces")
    if settings.fps is not None and settings.fps <= 0:
        raise typer.BadParameter(f"must be positive (got {settings.fps})", param_hint="--fps")
    if settings.min_face < 12:
        raise typer.BadParameter(f"must be at least 12 pixels, MTCNN's smallest window (got {settings.min_face})", param_hint="--min-face")
    if batch is not None and batch < 1:
        raise typer.BadParameter(f"must be positive (got {batch})", param_hint="--batch")
    try:
        torch_device = resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from exc
    sources, skipped = expand_inputs(inputs)
    for s in skipped:
        log.warning("skipped %s", s)
    out = OutputFolder(out_dir, settings)
    out.prepare()
    results: dict[str, SourceResult] = {}
    todo: list[Source] = []
    for source in sources:
        record = out.record(source.name)
        if record is None:
            todo.append(source)
        elif record["path"] != str(source.path):
            msg = (f"{source.path}: output name {source.name!r} already holds {record['path']}; "
                   "rename the input or use another --out")
            log.warning("skipped %s", msg)
            results[source.name] = SourceResult(source.name, str(source.path), "failed", error=msg)
        else:
            log.info("%s: already done in %s, skipped", source.path, out_dir)
            fields = {k: record[k] for k in ("frames", "frames_with_face", "faces", "tracks", "seconds")}
            results[source.name] = SourceResult(source.name, str(source.path), "already done", **fields)
    # Built on the first readable source: a run with nothing to do loads no model.
    detector: FaceDetector | None = None
    queue_size = max(2 * (batch or default_batch(torch_device)), 8)
    writer = CropWriter()
    progress = make_progress()
    try:
        with progress if show_progress else contextlib.nullcontext(), reserve_core_for_io(torch_device):
            overall = progress.add_task("all sources", total=len(todo)) if show_progress else None
            for source in todo:
                try:
                    reader = open_source(
                        source, fps=settings.fps, queue_size=queue_size, decoder_threads=decoder_threads_for(torch_device)
                    )
                    if detector is None:
                        detector = FaceDetector(device=torch_device, min_face=settings.min_face, batch=batch)
                        log.info("detecting with %s", detector)
                    task = progress.add_task(source.name, total=reader.expected_frames) if show_progress else None
                    result = process_source(
                        source, reader, detector, settings, out, writer,
                        on_frame=(lambda n, t=task: progress.advance(t, n)) if show_progress else None,
                    )
                    if show_progress:
                        progress.update(task, visible=False)
                    if result.error:
                        log.warning("%s: %s (skipped those frames)", source.path, result.error)
                except SourceError as exc:
                    log.warning("skipped %s", exc)
                    result = SourceResult(source.name, str(source.path), "failed", error=str(exc))
                results[source.name] = result
                if show_progress:
                    progress.advance(overall)
    finally:
        writer.close()
        shutil.rmtree(out.partial_dir, ignore_errors=True)
        out.write_manifest()
    return CropReport([results[s.name] for s in sources], skipped, out.manifest)


def summary_table(report: CropReport) -> Table:
    table = Table(title="crop-faces", show_footer=True)
    done = [r for r in report.results if r.status != "failed"]
    frames = sum(r.frames for r in done)
    with_face = sum(r.frames_with_face for r in done)
    fresh = [r for r in done if r.status == "done"]
    fresh_s = sum(r.seconds for r in fresh)
    fresh_fps = f"{sum(r.frames for r in fresh) / fresh_s:.1f}" if fresh_s > 0 else ""
    table.add_column("source", footer=f"{len(done)} of {len(report.results)}")
    table.add_column("status")
    table.add_column("frames", justify="right", footer=str(frames))
    table.add_column("faces", justify="right", footer=str(sum(r.faces for r in done)))
    table.add_column("tracks", justify="right")
    table.add_column("detection rate", justify="right", footer=f"{with_face / frames:.1%}" if frames else "")
    table.add_column("fps", justify="right", footer=fresh_fps)
    for r in report.results:
        if r.status == "failed":  # the reason is listed under the table
            table.add_row(r.name, "[red]failed[/red]", "", "", "", "", "")
            continue
        table.add_row(
            r.name, r.status, str(r.frames), str(r.faces), str(r.tracks),
            f"{r.detection_rate:.1%}", f"{r.fps:.1f}" if r.status == "done" else "",
        )
    return table


HELP = """Detect (MTCNN), align and crop faces from videos, images, folders and path lists.

INPUT: video files (any container OpenCV reads), image files, folders (searched recursively; a
folder of images is one source, its images the frames) and .txt lists of such paths. Writes
OUT/<source>/<frame:05d>.jpg aligned faces (OUT/<source>_<track>/ with --faces all) and
OUT/faces.csv: one row per face per frame, and a face=0 row for a frame without a face. Unreadable
inputs are reported and skipped; the exit code is 1 only when nothing could be processed. Running
it again skips the sources already finished in OUT.

[bold]Examples[/]

  abaw crop-faces clip.mp4 --out crops

  abaw crop-faces videos/ photos/ list.txt --out crops --size 224 --fps 5

  abaw crop-faces party.mkv --out crops --faces all --min-face 40 --device cuda --batch 32
"""


def register(app: typer.Typer) -> None:
    @app.command(
        "crop-faces",
        help=HELP,
        short_help="Detect, align and crop faces from videos and images (s-Aff-Wild2 layout).",
    )
    def crop_faces_command(
        inputs: Annotated[
            list[str],
            typer.Argument(help="Video files, image files, folders (searched recursively) or .txt lists of paths.", show_default=False),
        ],
        out: OutDirOption,
        size: Annotated[int, typer.Option("--size", help="Crop size in pixels: 112 (s-Aff-Wild2) or 224.")] = 112,
        fps: Annotated[float | None, typer.Option("--fps", help="Sample videos at this rate (default: every frame).")] = None,
        faces: Annotated[str, typer.Option("--faces", help="largest: one face per frame; all: every face, tracked.")] = "largest",
        min_face: Annotated[int, typer.Option("--min-face", help="Smallest face to find (box side, pixels).")] = 20,
        device: DeviceOption = "auto",
        batch: BatchOption = None,
    ) -> None:
        settings = CropSettings(size=size, faces=faces, fps=fps, min_face=min_face)
        report = crop_faces(inputs, out, settings, device=device, batch=batch)
        console.print(summary_table(report))
        for r in report.results:
            if r.status == "failed":
                console.print(f"[red]failed[/red] {r.error}")
        for s in report.skipped:
            console.print(f"[yellow]skipped[/yellow] {s}")
        console.print(f"faces table: {report.manifest}")
        if not report.usable:
            console.print("[red]nothing could be processed[/red]")
            raise typer.Exit(code=1)
