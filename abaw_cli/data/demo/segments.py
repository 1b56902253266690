"""Distinct expression instances of an MTL split: labelled expression segments per class.

A segment is a maximal run of consecutive frames of one clip (the `<video>/` part of the image
path) that carry the same non-missing expression label. Frames of one segment show one face
making one expression, so a split's segment count, not its frame count, says how many distinct
expression instances a model can learn from (or be scored on).
"""

from __future__ import annotations

import numpy as np

from abaw_cli.data.formats import MTLAnnotations
from abaw_cli.labels import EXPRESSIONS, MISSING_EXPRESSION


def expression_segments(images: list[str], expression: np.ndarray) -> list[tuple[str, int, int, int]]:
    """(clip, expression, first row, length) of every labelled expression segment, in file order."""
    expression = np.asarray(expression)
    out: list[tuple[str, int, int, int]] = []
    start = 0
    clips = [name.split("/", 1)[0] for name in images]
    for i in range(1, len(images) + 1):
        if i < len(images) and clips[i] == clips[start] and expression[i] == expression[start]:
            continue
        if expression[start] != MISSING_EXPRESSION:
            out.append((clips[start], int(expression[start]), start, i - start))
        start = i
    return out


def segment_counts(ann: MTLAnnotations) -> dict[str, int]:
    """Labelled expression segments per class (labels.EXPRESSIONS order, every class present)."""
    counts = np.bincount([e for _, e, _, _ in expression_segments(ann.images, ann.expression)], minlength=len(EXPRESSIONS))
    return {name: int(c) for name, c in zip(EXPRESSIONS, counts)}
