"""Scoring predictions against ABAW truth (P_MTL and its parts, or LSD macro-F1): the library
behind `abaw score`.

PRED is one of
- an ABAW MTL submission (header `image,valence,arousal,expression,aus`),
- an ABAW LSD submission (header `image,expression`),
- a prediction table of `abaw predict` (columns abaw_cli.data.formats.prediction_columns). Only
  rows with face = 1 count. A row's image key is its `image` column when the table has one,
  otherwise `<source>/<frame:05d>.jpg` (the s-Aff-Wild2 cropped_aligned naming, so `frame` must
  be the number in the image file name). When several faces share a key, the one with the highest
  det_score is scored.
TRUTH is an MTL annotation file, or for LSD a class-folder tree (keys `<CLASS>/<file>` relative to
the tree, e.g. `ANGER/0001.jpg`) or a labelled list `image,expression`.

Every truth image must have a prediction, unless --allow-partial (then the covered ones are
scored and the coverage reported). Predictions for images not in TRUTH are ignored and counted.
Outputs (`write_outputs`): a JSON file (default `<PRED stem>.scores.json` beside PRED) and a
confusion-matrix PNG beside the JSON (`<JSON stem>.confusion.png`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from abaw_cli import labels
from abaw_cli.atomic import atomic_write_text
from abaw_cli.data.formats import (
    PREDICTION_BASE_COLUMNS, FormatError, MTLAnnotations, prediction_image_key, prediction_table_task,
    read_lsd_labelled_list, read_lsd_submission, read_mtl_annotations, read_mtl_submission, read_prediction_table,
    scan_lsd_folders,
)
from abaw_cli.metrics import expression_confusion, lsd_confusion, lsd_f1, mtl_scores, tune_au_thresholds
from abaw_cli.plots import save_confusion_matrix

log = logging.getLogger(__name__)
_SHOW_FIRST = 5


class ScoreError(ValueError):
    """Predictions and truth that cannot be scored together."""


@dataclass
class Predictions:
    """Predictions keyed by image. MTL: va (N,2), classes = expression 0..7, aus (N,12) 0/1 and,
    from a prediction table, au_probs (N,12). LSD: classes = 0..5."""

    path: Path
    kind: str  # submission | prediction_table
    task: str  # mtl | lsd
    keys: list[str]
    classes: np.ndarray
    va: np.ndarray | None = None
    aus: np.ndarray | None = None
    au_probs: np.ndarray | None = None


@dataclass
class ScoreResult:
    task: str
    prediction: Path
    prediction_kind: str
    truth: Path
    scores: dict[str, Any]
    coverage: dict[str, Any]
    confusion: np.ndarray
    class_names: list[str]
    missing: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "prediction": str(self.prediction),
            "prediction_kind": self.prediction_kind,
            "truth": str(self.truth),
            "scores": self.scores,
            "coverage": self.coverage,
            "confusion_matrix": {
                "rows": "truth", "columns": "prediction",
                "classes": self.class_names, "counts": self.confusion.tolist(),
            },
        }


def _normalise_key(key: str) -> str:
    key = key.strip().replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def _first_line(path: Path) -> str:
    if not path.is_file():
        raise FormatError(path, None, "file not found" if not path.exists() else "not a file")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.readline().strip()
    except UnicodeDecodeError:
        raise FormatError(path, 1, "not UTF-8 text") from None


def _from_prediction_table(path: Path) -> Predictions:
    table = read_prediction_table(path)
    task = prediction_table_task(table)
    if task is None:
        raise FormatError(path, 1, "prediction table has neither the MTL nor the LSD model columns")
    face = table["face"]
    rows = np.flatnonzero(face == 1)
    if rows.size == 0:
        raise FormatError(path, None, "no row with face = 1: nothing to score")
    names = labels.EXPRESSIONS if task == "mtl" else labels.LSD_CLASSES
    lookup = {n.upper(): i for i, n in enumerate(names)}
    if task == "lsd":
        lookup.update({alias: labels.lsd_class_index(alias) for alias in labels.LSD_FOLDER_ALIASES})
    needed = ["frame"] + (["valence", "arousal", *labels.AUS] if task == "mtl" else [])
    for column in needed:
        bad = rows[~np.isfinite(table[column][rows])]
        if bad.size:
            raise FormatError(path, int(bad[0]) + 2, f"face row without a {column} value")
    has_image = "image" in table
    score_column = np.nan_to_num(table["det_score"], nan=-np.inf)
    chosen: dict[str, int] = {}
    for r in rows.tolist():
        image = table["image"][r].strip() if has_image else ""
        key = _normalise_key(image) if image else prediction_image_key(table["source"][r], table["frame"][r])
        best = chosen.get(key)
        if best is None or score_column[r] > score_column[best]:
            chosen[key] = r
    if len(chosen) < rows.size:
        log.info("%s: %d face rows share an image key; the highest det_score per key is scored",
                 path, rows.size - len(chosen))
    keys = list(chosen)
    picked = np.fromiter(chosen.values(), dtype=np.int64, count=len(chosen))
    classes = np.empty(len(picked), dtype=np.int64)
    for i, r in enumerate(picked.tolist()):
        name = table["expression"][r].strip().upper()
        if name not in lookup:
            raise FormatError(path, r + 2, f"expression {table['expression'][r]!r} is not one of {', '.join(names)}")
        classes[i] = lookup[name]
    if task == "lsd":
        return Predictions(path, "prediction_table", task, keys, classes)
    va = np.stack([table["valence"][picked], table["arousal"][picked]], axis=1)
    aus = np.stack([table[a][picked] for a in labels.AUS], axis=1)
    bad = np.flatnonzero(((aus != 0) & (aus != 1)).any(axis=1))
    if bad.size:
        raise FormatError(path, int(picked[bad[0]]) + 2, "AU columns must hold 0 or 1")
    probs = np.stack([table[f"p_{a}"][picked] for a in labels.AUS], axis=1)
    return Predictions(path, "prediction_table", task, keys, classes, va=va, aus=aus.astype(np.int64),
                       au_probs=probs if np.isfinite(probs).all() else None)


def load_predictions(path: str | Path) -> Predictions:
    """Read PRED, recognising its kind from the header line."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return _from_prediction_table(path)  # refused there with a clear message
    header = tuple(f.strip() for f in _first_line(path).split(","))
    if header == labels.MTL_SUBMISSION_HEADER:
        sub = read_mtl_submission(path)
        return Predictions(path, "submission", "mtl", [_normalise_key(k) for k in sub.images],
                           sub.expression, va=sub.valence_arousal.astype(np.float64), aus=sub.aus)
    if header == labels.LSD_SUBMISSION_HEADER:
        images, classes = read_lsd_submission(path)
        return Predictions(path, "submission", "lsd", [_normalise_key(k) for k in images], classes)
    if set(PREDICTION_BASE_COLUMNS) <= set(header):
        return _from_prediction_table(path)
    raise FormatError(
        path, 1,
        "not a submission or prediction table: header must be "
        f"'{','.join(labels.MTL_SUBMISSION_HEADER)}' (MTL), '{','.join(labels.LSD_SUBMISSION_HEADER)}' "
        f"(LSD) or start with '{','.join(PREDICTION_BASE_COLUMNS)}'",
    )


def load_truth(path: str | Path, task: str) -> tuple[list[str], Any]:
    """TRUTH as (keys, labels): MTLAnnotations for mtl, class indices for lsd."""
    path = Path(path)
    if task == "mtl":
        if path.is_dir():
            raise FormatError(path, None, "MTL truth must be an annotation file, not a folder")
        ann = read_mtl_annotations(path)
        return [_normalise_key(k) for k in ann.images], ann
    samples = scan_lsd_folders(path) if path.is_dir() else read_lsd_labelled_list(path)
    return [_normalise_key(k) for k in samples.relative_keys()], samples.labels


def _show(items: list[str]) -> str:
    return ", ".join(items[:_SHOW_FIRST]) + (", ..." if len(items) > _SHOW_FIRST else "")


def score_files(
    pred_path: str | Path, truth_path: str | Path, task: str | None = None, allow_partial: bool = False
) -> ScoreResult:
    """Score PRED against TRUTH; raises FormatError / ScoreError / MetricError on bad input."""
    pred = load_predictions(pred_path)
    if task is not None and task != pred.task:
        raise ScoreError(f"{pred.path} holds {pred.task.upper()} predictions but --task {task} was given")
    truth_keys, truth = load_truth(truth_path, pred.task)
    index = {k: i for i, k in enumerate(pred.keys)}
    matched = [index.get(k, -1) for k in truth_keys]
    missing = [k for k, m in zip(truth_keys, matched) if m < 0]
    covered = np.flatnonzero(np.asarray(matched) >= 0)
    if covered.size == 0:
        raise ScoreError(
            f"none of the {len(truth_keys)} images of {truth_path} is in {pred.path} "
            f"(truth names like {_show(truth_keys[:3])}; predictions like {_show(pred.keys[:3])})"
        )
    if missing and not allow_partial:
        raise ScoreError(
            f"{len(missing)} of {len(truth_keys)} images of {truth_path} have no prediction in "
            f"{pred.path}: {_show(missing)} (--allow-partial scores the covered ones)"
        )
    rows = np.asarray(matched)[covered]
    coverage = {
        "truth_images": len(truth_keys),
        "scored_images": int(covered.size),
        "missing_images": len(missing),
        "extra_predictions": len(pred.keys) - int(covered.size),
        "coverage": covered.size / len(truth_keys),
        "partial": bool(missing),
    }
    if pred.task == "mtl":
        sub_truth: MTLAnnotations = truth.subset(covered)
        scores = mtl_scores(pred.va[rows], pred.classes[rows], pred.aus[rows], sub_truth)
        if pred.au_probs is not None:
            # Beside the predictions' own AU decisions: thresholds tuned on this truth (optimistic).
            probs = pred.au_probs[rows]
            tuned = mtl_scores(pred.va[rows], pred.classes[rows], (probs >= tune_au_thresholds(probs, sub_truth.aus)).astype(np.int64), sub_truth)
            scores["au_f1_tuned_on_truth"], scores["p_mtl_tuned_on_truth"] = tuned["au_f1"], tuned["p_mtl"]
        confusion = expression_confusion(pred.classes[rows], sub_truth.expression)
        class_names = list(labels.EXPRESSIONS)
    else:
        true_classes = truth[covered]
        macro, per_class = lsd_f1(pred.classes[rows], true_classes)
        scores = {
            "f1": macro,
            "f1_per_class": {n: float(v) for n, v in zip(labels.LSD_CLASSES, per_class)},
            "accuracy": float((pred.classes[rows] == true_classes).mean()),
            "n_frames": int(covered.size),
            "warnings": [],
        }
        confusion = lsd_confusion(pred.classes[rows], true_classes)
        class_names = list(labels.LSD_CLASSES)
    if missing:
        scores["warnings"].append(f"partial: {len(missing)} truth images without prediction were not scored")
    return ScoreResult(pred.task, pred.path, pred.kind, Path(truth_path), scores, coverage,
                       confusion, class_names, missing)


def default_json_path(pred_path: Path) -> Path:
    return pred_path.with_name(f"{pred_path.stem}.scores.json")


def confusion_png_path(json_path: Path) -> Path:
    stem = json_path.name[: -len(".json")] if json_path.name.endswith(".json") else json_path.name
    return json_path.with_name(f"{stem}.confusion.png")


def write_outputs(result: ScoreResult, json_path: Path) -> tuple[Path, Path]:
    """JSON with every number, and the confusion-matrix PNG beside it."""
    png = confusion_png_path(json_path)
    title = "Expression confusion (8 classes)" if result.task == "mtl" else "LSD confusion (6 classes)"
    save_confusion_matrix(result.confusion, result.class_names, png, title)
    payload = result.to_json() | {"confusion_png": png.name}
    atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
    return json_path, png


