"""Metrics against hand-worked numbers and scikit-learn; degenerate input gives numbers or errors, never NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from abaw_cli import labels
from abaw_cli.data.formats import MTLAnnotations
from abaw_cli.metrics import (
    MetricError,
    au_f1,
    ccc,
    expression_confusion,
    expression_f1,
    lsd_confusion,
    lsd_f1,
    mtl_scores,
    tune_au_thresholds,
)


def test_ccc_hand_worked_example():
    # pred 1..4 (mean 2.5, var 1.25), true 2,4,6,8 (mean 5, var 5), cov 2.5, mean gap^2 6.25
    # CCC = 2 * 2.5 / (1.25 + 5 + 6.25) = 5 / 12.5 = 0.4
    assert ccc([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(0.4, abs=1e-12)
    # Pearson r is 1 here; CCC punishes the scale and offset.
    assert ccc([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert ccc([-1, 0, 1], [1, 0, -1]) == pytest.approx(-1.0)
    assert ccc([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)


def test_ccc_degenerate_inputs_are_defined():
    assert ccc([0.3, 0.3, 0.3], [0.3, 0.3, 0.3]) == 0.0  # both constant and equal: 0, not NaN
    assert ccc([0.2, 0.2, 0.2], [-0.5, 0.1, 0.9]) == 0.0  # constant prediction
    assert ccc([0.5], [0.1]) == 0.0
    with pytest.raises(MetricError, match="zero frames"):
        ccc([], [])
    with pytest.raises(MetricError, match="NaN"):
        ccc([0.1, np.nan], [0.1, 0.2])
    with pytest.raises(MetricError, match="rows"):
        ccc([0.1, 0.2], [0.1])


def test_expression_f1_matches_sklearn_on_labelled_frames():
    rng = np.random.default_rng(0)
    true = rng.integers(-1, 8, 500)
    pred = rng.integers(0, 8, 500)
    macro, per_class = expression_f1(pred, true)
    keep = true >= 0
    expected = f1_score(true[keep], pred[keep], labels=list(range(8)), average=None)
    np.testing.assert_allclose(per_class, expected, atol=1e-12)
    assert macro == pytest.approx(f1_score(true[keep], pred[keep], average="macro"), abs=1e-12)
    assert per_class.shape == (8,)


def test_expression_f1_with_a_class_absent_from_truth():
    true = np.array([0, 0, 1, 1, 2, 2, -1])
    pred = np.array([0, 0, 1, 3, 2, 2, 5])  # class 3 predicted but never true; -1 frame ignored
    macro, per_class = expression_f1(pred, true)
    assert np.isfinite(per_class).all()
    assert per_class[3] == 0.0 and per_class[5] == 0.0
    assert per_class[0] == 1.0 and per_class[1] == pytest.approx(2 / 3)
    assert macro == pytest.approx(per_class.mean())
    perfect = np.arange(8).repeat(3)
    assert expression_f1(perfect, perfect)[0] == 1.0
    with pytest.raises(MetricError, match="no frames"):
        expression_f1([1, 2], [-1, -1])
    with pytest.raises(MetricError, match="outside"):
        expression_f1([9, 1], [1, 1])


def test_au_f1_matches_sklearn_per_au_on_fully_labelled_rows():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 2, (300, 12))
    true[:40, 5] = -1  # those rows have no AU label at all
    pred = rng.integers(0, 2, (300, 12))
    mean, per_au = au_f1(pred, true)
    keep = slice(40, None)
    expected = [f1_score(true[keep, j], pred[keep, j]) for j in range(12)]
    np.testing.assert_allclose(per_au, expected, atol=1e-12)
    assert mean == pytest.approx(np.mean(expected), abs=1e-12)


def test_au_f1_degenerate_inputs():
    true = np.zeros((5, 12), dtype=int)
    mean, per_au = au_f1(np.zeros((5, 12), dtype=int), true)  # no positives anywhere: 0, not NaN
    assert mean == 0.0 and np.isfinite(per_au).all()
    with pytest.raises(MetricError, match="no frames"):
        au_f1(np.zeros((2, 12)), -np.ones((2, 12)))
    with pytest.raises(MetricError, match="0/1"):
        au_f1(np.full((2, 12), 0.7), np.zeros((2, 12)))
    with pytest.raises(MetricError, match="shape"):
        au_f1(np.zeros((2, 11)), np.zeros((2, 11)))


def test_lsd_f1_and_confusion_matrices():
    rng = np.random.default_rng(2)
    true = rng.integers(0, 6, 120)
    pred = np.where(rng.random(120) < 0.6, true, rng.integers(0, 6, 120))
    macro, per_class = lsd_f1(pred, true)
    assert macro == pytest.approx(f1_score(true, pred, average="macro"), abs=1e-12)
    assert per_class.shape == (6,)
    cm = lsd_confusion(pred, true)
    assert cm.shape == (6, 6) and cm.sum() == 120
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(true, minlength=6))
    assert np.trace(cm) == int((pred == true).sum())
    ecm = expression_confusion(np.array([0, 1, 7]), np.array([0, -1, 2]))
    assert ecm.shape == (8, 8) and ecm.sum() == 2 and ecm[2, 7] == 1


def _truth(n: int = 400, seed: int = 3) -> MTLAnnotations:
    rng = np.random.default_rng(seed)
    va = rng.uniform(-1, 1, (n, 2))
    va[:50, 0] = labels.MISSING_VA
    va[30:80, 1] = labels.MISSING_VA
    expression = rng.integers(-1, 8, n)
    aus = rng.integers(0, 2, (n, 12))
    aus[100:150, 0] = labels.MISSING_AU
    return MTLAnnotations([f"v/{i:05d}.jpg" for i in range(n)], va, expression, aus)


def test_mtl_scores_sum_and_per_term_masks():
    truth = _truth()
    rng = np.random.default_rng(4)
    # Predictions are garbage where the truth is missing: a masked term must not see them.
    pred_va = np.asarray(truth.valence_arousal, dtype=np.float64) + rng.normal(0, 0.3, (len(truth), 2))
    pred_va[~truth.has_valence, 0] = 1e6
    pred_expr = rng.integers(0, 8, len(truth))
    pred_aus = rng.integers(0, 2, (len(truth), 12))
    s = mtl_scores(pred_va, pred_expr, pred_aus, truth)
    hv, ha = truth.has_valence, truth.has_arousal
    assert s["ccc_valence"] == pytest.approx(ccc(pred_va[hv, 0], truth.valence_arousal[hv, 0]))
    assert s["ccc_arousal"] == pytest.approx(ccc(pred_va[ha, 1], truth.valence_arousal[ha, 1]))
    assert 0.5 < s["ccc_valence"] < 1.0
    assert s["p_mtl"] == pytest.approx(s["va"] + s["expression_f1"] + s["au_f1"], abs=1e-12)
    assert (s["n_valence"], s["n_arousal"], s["n_au"]) == (350, 350, 350)
    assert s["n_expression"] == int((truth.expression >= 0).sum())
    assert list(s["au_f1_per_au"]) == list(labels.AUS)
    assert s["n_au_positive"]["AU2"] == int((truth.aus[truth.has_aus, 1] == 1).sum())
    assert s["warnings"] == []


def test_mtl_scores_term_without_labels_is_zero_with_a_warning(caplog):
    truth = _truth(60)
    truth.expression[:] = labels.MISSING_EXPRESSION
    truth.valence_arousal[:] = labels.MISSING_VA
    s = mtl_scores(np.zeros((60, 2)), np.zeros(60, dtype=int), truth.aus.clip(0, 1), truth)
    assert s["expression_f1"] == 0.0 and s["va"] == 0.0
    assert not any(math.isnan(v) for v in (s["p_mtl"], s["ccc_valence"], s["au_f1"]))
    assert s["p_mtl"] == pytest.approx(1.0)  # perfect AUs on the rows that have them
    assert len(s["warnings"]) == 3 and any("expression F1" in w for w in s["warnings"])
    assert "no frame of the truth carries this label" in caplog.text


def test_tune_au_thresholds_finds_the_separating_threshold():
    rng = np.random.default_rng(5)
    true = rng.integers(0, 2, (400, 12))
    probs = rng.uniform(0.0, 0.5, (400, 12))
    probs[:, 0] = np.where(true[:, 0] == 1, rng.uniform(0.81, 1.0, 400), rng.uniform(0.0, 0.79, 400))
    probs[:, 1] = np.where(true[:, 1] == 1, 0.7, 0.3)  # any threshold in (0.3, 0.7] separates: keep 0.5
    true[:, 2] = 0  # never positive: F1 is 0 everywhere, keep 0.5
    thresholds = tune_au_thresholds(probs, true)
    assert thresholds.shape == (12,) and thresholds.dtype == np.float32
    assert thresholds[0] == pytest.approx(0.8)
    assert thresholds[1] == pytest.approx(0.5)
    assert thresholds[2] == pytest.approx(0.5)
    grid = np.linspace(0.05, 0.95, 19)
    for j in range(3, 7):  # the chosen threshold reaches the best F1 sklearn finds on the grid
        best = max(f1_score(true[:, j], probs[:, j] >= t, zero_division=0) for t in grid)
        assert f1_score(true[:, j], probs[:, j] >= thresholds[j], zero_division=0) == pytest.approx(best)
    assert np.all(tune_au_thresholds(probs, -np.ones((400, 12))) == 0.5)
