"""The timeline plot: valence, arousal and class probabilities over a video's time.

The recorder keeps ten-odd float32 scalars per face and frame (never images): about 150 bytes a
frame, some 15 MB for an hour of 25 fps video. One track is plotted: the one seen in the most frames (the main person).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from abaw_cli.predict.heads import OutputSpace
from abaw_cli.predict.records import FramePrediction


class TimelineRecorder:
    def __init__(self, space: OutputSpace) -> None:
        self.space = space
        self._times: list[float] = []
        self._values: dict[int, dict[int, np.ndarray]] = {}  # track -> {frame position -> values}
        self._track_counts: Counter[int] = Counter()

    def add(self, prediction: FramePrediction) -> None:
        pos = len(self._times)
        # Images have no clock: their position in the list stands in for the time.
        self._times.append(prediction.time_s if prediction.time_s is not None else float(prediction.frame))
        for face in prediction.faces:
            # Per-frame scalars only: the VA pair and the class probabilities.
            keep = np.concatenate([face.values[:2] if self.space.has_va else np.zeros(0, np.float32), face.values[self.space.class_slice]])
            self._values.setdefault(face.track, {})[pos] = keep.astype(np.float32)
            self._track_counts[face.track] += 1

    @property
    def main_track(self) -> int | None:
        return self._track_counts.most_common(1)[0][0] if self._track_counts else None

    def series(self, track: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(times (T,), values (T, 2+K or K)) for one track, NaN where it is absent."""
        track = self.main_track if track is None else track
        width = (2 if self.space.has_va else 0) + len(self.space.classes)
        values = np.full((len(self._times), width), np.nan, np.float32)
        for pos, v in self._values.get(track, {}).items():
            values[pos] = v
        return np.asarray(self._times, np.float64), values

    def save(self, path: str | os.PathLike, title: str = "") -> Path:
        """Write the figure (atomically; the format follows the suffix, PNG by default)."""
        from abaw_cli.plots import plt, save_figure  # matplotlib only when a plot is asked for

        path = Path(path)
        times, values = self.series()
        n_panels = 2 if self.space.has_va else 1
        fig, axes = plt.subplots(n_panels, 1, figsize=(11, 3.2 * n_panels), sharex=True, squeeze=False)
        axes = axes[:, 0]
        if self.space.has_va:
            ax = axes[0]
            ax.plot(times, values[:, 0], label="valence", color="tab:blue", lw=1.2)
            ax.plot(times, values[:, 1], label="arousal", color="tab:red", lw=1.2)
            ax.axhline(0, color="grey", lw=0.6)
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel("VA")
            ax.legend(loc="upper right", fontsize=8)
            probs = values[:, 2:]
        else:
            probs = values
        ax = axes[-1]
        cmap = plt.get_cmap("tab10")
        filled = np.nan_to_num(probs, nan=0.0)
        ax.stackplot(times, filled.T, labels=self.space.classes, colors=[cmap(i % 10) for i in range(probs.shape[1])], alpha=0.85)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.set_xlabel("time (s)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        track = self.main_track
        suffix = f" (track {track})" if track is not None else " (no face found)"
        fig.suptitle((title or "predictions") + suffix)
        fig.tight_layout()
        return save_figure(fig, path, dpi=110, tight=False)
