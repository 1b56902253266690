"""Temporal smoothing of per-frame predictions, streaming with a bounded look-ahead.

A centred moving average over `window` frames: frame t gets the mean of its track's prediction
vectors in frames t-h .. t+h (h = window // 2; frames where the track is absent do not count).
Centring avoids the lag an exponential average would add, at the price of holding h frames back:
`push` returns frames only once their look-ahead has arrived, and `flush` releases the tail with a
shorter window. Memory is bounded by 2h+1 frames, whatever the video's length.

Probabilities are averaged, not logits: the mean of probability vectors is still a probability
vector, and the expression label and AU decisions are re-derived from the smoothed values.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from abaw_cli.predict.records import FramePrediction


def window_frames(seconds: float, fps: float) -> int:
    """The odd number of frames closest to `seconds` at `fps` (1 = no smoothing)."""
    if seconds < 0:
        raise ValueError(f"--smooth must be >= 0 seconds (got {seconds})")
    n = int(round(seconds * fps))
    if n <= 1:
        return 1
    return n if n % 2 == 1 else n + 1


class CentredSmoother:
    """Streaming centred moving average of each track's `values` over `window` frames."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"smoothing window must be at least 1 frame (got {window})")
        self.half = window // 2
        self._buffer: deque[FramePrediction] = deque()
        self._centre = 0  # index in _buffer of the next frame to release

    @property
    def delay(self) -> int:
        """How many frames `push` holds back."""
        return self.half

    def push(self, frame: FramePrediction) -> list[FramePrediction]:
        self._buffer.append(frame)
        out = []
        while len(self._buffer) - 1 - self._centre >= self.half:
            out.append(self._release())
        return out

    def flush(self) -> list[FramePrediction]:
        out = []
        while self._centre < len(self._buffer):
            out.append(self._release())
        self._buffer.clear()
        self._centre = 0
        return out

    def _release(self) -> FramePrediction:
        centre = self._buffer[self._centre]
        if self.half and centre.faces:
            lo = max(0, self._centre - self.half)
            hi = min(len(self._buffer), self._centre + self.half + 1)
            neighbours = [self._buffer[i] for i in range(lo, hi)]
            faces = []
            for face in centre.faces:
                same_track = [f.values for fr in neighbours for f in fr.faces if f.track == face.track]
                faces.append(face.with_values(np.mean(same_track, axis=0).astype(np.float32)))
            centre = centre.with_faces(tuple(faces))
        self._centre += 1
        # Keep `half` released frames as the back half of the next windows, no more.
        while self._centre > self.half:
            self._buffer.popleft()
            self._centre -= 1
        return centre
