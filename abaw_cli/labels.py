"""The label spaces of ABAW, in one place.

Every other module takes class names, orders and missing-value codes from here, so that a
checkpoint, a submission file and a metric always agree on what index 3 means.
"""

from __future__ import annotations

# ABAW4 MTL expression classes, in the order of the annotation files and of EMMA's logits.
EXPRESSIONS: tuple[str, ...] = (
    "Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other",
)
NUM_EXPRESSIONS = len(EXPRESSIONS)

# The 12 action units of ABAW4 MTL, in annotation-file column order.
AUS: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26",
)
NUM_AUS = len(AUS)
AU_NUMBERS: tuple[int, ...] = tuple(int(a[2:]) for a in AUS)

# FACS names, for plots and help texts.
AU_NAMES: dict[str, str] = {
    "AU1": "inner brow raiser", "AU2": "outer brow raiser", "AU4": "brow lowerer",
    "AU6": "cheek raiser", "AU7": "lid tightener", "AU10": "upper lip raiser",
    "AU12": "lip corner puller", "AU15": "lip corner depressor", "AU23": "lip tightener",
    "AU24": "lip pressor", "AU25": "lips part", "AU26": "jaw drop",
}

# ABAW4 LSD classes. Index = alphabetical folder order, as ImageFolder (and the paper's code) saw it.
LSD_CLASSES: tuple[str, ...] = ("ANGER", "DISGUST", "FEAR", "HAPPINESS", "SADNESS", "SURPRISE")
NUM_LSD_CLASSES = len(LSD_CLASSES)
# Folder spellings seen in LSD releases; all map to the canonical name.
LSD_FOLDER_ALIASES: dict[str, str] = {
    "ANGER": "ANGER", "ANGRER": "ANGER", "ANGERE": "ANGER", "ANGRY": "ANGER",
    "DISGUST": "DISGUST", "FEAR": "FEAR", "HAPPINESS": "HAPPINESS", "HAPPY": "HAPPINESS",
    "SADNESS": "SADNESS", "SAD": "SADNESS", "SURPRISE": "SURPRISE",
}


def expression_index(name: str) -> int:
    """MTL expression index of an expression or LSD class name, in any case ("Happiness",
    "HAPPINESS"): what a prediction table's expression column holds for either kind of model."""
    key = name.strip().capitalize()
    if key not in EXPRESSIONS:
        raise ValueError(f"unknown expression {name!r}; expected one of {', '.join(EXPRESSIONS)}")
    return EXPRESSIONS.index(key)


# The LSD classes as MTL expression indices (LSD has no Neutral and no Other).
LSD_TO_EXPRESSION: dict[int, int] = {i: expression_index(name) for i, name in enumerate(LSD_CLASSES)}

# Missing-value codes of the annotation files.
MISSING_VA = -5.0
MISSING_EXPRESSION = -1
MISSING_AU = -1

# Exact headers of the ABAW files.
MTL_ANNOTATION_HEADER: tuple[str, ...] = ("image", "valence", "arousal", "expression", *AUS)
MTL_SUBMISSION_HEADER: tuple[str, ...] = ("image", "valence", "arousal", "expression", "aus")
LSD_SUBMISSION_HEADER: tuple[str, ...] = ("image", "expression")


def lsd_class_index(folder_name: str) -> int:
    """Index of an LSD class folder, accepting the spelling aliases of the releases."""
    canonical = LSD_FOLDER_ALIASES.get(folder_name.strip().upper())
    if canonical is None:
        raise ValueError(
            f"unknown LSD class folder {folder_name!r}; expected one of "
            f"{', '.join(sorted(LSD_FOLDER_ALIASES))}"
        )
    return LSD_CLASSES.index(canonical)
