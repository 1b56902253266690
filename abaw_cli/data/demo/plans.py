"""Label timelines: what each demo frame shows, decided before anything is drawn.

A "video" is a run of expression segments (drawn from a shuffled deck so that every class
turns up); AU intensities, valence/arousal and head pose move smoothly from one segment to
the next. Plans are small arrays made in the main process, so rendering workers only draw and
the labels do not depend on how many workers there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from abaw_cli.data.demo.expressions import HIDDEN_AUS, AUState, au_labels, sample_expression, sample_va
from abaw_cli.data.demo.face_render import Pose
from abaw_cli.labels import AUS, EXPRESSIONS, MISSING_AU, MISSING_EXPRESSION, MISSING_VA

# How often each class is dealt per deck (roughly s-Aff-Wild2's order: Other, Neutral and
# Happiness common; Fear and Disgust rare), softened so small sets still learn every class.
DECK_WEIGHTS: dict[str, int] = {
    "Neutral": 3, "Anger": 1, "Disgust": 1, "Fear": 1, "Happiness": 2, "Sadness": 2, "Surprise": 1, "Other": 3,
}


def smooth_noise(rng: np.random.Generator, n: int, every: int, std: float) -> np.ndarray:
    """A slow random curve: normal knots every `every` frames, linearly interpolated."""
    k = n // every + 2
    knots = rng.normal(0.0, std, k)
    return np.interp(np.arange(n), np.arange(k) * every, knots).astype(np.float32)


class Deck:
    """Endless shuffled decks of expression names."""

    def __init__(self, rng: np.random.Generator, weights: dict[str, int] = DECK_WEIGHTS):
        self.rng = rng
        self.cards = [name for name, w in weights.items() for _ in range(w)]
        self.queue: list[str] = []

    def draw(self) -> str:
        if not self.queue:
            self.queue = [self.cards[i] for i in self.rng.permutation(len(self.cards))]
        return self.queue.pop()


@dataclass
class Timeline:
    """Per-frame truth of one clip: n frames."""

    aus: np.ndarray  # (n, 12) intensities
    hidden: np.ndarray  # (n, len(HIDDEN_AUS)) intensities
    va: np.ndarray  # (n, 2)
    expression: np.ndarray  # (n,) int64
    pose: np.ndarray  # (n, 5): yaw, pitch, roll, gaze_x, gaze_y

    def __len__(self) -> int:
        return len(self.expression)

    def au_state(self, i: int) -> AUState:
        return AUState(self.aus[i].copy(), {a: float(self.hidden[i, j]) for j, a in enumerate(HIDDEN_AUS)})

    def pose_at(self, i: int) -> Pose:
        return Pose(*(float(v) for v in self.pose[i]))

    def au_labels(self) -> np.ndarray:
        return au_labels(self.aus)


def make_timeline(rng: np.random.Generator, deck: Deck, n: int, seg_len: tuple[int, int], ramp: int,
                  yaw: float = 25, pitch: float = 12, roll: float = 5, start_neutral: bool = True) -> Timeline:
    """Segments of `seg_len` frames, each ramping in over `ramp` frames from the previous one.

    start_neutral: the first segment ramps in from a neutral face (a video that starts at rest);
    False: the clip opens inside its first expression, as a clip cut from a longer video does
    (short clips would otherwise open with a one- or two-frame "Neutral" run of a face that is
    halfway into its first expression)."""
    aus = np.zeros((n, len(AUS)), np.float32)
    hidden = np.zeros((n, len(HIDDEN_AUS)), np.float32)
    va = np.zeros((n, 2), np.float32)
    expr = np.zeros(n, np.int64)
    prev_state, prev_va, prev_e = AUState.neutral(), np.array([0.0, 0.0]), 0
    start = 0
    while start < n:
        length = int(rng.integers(seg_len[0], seg_len[1] + 1))
        name = deck.draw()
        state = sample_expression(rng, name)
        target_va = np.array(sample_va(rng, name, state))
        e = EXPRESSIONS.index(name)
        r = max(1, min(ramp, length // 2)) if start > 0 or start_neutral else 1
        for k in range(min(length, n - start)):
            w = min(1.0, (k + 1) / r)
            st = prev_state.blend(state, w)
            i = start + k
            aus[i] = st.intensity
            hidden[i] = [st.hidden.get(a, 0.0) for a in HIDDEN_AUS]
            va[i] = (1 - w) * prev_va + w * target_va
            expr[i] = e if w >= 0.7 else prev_e  # the label switches once the face has mostly changed
        prev_state, prev_va, prev_e = state, target_va, e
        start += length
    # Muscles never hold still: a slow wobble of every intensity, and of valence/arousal.
    wobble = 1.0 + np.stack([smooth_noise(rng, n, 6, 0.08) for _ in range(len(AUS))], 1)
    aus = np.clip(aus * wobble, 0, 1).astype(np.float32)
    va = va + np.stack([smooth_noise(rng, n, 8, 0.03), smooth_noise(rng, n, 8, 0.03)], 1)
    va = np.round(np.clip(va, -1, 1), 3).astype(np.float32)
    base = rng.uniform([-yaw * 0.6, -pitch * 0.5, -roll], [yaw * 0.6, pitch * 0.5, roll])
    pose = np.stack([
        np.clip(base[0] + smooth_noise(rng, n, 12, yaw * 0.35), -yaw, yaw),
        np.clip(base[1] + smooth_noise(rng, n, 12, pitch * 0.35), -pitch, pitch),
        np.clip(base[2] + smooth_noise(rng, n, 15, roll * 0.3), -roll, roll),
        np.clip(smooth_noise(rng, n, 5, 0.35), -0.7, 0.7),
        np.clip(smooth_noise(rng, n, 7, 0.2), -0.4, 0.4),
    ], 1).astype(np.float32)
    return Timeline(aus, hidden, va, expr, pose)


def missing_spans(rng: np.random.Generator, lengths: list[int], rate: float) -> list[np.ndarray]:
    """Per clip, a boolean mask of frames whose label is missing: whole clips or contiguous runs
    (as annotation gaps are in Aff-Wild2), sized so the overall rate is `rate` exactly."""
    total = sum(lengths)
    want = int(round(rate * total))
    masks = [np.zeros(n, bool) for n in lengths]
    if want == 0:
        return masks
    whole = rng.random(len(lengths)) < rate * 0.5
    frac = np.where(whole, 1.0, rng.uniform(0, 2 * rate * 0.5 / max(1e-6, 1 - rate * 0.5), len(lengths)))
    want_len = np.array(lengths) * frac
    run = np.zeros(len(lengths), int)
    for _ in range(20):  # rescale to the exact total; clips cap at their own length
        scale = want / max(want_len.sum(), 1e-6)
        run = np.minimum(np.array(lengths), np.round(want_len * scale).astype(int))
        if run.sum() == want or scale == 1:
            break
        want_len = np.where(run >= np.array(lengths), np.array(lengths), want_len * scale)
    # Settle the last few frames by rounding on the clips with room to spare.
    diff = want - int(run.sum())
    order = list(rng.permutation(len(lengths)))
    while diff != 0:
        progressed = False
        for i in order:
            if diff > 0 and run[i] < lengths[i]:
                run[i] += 1
                diff -= 1
                progressed = True
            elif diff < 0 and run[i] > 0:
                run[i] -= 1
                diff += 1
                progressed = True
            if diff == 0:
                break
        if not progressed:
            break
    for i, n in enumerate(lengths):
        if run[i] > 0:
            s = int(rng.integers(0, n - run[i] + 1))
            masks[i][s:s + run[i]] = True
    return masks


def apply_missing(timelines: list[Timeline], rng: np.random.Generator, rates: dict[str, float],
                  tries: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Annotation arrays (va, expression, aus) over all clips in order, with missing codes at
    `rates` (keys va, expression, au). Spans are redrawn until every expression class keeps a
    labelled frame (when the clips hold every class at all)."""
    lengths = [len(t) for t in timelines]
    expr_all = np.concatenate([t.expression for t in timelines])
    present = set(expr_all.tolist())
    for _ in range(tries):
        m_va = np.concatenate(missing_spans(rng, lengths, rates.get("va", 0.0)))
        m_ex = np.concatenate(missing_spans(rng, lengths, rates.get("expression", 0.0)))
        m_au = np.concatenate(missing_spans(rng, lengths, rates.get("au", 0.0)))
        if set(expr_all[~m_ex].tolist()) == present:
            break
    va = np.concatenate([t.va for t in timelines]).copy()
    va[m_va] = MISSING_VA
    expr = expr_all.copy()
    expr[m_ex] = MISSING_EXPRESSION
    aus = np.concatenate([t.au_labels() for t in timelines]).copy()
    aus[m_au] = MISSING_AU
    return va, expr, aus
