"""The streaming core shared by `abaw crop-faces` and `abaw predict`: frames in, aligned faces out.

    detector = FaceDetector(device="auto", min_face=20, batch=8)
    for ff in iter_frame_faces(source, detector, size=112, faces="largest", fps=None):
        ff.frame, ff.time_s, ff.path     # frame index, timestamp (None for images), file it came from
        ff.image                         # the whole RGB frame (HxWx3 uint8)
        for face in ff.faces:            # [] when no face was found: such frames are never dropped
            face.track, face.box, face.score, face.landmarks   # (4,), float, (5, 2) in frame pixels
            face.crop                    # (size, size, 3) uint8 RGB, aligned (faces.align)
            face.matrix                  # (2, 3) frame -> crop similarity

`source` is a sources.Source (opened and closed here) or an already opened video.VideoReader /
ImageSequenceReader (left open: the caller owns it and can read its metadata). Frames come out in
source order. Image files (photos) are searched for faces on a copy of at most PHOTO_DETECT_SIDE
px and cropped from the full-resolution image (faces.detector). `faces="largest"` keeps the
largest face of each frame as track 0; `faces="all"` keeps every face with ids from
tracker.FaceTracker. min_face and thresholds belong to the detector; the batch size is the
detector's unless `batch` is given.

Where the time goes: decoding runs in the reader's thread and fills a bounded queue while the
calling thread runs MTCNN on up to `batch` frames (torch releases the GIL; a batch is whatever is
decoded, so the detector never waits for a full one), then aligns (tens of microseconds per face)
and tracks. Slow consumer work (JPEG writing, model inference on the crops) should be handed to
another thread or batched, as crop-faces does, so that detection stays the only thing the main
thread waits on. On a CPU, do as crop-faces and predict do: wrap the loop in
`runtime.cpu_threads(detector.device)`, so that torch runs on every core of this process (divided
among local torchrun ranks), and build the detector with share_cores=True, so that it gives back
the cores other processes keep busy (runtime.FreeCoreThreads). A reader opened here decodes with
one thread: decoding and writing need a few percent of a core, so no core is kept for them (issue
18: a reserved core idled half of a 2-core machine).

    detector = FaceDetector(device="cpu", share_cores=True)
    with cpu_threads(detector.device):
        for ff in iter_frame_faces(source, detector): ...
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch

from abaw_cli.faces.align import align_face
from abaw_cli.faces.detector import PHOTO_DETECT_SIDE, Detections, FaceDetector
from abaw_cli.faces.follow import LandmarkFollower
from abaw_cli.faces.sources import Source
from abaw_cli.faces.tracker import FaceTracker
from abaw_cli.faces.video import Frame, ImageSequenceReader, VideoReader, open_source

log = logging.getLogger(__name__)

FacesMode = Literal["largest", "all"]
FACES_MODES: tuple[str, ...] = ("largest", "all")


@dataclass
class Face:
    track: int  # 0 with faces="largest"; a tracker id with faces="all"
    box: np.ndarray  # (4,) float32 x1 y1 x2 y2, frame pixels
    score: float  # MTCNN face probability
    landmarks: np.ndarray  # (5, 2) float32, frame pixels (detector.LANDMARK_NAMES order)
    crop: np.ndarray  # (size, size, 3) uint8 RGB aligned face
    matrix: np.ndarray  # (2, 3) float64 frame -> crop


@dataclass
class FrameFaces:
    frame: int  # frame index in the video / position in the image list
    time_s: float | None  # timestamp in seconds (None for image files)
    faces: list[Face] = field(default_factory=list)  # largest first with faces="largest"
    path: Path | None = None  # video file or image file
    image: np.ndarray | None = None  # the whole RGB frame


def decoder_threads_for(device: torch.device) -> int:
    """Video decoder threads next to a detector on `device`: 1 on a CPU, where one thread decodes
    640x360 about 40x faster than MTCNN on 2 cores and FFmpeg's own choice (a thread a core) would
    take cores from torch's parallel sections; the decoder's own choice (0) next to a GPU, where
    decoding can be the slower side."""
    return 1 if device.type == "cpu" else 0


def select_faces(dets: Detections, mode: FacesMode, tracker: FaceTracker | None) -> list[tuple[int, int]]:
    """(detection index, track id) pairs to keep from one frame's detections."""
    if len(dets) == 0:
        if tracker is not None:
            tracker.update(dets)  # ages the tracks: a long gap closes them
        return []
    if mode == "largest":
        return [(0, 0)]  # the detector sorts boxes largest first
    ids = tracker.update(dets)
    return list(enumerate(ids))


def iter_frame_faces(
    source: Source | VideoReader | ImageSequenceReader,
    detector: FaceDetector,
    size: int = 112,
    faces: FacesMode = "largest",
    fps: float | None = None,
    batch: int | None = None,
    keep_image: bool = True,
    detect_every: int = 1,
) -> Iterator[FrameFaces]:
    """Every decoded frame of `source` with its aligned faces; see the module docstring.

    fps: sample a video at this rate (ignored when `source` is an opened reader, which already
    has its rate). keep_image=False drops the whole frame from the results (saves memory when only
    the crops are needed). detect_every=K: run the detector on every K-th frame only and carry its
    faces through the frames between by optical flow on the landmarks (faces.follow).
    """
    if faces not in FACES_MODES:
        raise ValueError(f"--faces must be one of {', '.join(FACES_MODES)} (got {faces!r})")
    batch = int(batch or detector.batch)
    if batch < 1:
        raise ValueError(f"--batch must be positive (got {batch})")
    owned = isinstance(source, Source)
    reader = (
        open_source(source, fps=fps, queue_size=max(2 * batch, 8), decoder_threads=decoder_threads_for(detector.device))
        if owned
        else source
    )
    tracker = FaceTracker() if faces == "all" else None
    if detect_every < 1:
        raise ValueError(f"--detect-every must be at least 1 (got {detect_every})")
    follower = LandmarkFollower() if detect_every > 1 else None
    # With K > 1, gather K times more frames so that the detector still sees `batch` frames a call.
    group = batch if follower is None else min(batch * detect_every, max(batch, 64))
    # Photos are searched on a copy of at most PHOTO_DETECT_SIDE px and cropped at full resolution.
    max_side = PHOTO_DETECT_SIDE if isinstance(reader, ImageSequenceReader) else None
    try:
        seen = 0  # reader position of the first frame of each group (detect_every counts from it)
        for frames in reader.batches(group):  # up to `group` frames, without waiting for a full one
            yield from _detect_and_align(frames, detector, size, faces, tracker, keep_image, follower, detect_every, seen, max_side)
            seen += len(frames)
    finally:
        if owned:
            reader.close()


def _detect_and_align(
    frames: list[Frame],
    detector: FaceDetector,
    size: int,
    mode: FacesMode,
    tracker: FaceTracker | None,
    keep_image: bool,
    follower: LandmarkFollower | None = None,
    detect_every: int = 1,
    first_position: int = 0,
    max_side: int | None = None,
) -> Iterator[FrameFaces]:
    # Frame at reader position p is detected when p % detect_every == 0; the others are followed.
    detect_at = [i for i in range(len(frames)) if follower is None or (first_position + i) % detect_every == 0]
    detected = dict(zip(detect_at, detector.detect([frames[i].rgb for i in detect_at], max_side) if detect_at else []))
    for i, frame in enumerate(frames):
        if i in detected:
            dets = detected[i]
            if follower is not None:
                follower.reset(frame.rgb, dets)
        else:
            dets = follower.follow(frame.rgb)
        kept = []
        for d, track in select_faces(dets, mode, tracker):
            crop, matrix = align_face(frame.rgb, dets.landmarks[d], size)
            kept.append(Face(track, dets.boxes[d], float(dets.scores[d]), dets.landmarks[d], crop, matrix))
        yield FrameFaces(frame.index, frame.time_s, kept, frame.path, frame.rgb if keep_image else None)
