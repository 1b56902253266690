"""ABAW metrics in plain numpy + scikit-learn (no torch): CCC, expression macro-F1, AU F1, P_MTL,
LSD macro-F1, confusion matrices and per-AU threshold tuning.

Conventions:
- Each term uses only the frames that carry its label (VA != -5, expression >= 0, all 12 AUs >= 0),
  and the same frames of the prediction.
- Degenerate input gives a defined number: CCC of constant predictions against constant truth is
  0.0; a class absent from both truth and prediction has F1 0.0 (sklearn zero_division=0).
- Input that cannot be scored at all (no frames, NaN/inf predictions, mismatched lengths) raises
  MetricError, except in `mtl_scores`, which turns a term with no labelled frames into a 0.0
  contribution plus a message in `scores["warnings"]` (and a logged warning).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

from abaw_cli import labels

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD_GRID = np.linspace(0.05, 0.95, 19)


class MetricError(ValueError):
    """Input a metric cannot score (empty, non-finite, mismatched shapes)."""


def _finite_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.isfinite(arr).all():
        raise MetricError(f"{name} contains NaN or infinite values")
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if len(a) != len(b):
        raise MetricError(f"{what}: prediction has {len(a)} rows, truth has {len(b)}")


def ccc(pred: Any, true: Any) -> float:
    """Concordance correlation coefficient 2 cov / (var_p + var_t + (mean_p - mean_t)^2).

    Population (1/N) moments. Returns exactly 0.0 when prediction or truth is constant (covariance
    0; this also covers both constant and equal, where the formula is 0/0). Raises MetricError on
    empty or non-finite input.
    """
    p = _finite_1d(pred, "CCC prediction")
    t = _finite_1d(true, "CCC truth")
    _same_length(p, t, "CCC")
    if len(p) == 0:
        raise MetricError("CCC of zero frames is undefined")
    if np.ptp(p) == 0.0 or np.ptp(t) == 0.0:
        # A constant side has covariance exactly 0; return it exactly (no 1e-33 rounding dust).
        return 0.0
    mp, mt = p.mean(), t.mean()
    cov = np.mean((p - mp) * (t - mt))
    denom = p.var() + t.var() + (mp - mt) ** 2
    return float(2.0 * cov / denom)


def _class_indices(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise MetricError(f"{name} must be whole class indices")
    return arr.astype(np.int64).reshape(-1)


def _macro_f1(pred: Any, true: Any, n_classes: int, what: str) -> tuple[float, np.ndarray]:
    p = _class_indices(pred, f"{what} prediction")
    t = _class_indices(true, f"{what} truth")
    _same_length(p, t, what)
    keep = t >= 0
    p, t = p[keep], t[keep]
    if len(t) == 0:
        raise MetricError(f"{what}: no frames carry a label")
    if (t >= n_classes).any():
        raise MetricError(f"{what} truth holds a class index >= {n_classes}")
    if ((p < 0) | (p >= n_classes)).any():
        raise MetricError(f"{what} prediction holds a class index outside 0..{n_classes - 1}")
    per_class = f1_score(t, p, labels=list(range(n_classes)), average=None, zero_division=0)
    return float(per_class.mean()), np.asarray(per_class, dtype=np.float64)


def expression_f1(pred_idx: Any, true_idx: Any) -> tuple[float, np.ndarray]:
    """Macro-F1 over the 8 expressions on frames with a label (truth >= 0) -> (macro, per_class (8,)).

    The mean always runs over all 8 classes (sklearn labels=range(8)): a class that is neither in
    the truth nor predicted counts as F1 0, so a subset lacking a class scores below 1 even when
    perfect. On the real validation set every class is present and this equals sklearn's macro."""
    return _macro_f1(pred_idx, true_idx, labels.NUM_EXPRESSIONS, "expression F1")


def lsd_f1(pred: Any, true: Any) -> tuple[float, np.ndarray]:
    """Macro-F1 over the 6 LSD classes -> (macro, per_class (6,)); like expression_f1, the mean
    runs over all 6 classes."""
    return _macro_f1(pred, true, labels.NUM_LSD_CLASSES, "LSD F1")


def _au_matrix(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != labels.NUM_AUS:
        raise MetricError(f"{name} must have shape (N, {labels.NUM_AUS}), got {arr.shape}")
    return arr


def au_f1(pred01: Any, true: Any) -> tuple[float, np.ndarray]:
    """Mean over the 12 AUs of each AU's binary F1, on rows whose 12 AUs are all labelled
    -> (mean, per_au (12,))."""
    p = _au_matrix(pred01, "AU prediction")
    t = _au_matrix(true, "AU truth")
    _same_length(p, t, "AU F1")
    keep = (t >= 0).all(axis=1)
    p, t = p[keep], t[keep].astype(np.int64)
    if len(t) == 0:
        raise MetricError("AU F1: no frames carry all 12 AU labels")
    if ((p != 0) & (p != 1)).any():
        raise MetricError("AU prediction must be 0/1 (apply thresholds first)")
    per_au = f1_score(t, p.astype(np.int64), average=None, zero_division=0)
    return float(per_au.mean()), np.asarray(per_au, dtype=np.float64)


def expression_confusion(pred_idx: Any, true_idx: Any) -> np.ndarray:
    """(8, 8) counts, rows = truth, columns = prediction, frames with an expression label only."""
    p = _class_indices(pred_idx, "expression prediction")
    t = _class_indices(true_idx, "expression truth")
    _same_length(p, t, "expression confusion")
    keep = t >= 0
    return confusion_matrix(t[keep], p[keep], labels=list(range(labels.NUM_EXPRESSIONS)))


def lsd_confusion(pred: Any, true: Any) -> np.ndarray:
    """(6, 6) counts, rows = truth, columns = prediction."""
    p = _class_indices(pred, "LSD prediction")
    t = _class_indices(true, "LSD truth")
    _same_length(p, t, "LSD confusion")
    return confusion_matrix(t, p, labels=list(range(labels.NUM_LSD_CLASSES)))


def mtl_scores(pred_va: Any, pred_expr: Any, pred_aus01: Any, truth: Any) -> dict[str, Any]:
    """All MTL numbers for predictions aligned row by row with `truth` (an MTLAnnotations).

    Returns a JSON-ready dict: ccc_valence, ccc_arousal, va = (ccc_valence + ccc_arousal) / 2,
    expression_f1, expression_f1_per_class {name: f1}, au_f1, au_f1_per_au {AU: f1},
    p_mtl = va + expression_f1 + au_f1, frame counts (n_frames, n_valence, n_arousal,
    n_expression, n_au, n_au_positive {AU: positives among the n_au frames}) and `warnings`
    (list of str). A term with no labelled frames contributes
    0.0 and adds a warning; it never becomes NaN.
    """
    n = len(truth)
    va = np.asarray(pred_va, dtype=np.float64).reshape(-1, 2)
    _same_length(va, truth.valence_arousal, "VA")
    warnings: list[str] = []

    def term(name: str, n_used: int, compute):
        if n_used == 0:
            message = f"{name}: no frame of the truth carries this label; counted as 0.0"
            warnings.append(message)
            log.warning(message)
            return None
        return compute()

    has_v, has_a = truth.has_valence, truth.has_arousal
    ccc_v = term("CCC valence", int(has_v.sum()), lambda: ccc(va[has_v, 0], truth.valence_arousal[has_v, 0]))
    ccc_a = term("CCC arousal", int(has_a.sum()), lambda: ccc(va[has_a, 1], truth.valence_arousal[has_a, 1]))
    has_e = truth.has_expression
    expr = term("expression F1", int(has_e.sum()), lambda: expression_f1(pred_expr, truth.expression))
    has_au = truth.has_aus
    aus = term("AU F1", int(has_au.sum()), lambda: au_f1(pred_aus01, truth.aus))

    ccc_v = 0.0 if ccc_v is None else ccc_v
    ccc_a = 0.0 if ccc_a is None else ccc_a
    expr_macro, expr_per = (0.0, np.zeros(labels.NUM_EXPRESSIONS)) if expr is None else expr
    au_mean, au_per = (0.0, np.zeros(labels.NUM_AUS)) if aus is None else aus
    va_mean = (ccc_v + ccc_a) / 2.0
    return {
        "p_mtl": float(va_mean + expr_macro + au_mean),
        "va": float(va_mean),
        "ccc_valence": float(ccc_v),
        "ccc_arousal": float(ccc_a),
        "expression_f1": float(expr_macro),
        "expression_f1_per_class": {k: float(v) for k, v in zip(labels.EXPRESSIONS, expr_per)},
        "au_f1": float(au_mean),
        "au_f1_per_au": {k: float(v) for k, v in zip(labels.AUS, au_per)},
        "n_frames": int(n),
        "n_valence": int(has_v.sum()),
        "n_arousal": int(has_a.sum()),
        "n_expression": int(has_e.sum()),
        "n_au": int(has_au.sum()),
        "n_au_positive": {k: int(v) for k, v in zip(labels.AUS, (truth.aus[has_au] == 1).sum(axis=0))},
        "warnings": warnings,
    }


def _binary_f1_columns(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-column binary F1 of boolean (N, K) arrays, 0 where a column has no positive at all
    (sklearn's zero_division=0). Counting by hand: the threshold search calls it per grid
    point, where sklearn's input checks would dominate; tests check it against f1_score."""
    tp = (pred & true).sum(axis=0)
    fp = (pred & ~true).sum(axis=0)
    fn = (~pred & true).sum(axis=0)
    denom = 2 * tp + fp + fn
    return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape, dtype=np.float64), where=denom > 0)


def tune_au_thresholds(
    probs: Any, true: Any, grid: Any = DEFAULT_THRESHOLD_GRID
) -> np.ndarray:
    """Per-AU probability threshold that maximises that AU's F1 on rows with all 12 AUs labelled.

    probs: (N, 12) sigmoid probabilities; true: (N, 12) in {-1, 0, 1}. Returns float32 (12,).
    A positive is `prob >= threshold`. Ties go to the threshold nearest 0.5 (so an AU whose F1 is
    0 everywhere keeps 0.5); with no labelled rows every threshold is 0.5 (and a warning).
    """
    p = _au_matrix(np.asarray(probs, dtype=np.float64), "AU probabilities")
    t = _au_matrix(true, "AU truth")
    _same_length(p, t, "AU thresholds")
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    if grid.size == 0:
        raise MetricError("empty threshold grid")
    keep = (t >= 0).all(axis=1)
    if not keep.any():
        log.warning("AU thresholds: no rows carry all 12 AU labels; using 0.5 for every AU")
        return np.full(labels.NUM_AUS, 0.5, dtype=np.float32)
    p, t = p[keep], t[keep].astype(np.int64)
    if not np.isfinite(p).all():
        raise MetricError("AU probabilities contain NaN or infinite values")
    f1_by_threshold = np.stack([_binary_f1_columns(p >= thr, t == 1) for thr in grid])  # (G, 12)
    best = f1_by_threshold.max(axis=0)
    # Among thresholds within float noise of the best F1, take the one nearest 0.5.
    is_best = f1_by_threshold >= best - 1e-12
    distance = np.where(is_best, np.abs(grid - 0.5)[:, None], np.inf)
    return grid[distance.argmin(axis=0)].astype(np.float32)


__all__ = [
    "MetricError", "ccc", "expression_f1", "au_f1", "lsd_f1", "mtl_scores",
    "expression_confusion", "lsd_confusion", "tune_au_thresholds", "DEFAULT_THRESHOLD_GRID",
]
