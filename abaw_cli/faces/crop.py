"""crop-faces as a library: videos and photos -> aligned face crops in the s-Aff-Wild2 layout +
faces.csv, resumable source by source (the output folder: faces/output.py), one process or many
(torchrun: each source to one rank)."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from abaw_cli.faces.align import CROP_SIZES
from abaw_cli.faces.detector import FaceDetector, default_batch
from abaw_cli.faces.manifest import crop_folder, crop_relpath, face_row
from abaw_cli.faces.output import CropFacesError, CropSettings, CropWriter, OutputFolder, SourceResult
from abaw_cli.faces.sources import Skipped, Source, approximate_bytes, expand_inputs
from abaw_cli.faces.stream import FACES_MODES, decoder_threads_for, iter_frame_faces
from abaw_cli.faces.video import ImageSequenceReader, SourceError, VideoReader, open_source
from abaw_cli.progress import make_progress
from abaw_cli.runtime import cpu_threads, resolve_device
from abaw_cli.train import distributed as D

log = logging.getLogger(__name__)


@dataclass
class CropReport:
    results: list[SourceResult]
    skipped: list[Skipped]
    manifest: Path
    rank: int = 0  # under torchrun: this process's rank (every rank gets the whole report)

    @property
    def usable(self) -> bool:
        """True when at least one source is complete in the output (now or by an earlier run)."""
        return any(r.status in ("done", "already done") for r in self.results)


def check_settings(settings: CropSettings, batch: int | None) -> None:
    if settings.size not in CROP_SIZES:
        raise CropFacesError(f"--size must be one of {', '.join(map(str, CROP_SIZES))} (got {settings.size})")
    if settings.faces not in FACES_MODES:
        raise CropFacesError(f"--faces must be one of {', '.join(FACES_MODES)} (got {settings.faces})")
    if settings.fps is not None and settings.fps <= 0:
        raise CropFacesError(f"--fps must be positive (got {settings.fps})")
    if settings.min_face < 12:
        raise CropFacesError(f"--min-face must be at least 12 pixels, MTCNN's smallest window (got {settings.min_face})")
    if batch is not None and batch < 1:
        raise CropFacesError(f"--batch must be positive (got {batch})")


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


def _already_done(sources: list[Source], out: OutputFolder, out_dir: Path) -> tuple[dict[str, SourceResult], list[Source]]:
    """Results of the sources an earlier run completed (or that clash with one), and the rest to do."""
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
    return results, todo


def crop_faces(
    inputs: list[str | Path],
    out_dir: Path,
    settings: CropSettings = CropSettings(),
    device: str = "auto",
    batch: int | None = None,
    show_progress: bool = True,
) -> CropReport:
    """The whole stage as a function (the command and the benchmark call it).

    Under torchrun each source goes to exactly one rank (train.distributed.run_shared, by file
    size); rank 0 prepares the folder before and writes faces.csv after all ranks committed, so
    the folder is the one a single process leaves, and a rerun resumes every rank's sources."""
    check_settings(settings, batch)
    try:
        torch_device = resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise CropFacesError(str(exc)) from exc
    created = D.init_distributed(torch_device)
    try:
        return _crop_faces(inputs, out_dir, settings, torch_device, batch, show_progress and D.is_main())
    finally:
        if created:
            D.cleanup_distributed()


def _prepare(out: OutputFolder) -> None:
    """Rank 0 prepares the output folder while the others wait; a refusal stops every rank."""
    failure = None
    if D.is_main():
        try:
            out.prepare()
        except (CropFacesError, OSError) as exc:
            failure = exc
    try:
        D.share_failure(failure)
    except D.RankFailedError as exc:
        raise CropFacesError(str(exc)) from exc


def _crop_faces(
    inputs: list[str | Path], out_dir: Path, settings: CropSettings, torch_device, batch: int | None, show_progress: bool
) -> CropReport:
    sources, skipped = expand_inputs(inputs)
    if D.is_main():
        for s in skipped:
            log.warning("skipped %s", s)
    out = OutputFolder(out_dir, settings)
    _prepare(out)
    results, todo = _already_done(sources, out, out_dir)
    weights = [approximate_bytes(s.images or (s.path,)) for s in todo] if D.world_size() > 1 else [1.0] * len(todo)
    owned = sum(r == D.rank() for r in D.owner_ranks(weights, D.world_size()))
    # Built on the first readable source: a run (or rank) with nothing to do loads no model.
    detector: FaceDetector | None = None
    queue_size = max(2 * (batch or default_batch(torch_device)), 8)
    writer = CropWriter()
    progress = make_progress(disable=not show_progress)
    together = False  # every rank got past run_shared's gather (its exceptions come after it)

    def crop_one(i: int) -> SourceResult:
        nonlocal detector
        source = todo[i]
        if D.world_size() > 1:
            log.info("rank %d of %d: %s", D.rank(), D.world_size(), source.name)
        try:
            reader = open_source(source, fps=settings.fps, queue_size=queue_size, decoder_threads=decoder_threads_for(torch_device))
            if detector is None:
                detector = FaceDetector(device=torch_device, min_face=settings.min_face, batch=batch, share_cores=True)
                log.info("detecting with %s", detector)
            task = progress.add_task(source.name, total=reader.expected_frames)
            result = process_source(source, reader, detector, settings, out, writer, on_frame=lambda n: progress.advance(task, n))
            progress.update(task, visible=False)
            if result.error:
                log.warning("%s: %s (skipped those frames)", source.path, result.error)
        except SourceError as exc:
            log.warning("skipped %s", exc)
            result = SourceResult(source.name, str(source.path), "failed", error=str(exc))
        progress.advance(overall)
        return result

    try:
        with progress, cpu_threads(torch_device):
            overall = progress.add_task("all sources", total=owned)
            try:
                done = D.run_shared(weights, crop_one)
            except Exception:
                together = True  # run_shared raises its exceptions on every rank after the gather
                raise
            together = True
        for i, source in enumerate(todo):
            results[source.name] = done[i]
    finally:
        writer.close()
        # Rank 0 cleans up and writes faces.csv once every rank has committed its sources. After
        # an interrupt (Ctrl-C, a killed rank) under torchrun nobody waits for the others: the
        # next run clears partial/ and rewrites faces.csv from the committed sources.
        if D.world_size() == 1 or together:
            if D.is_main():
                shutil.rmtree(out.partial_dir, ignore_errors=True)
                out.write_manifest()
    return CropReport([results[s.name] for s in sources], skipped, out.manifest, rank=D.rank())

