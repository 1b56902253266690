"""The streaming video path: frames -> faces -> batched model -> smoothing -> table / overlay / plot.

    summary = predict_source(source, detector, predictor, outputs, options, progress)

Decoding runs in the reader's thread (faces.video), detection and alignment in faces.stream; this
module groups the aligned crops of consecutive frames into model batches of `batch` faces, runs the
model, and hands each frame on as soon as it is done (after the smoothing look-ahead). Nothing grows
with the video's length: at most one model batch of frames, the smoothing window, and (with --plot)
a few scalars per frame are held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from abaw_cli.faces.detector import FaceDetector
from abaw_cli.faces.sources import Source
from abaw_cli.faces.stream import FrameFaces, decoder_threads_for, iter_frame_faces
from abaw_cli.faces.video import FALLBACK_FPS, open_source
from abaw_cli.predict.batching import FacePredictor
from abaw_cli.predict.overlay import OverlayWriter, draw_frame
from abaw_cli.predict.records import FacePrediction, FramePrediction
from abaw_cli.predict.smoothing import CentredSmoother, window_frames
from abaw_cli.predict.tables import frame_rows, open_table
from abaw_cli.predict.timeline import TimelineRecorder

log = logging.getLogger(__name__)

# The face crop size handed to the model's resize: s-Aff-Wild2's cropped_aligned size, so that a
# video face is framed and sampled like the crops the model was trained on.
CROP_SIZE = 112


@dataclass(frozen=True)
class VideoOptions:
    faces: str = "largest"  # "largest" or "all" (tracked)
    detect_every: int = 1  # run the detector on every K-th frame, follow faces in between
    smooth_s: float = 0.0  # centred moving-average window in seconds (0: none)
    batch: int = 32  # faces per model forward pass
    overlay_label: str = "model"  # whose expression the overlay writes: "model" or "prior" (EMMA's prior)


@dataclass(frozen=True)
class SourceOutputs:
    table: Path
    table_format: str = "csv"
    overlay: Path | None = None
    plot: Path | None = None


@dataclass
class SourceSummary:
    name: str
    frames: int = 0
    frames_with_face: int = 0
    faces: int = 0
    tracks: set[int] = field(default_factory=set)
    seconds: float = 0.0
    written: list[Path] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# Frames held while a model batch fills: with --overlay each holds its whole image, so a large GPU
# batch of faces must not mean as many full frames in memory.
MAX_FRAMES_PER_CHUNK = 64


def _model_batches(stream: Iterator[FrameFaces], batch: int) -> Iterator[list[FrameFaces]]:
    """Consecutive frames whose faces fill one model batch (or at most min(batch, 64) frames)."""
    max_frames = min(batch, MAX_FRAMES_PER_CHUNK)
    chunk: list[FrameFaces] = []
    n_faces = 0
    for ff in stream:
        chunk.append(ff)
        n_faces += len(ff.faces)
        if n_faces >= batch or len(chunk) >= max_frames:
            yield chunk
            chunk, n_faces = [], 0
    if chunk:
        yield chunk


def _predict_chunk(chunk: list[FrameFaces], predictor: FacePredictor) -> list[FramePrediction]:
    crops = [face.crop for ff in chunk for face in ff.faces]
    values = predictor(np.stack(crops)) if crops else np.zeros((0, predictor.space.width), np.float32)
    out, k = [], 0
    for ff in chunk:
        faces = []
        for face in ff.faces:
            faces.append(FacePrediction(face.track, np.asarray(face.box, np.float32), float(face.score), values[k]))
            k += 1
        out.append(FramePrediction(ff.frame, ff.time_s, tuple(faces), ff.image))
    return out


def predict_source(
    source: Source,
    detector: FaceDetector,
    predictor: FacePredictor,
    outputs: SourceOutputs,
    options: VideoOptions,
    progress=None,
) -> SourceSummary:
    """Predict every frame of one video (or image sequence) and write its outputs."""
    space = predictor.space
    summary = SourceSummary(source.name)
    # One decoder thread next to a CPU detector (faces.stream.decoder_threads_for): the cores are torch's.
    reader = open_source(source, queue_size=max(2 * detector.batch, 16), decoder_threads=decoder_threads_for(detector.device))
    is_video = source.kind == "video"
    fps = reader.native_fps or FALLBACK_FPS
    smoother = CentredSmoother(window_frames(options.smooth_s, fps))
    timeline = TimelineRecorder(space) if outputs.plot else None
    overlay = OverlayWriter(outputs.overlay, fps, (reader.width, reader.height)) if outputs.overlay and is_video else None
    if outputs.overlay and not is_video:
        log.warning("%s: --overlay draws on videos only; %s is a set of images", outputs.overlay, source.name)
    table = open_table(outputs.table, space, outputs.table_format, with_image=not is_video)
    task = progress.add_task(source.name[:28], total=reader.expected_frames, fps="") if progress is not None else None
    started = time.perf_counter()

    def emit(prediction: FramePrediction) -> None:
        image = None if is_video else _image_name(source, prediction.frame)
        for row in frame_rows(source.name, prediction, space, image=image):
            table.write_row(row)
        if overlay is not None:
            overlay.write(draw_frame(prediction.image, prediction, space, options.overlay_label))
        if timeline is not None:
            timeline.add(prediction)
        summary.frames += 1
        summary.faces += len(prediction.faces)
        summary.frames_with_face += bool(prediction.faces)
        summary.tracks.update(f.track for f in prediction.faces)
        if task is not None:
            elapsed = time.perf_counter() - started
            progress.update(task, advance=1, fps=f"{summary.frames / max(elapsed, 1e-9):.1f} fps")

    stream_kwargs = {"detect_every": options.detect_every} if options.detect_every > 1 else {}
    try:
        stream = iter_frame_faces(
            reader, detector, size=CROP_SIZE, faces=options.faces, keep_image=overlay is not None, **stream_kwargs
        )
        for chunk in _model_batches(stream, options.batch):
            for prediction in _predict_chunk(chunk, predictor):
                for done in smoother.push(prediction):
                    emit(done)
        for done in smoother.flush():
            emit(done)
    except BaseException:
        table.abort()
        if overlay is not None:
            overlay.abort()
        raise
    finally:
        reader.close()
    summary.seconds = time.perf_counter() - started
    summary.written.append(table.close())
    if overlay is not None:
        summary.written.append(overlay.close())
    if timeline is not None:
        summary.written.append(timeline.save(outputs.plot, title=source.name))
    if task is not None:
        progress.update(task, total=summary.frames, completed=summary.frames)
    if summary.frames_with_face == 0:
        log.warning("%s: no face found in any of its %d frames; the table has %d empty rows (face=0)", source.path, summary.frames, summary.frames)
    return summary


def _image_name(source: Source, position: int) -> str:
    return str(source.images[position]) if position < len(source.images) else ""
