"""Frame readers that decode in a background thread, so that detection never waits on I/O.

    with open_source(source, fps=None) as reader:   # source: sources.Source (video or images)
        reader.expected_frames                      # frames it will yield (videos: from the header)
        for frame in reader:                        # Frame(index, time_s, rgb, path)
            ...
        # or: for frames in reader.batches(8): ...  # lists of up to 8 frames, no waiting for 8

- VideoReader: every frame by default; with `fps` only frames at that rate are decoded into
  pixels (the others are just demuxed with `grab`). `index` is the frame's index in the video and
  `time_s` its timestamp, index / the video's frame rate, so rows stay aligned with the video.
- ImageSequenceReader: the source's image files in order; `index` is the position in that list,
  `time_s` is None (a folder of images has no clock) and `path` is the file. A file that fails to
  decode is logged, listed in `reader.unreadable` and skipped.

Both raise SourceError (with the file name and the reason) when the source cannot be opened or
holds no decodable frame; they check this before returning, so callers fail fast. Decoding runs
in a daemon thread that fills a bounded queue (`queue_size` frames): memory stays bounded and
the thread stops when the consumer closes the reader or leaves the `with` block.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import numpy as np

from abaw_cli.faces.sources import Source

log = logging.getLogger(__name__)

FALLBACK_FPS = 25.0  # used for timestamps only when a container does not state its frame rate


class SourceError(RuntimeError):
    """A source that cannot be read at all (message names the file and the reason)."""


class Frame(NamedTuple):
    index: int  # frame index in the video, or position in the image list
    time_s: float | None  # timestamp in the video; None for images
    rgb: np.ndarray  # HxWx3 uint8 RGB
    path: Path  # the video file, or the image file this frame came from


_END = object()


class _BackgroundReader:
    """Runs `self._produce()` (a generator of Frames) in a thread that fills a bounded queue."""

    def __init__(self, queue_size: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _produce(self) -> Iterator[Frame]:  # overridden
        raise RuntimeError("subclasses define _produce")

    def _release(self) -> None:
        """Free decoder resources (called in the decoding thread when it ends)."""

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for frame in self._produce():
                if not self._put(frame):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
        finally:
            self._release()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"decode-{type(self).__name__}", daemon=True)
            self._thread.start()

    def __iter__(self) -> Iterator[Frame]:
        for batch in self.batches(1):
            yield batch[0]

    def batches(self, max_frames: int) -> Iterator[list[Frame]]:
        """Frames in lists of 1..max_frames: waits for one frame, then takes whatever else is
        already decoded. The detector never idles waiting for a full batch (at the start of a
        video, or when decoding is the slower side), and batches are full whenever it is not."""
        self._start()
        done = False
        while not done:
            batch: list[Frame] = []
            item = self._queue.get()
            while True:
                if item is _END:
                    done = True
                    break
                if isinstance(item, BaseException):
                    raise item
                batch.append(item)
                if len(batch) >= max_frames:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                yield batch

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        else:
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoReader(_BackgroundReader):
    """Frames of one video file; see the module docstring."""

    def __init__(
        self, path: str | Path, fps: float | None = None, queue_size: int = 16, decoder_threads: int = 0
    ) -> None:
        super().__init__(queue_size)
        self.path = Path(path)
        if fps is not None and not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"--fps must be a positive number (got {fps})")
        # decoder_threads: 0 = the decoder's own choice (a thread a core); 1 leaves the cores to a
        # CPU detector, whose parallel sections stall when one of their threads loses its core.
        params = [cv2.CAP_PROP_N_THREADS, int(decoder_threads)] if decoder_threads > 0 else []
        self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_ANY, params)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"{self.path}: cannot be opened as a video (unsupported or corrupt)")
        ok, first = self._cap.read()
        if not ok or first is None:
            self._cap.release()
            raise SourceError(f"{self.path}: no decodable frame (empty, zero-frame or corrupt video)")
        self._first = first
        self.height, self.width = first.shape[:2]
        native = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not (native > 0 and math.isfinite(native)):
            log.warning("%s: the container states no frame rate; timestamps assume %g fps", self.path, FALLBACK_FPS)
            native = FALLBACK_FPS
        self.native_fps = native
        self.total_frames = max(int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 1)
        # Sampling at `fps`: keep a frame when its timestamp enters a new 1/fps slot.
        self.sample_fps = fps if fps is not None and fps < native else None
        if self.sample_fps is None:
            self.expected_frames = self.total_frames
        else:
            self.expected_frames = max(1, math.ceil(self.total_frames * self.sample_fps / native))
        self.unreadable: list[Path] = []

    def _keep(self, index: int, last_slot: list[int]) -> bool:
        if self.sample_fps is None:
            return True
        slot = math.floor(index / self.native_fps * self.sample_fps + 1e-6)
        if slot == last_slot[0]:
            return False
        last_slot[0] = slot
        return True

    def _produce(self) -> Iterator[Frame]:
        last_slot = [0]  # frame 0 (already decoded) is always kept and owns slot 0
        cap, index = self._cap, 0
        bgr = self._first
        self._first = None
        while not self._stop.is_set():
            if bgr is not None:
                yield Frame(index, index / self.native_fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.path)
            index += 1
            if self._keep(index, last_slot):
                ok, bgr = cap.read()
                if not ok:
                    break
            else:
                if not cap.grab():
                    break
                bgr = None
        if index < self.total_frames * 0.9:
            log.warning("%s: decoding stopped at frame %d of %d stated in its header", self.path, index, self.total_frames)

    def _release(self) -> None:
        self._cap.release()


class ImageSequenceReader(_BackgroundReader):
    """The image files of one `images` source, in order; see the module docstring."""

    def __init__(self, images: tuple[Path, ...] | list[Path], queue_size: int = 16, name: str = "") -> None:
        super().__init__(queue_size)
        if not images:
            raise SourceError(f"{name or 'image source'}: no image files")
        self.images = list(images)
        self.path = self.images[0].parent if len(self.images) > 1 else self.images[0]
        self.native_fps = None
        self.sample_fps = None
        self.unreadable: list[Path] = []
        # Decode up to the first readable image now: a source with none fails here, not later.
        self._first_index, self._first = self._first_readable()
        self.height, self.width = self._first.shape[:2]
        self.total_frames = self.expected_frames = len(self.images) - len(self.unreadable)

    def _decode(self, path: Path) -> np.ndarray | None:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            log.warning("%s: cannot be decoded as an image (corrupt or truncated); skipped", path)
            self.unreadable.append(path)
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _first_readable(self) -> tuple[int, np.ndarray]:
        for i, path in enumerate(self.images):
            rgb = self._decode(path)
            if rgb is not None:
                return i, rgb
        raise SourceError(f"{self.path}: none of its {len(self.images)} image file(s) can be decoded")

    def _produce(self) -> Iterator[Frame]:
        first, self._first = self._first, None
        yield Frame(self._first_index, None, first, self.images[self._first_index])
        for i in range(self._first_index + 1, len(self.images)):
            if self._stop.is_set():
                return
            rgb = self._decode(self.images[i])
            if rgb is not None:
                yield Frame(i, None, rgb, self.images[i])


FrameReader = VideoReader | ImageSequenceReader


def open_source(source: Source, fps: float | None = None, queue_size: int = 16, decoder_threads: int = 0) -> FrameReader:
    """A started-on-iteration background reader for `source` (raises SourceError if unreadable).
    decoder_threads: see VideoReader (image files are decoded by one thread anyway)."""
    if source.kind == "video":
        return VideoReader(source.path, fps=fps, queue_size=queue_size, decoder_threads=decoder_threads)
    return ImageSequenceReader(source.images, queue_size=queue_size, name=source.name)

