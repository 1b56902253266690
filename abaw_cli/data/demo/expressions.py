"""Expressions as action-unit prototypes, and valence/arousal on the circumplex.

An expression is drawn as a vector of AU intensities in [0, 1] (order: labels.AUS) plus a few
"hidden" AUs that are rendered but not labelled (AU5 upper lid raiser, AU9 nose wrinkler,
AU20 lip stretcher), as real faces also move muscles the label set does not name.
An AU counts as present (label 1) when its intensity reaches AU_ON.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from abaw_cli.labels import AUS, EXPRESSIONS

AU_INDEX: dict[int, int] = {int(name[2:]): i for i, name in enumerate(AUS)}
HIDDEN_AUS: tuple[int, ...] = (5, 9, 20)
AU_ON = 0.3  # FACS "B" level and above counts as present

# Core AUs every sample of the class shows, optional AUs with their probability, hidden AUs.
PROTOTYPES: dict[str, dict] = {
    "Neutral": {"core": (), "optional": {}, "hidden": {}},
    "Anger": {"core": (4, 7), "optional": {23: 0.6, 24: 0.6, 10: 0.15}, "one_of": (23, 24), "hidden": {5: 0.4}},
    "Disgust": {"core": (10, 15), "optional": {4: 0.5, 25: 0.3}, "hidden": {9: 0.8}},
    "Fear": {"core": (1, 2, 4, 25), "optional": {7: 0.7, 26: 0.3}, "hidden": {5: 0.9, 20: 0.8}},
    "Happiness": {"core": (6, 12), "optional": {25: 0.75, 26: 0.2, 7: 0.2}, "hidden": {}},
    "Sadness": {"core": (1, 4, 15), "optional": {7: 0.15}, "hidden": {}},
    "Surprise": {"core": (1, 2, 25, 26), "optional": {}, "hidden": {5: 0.9}},
}

# AU sets labelled "Other": movements that are none of the six prototypes.
OTHER_SETS: tuple[tuple[int, ...], ...] = (
    (25,), (25, 26), (7,), (10,), (1, 2), (24,), (23,), (6, 7), (10, 25),
    (1,), (7, 25), (2,), (4, 25), (12, 24), (15, 23), (6,), (4, 10),
)

# Circumplex anchors (valence, arousal) of the full-intensity expression.
VA_ANCHORS: dict[str, tuple[float, float]] = {
    "Neutral": (0.0, -0.05),
    "Anger": (-0.6, 0.7),
    "Disgust": (-0.65, 0.35),
    "Fear": (-0.55, 0.8),
    "Happiness": (0.8, 0.45),
    "Sadness": (-0.65, -0.35),
    "Surprise": (0.25, 0.85),
}
# For "Other", valence/arousal follow the AUs themselves (signs as in FACS-based affect studies).
_OTHER_VALENCE = {12: 0.5, 6: 0.2, 4: -0.35, 15: -0.35, 10: -0.3, 23: -0.2, 24: -0.2, 7: -0.1}
_OTHER_AROUSAL = {1: 0.2, 2: 0.25, 25: 0.2, 26: 0.35, 7: 0.15, 4: 0.15, 23: 0.1}


@dataclass
class AUState:
    """What the renderer needs to move the face: labelled and hidden AU intensities in [0, 1]."""

    intensity: np.ndarray  # (12,) in labels.AUS order
    hidden: dict[int, float] = field(default_factory=dict)

    def au(self, number: int) -> float:
        if number in AU_INDEX:
            return float(self.intensity[AU_INDEX[number]])
        return float(self.hidden.get(number, 0.0))

    @staticmethod
    def neutral() -> "AUState":
        return AUState(np.zeros(len(AUS), np.float32), {})

    def blend(self, other: "AUState", w: float) -> "AUState":
        """(1-w) * self + w * other, for smooth onsets and offsets in videos."""
        keys = set(self.hidden) | set(other.hidden)
        return AUState(
            ((1 - w) * self.intensity + w * other.intensity).astype(np.float32),
            {k: (1 - w) * self.hidden.get(k, 0.0) + w * other.hidden.get(k, 0.0) for k in keys},
        )

    def scaled(self, s: float) -> "AUState":
        return AUState((self.intensity * s).astype(np.float32), {k: v * s for k, v in self.hidden.items()})


def au_labels(intensity: np.ndarray) -> np.ndarray:
    """Binary AU labels (int64, labels.AUS order) of intensities."""
    return (np.asarray(intensity) >= AU_ON).astype(np.int64)


def sample_expression(rng: np.random.Generator, expression: str, strength: float | None = None) -> AUState:
    """AU intensities of one sample of `expression` at overall `strength` (random when None)."""
    if expression not in EXPRESSIONS:
        raise ValueError(f"unknown expression {expression!r}; expected one of {EXPRESSIONS}")
    s = float(rng.uniform(0.45, 1.0)) if strength is None else float(strength)
    inten = np.zeros(len(AUS), np.float32)
    hidden: dict[int, float] = {}

    def put(au: int, level: float) -> None:
        level = float(np.clip(level, 0.0, 1.0))
        if au in AU_INDEX:
            inten[AU_INDEX[au]] = max(inten[AU_INDEX[au]], level)
        else:
            hidden[au] = max(hidden.get(au, 0.0), level)

    if expression == "Other":
        aus = OTHER_SETS[int(rng.integers(len(OTHER_SETS)))]
        for au in aus:
            put(au, s * rng.uniform(0.8, 1.15))
    elif expression != "Neutral":
        proto = PROTOTYPES[expression]
        for au in proto["core"]:
            put(au, s * rng.uniform(0.8, 1.15))
        for au, p in proto["optional"].items():
            if rng.random() < p:
                put(au, s * rng.uniform(0.6, 1.1))
        one_of = proto.get("one_of")
        if one_of and not any(inten[AU_INDEX[a]] >= AU_ON for a in one_of):
            put(one_of[int(rng.integers(len(one_of)))], s * rng.uniform(0.8, 1.1))
        for au, p in proto["hidden"].items():
            if rng.random() < p:
                put(au, s * rng.uniform(0.5, 1.0))
    # Noise: now and then a weak AU off the prototype, as real faces are never pure.
    if rng.random() < 0.35:
        put(int(list(AU_INDEX)[int(rng.integers(len(AU_INDEX)))]), rng.uniform(0.05, 0.4))
    # Keep "Other" off the prototypes even after the noise.
    if expression == "Other" and _matches_prototype(inten):
        inten[:] = np.minimum(inten, AU_ON - 0.05)
        for au in OTHER_SETS[0]:
            put(au, s)
    return AUState(inten, hidden)


def _matches_prototype(inten: np.ndarray) -> bool:
    on = {n for n, i in AU_INDEX.items() if inten[i] >= AU_ON}
    return any(proto["core"] and set(proto["core"]) <= on for proto in PROTOTYPES.values())


def sample_va(rng: np.random.Generator, expression: str, state: AUState) -> tuple[float, float]:
    """Valence and arousal of an expression sample: the circumplex anchor scaled by the sample's
    strength (mean intensity of its active AUs), plus noise; clipped to [-1, 1]."""
    active = state.intensity[state.intensity > 0.15]
    strength = float(active.mean()) if active.size else 0.0
    if expression == "Other":
        v = sum(w * state.au(a) for a, w in _OTHER_VALENCE.items())
        a = 0.1 + sum(w * state.au(au) for au, w in _OTHER_AROUSAL.items())
    elif expression == "Neutral":
        v, a = VA_ANCHORS["Neutral"]
    else:
        v0, a0 = VA_ANCHORS[expression]
        k = 0.35 + 0.75 * strength
        v, a = v0 * k, a0 * k
    v += rng.normal(0, 0.08)
    a += rng.normal(0, 0.08)
    return float(np.clip(v, -1, 1)), float(np.clip(a, -1, 1))
