"""Shared plot helpers write real PNGs atomically and refuse mismatched input."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import image as mpimg

from abaw_cli import labels
from abaw_cli.plots import save_bar_chart, save_confusion_matrix, save_curves


def test_confusion_matrix_png(tmp_path):
    cm = np.arange(36).reshape(6, 6)
    cm[2] = 0  # a class absent from the truth must not divide by zero
    path = save_confusion_matrix(cm, labels.LSD_CLASSES, tmp_path / "cm.png", "LSD")
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]  # no temp file left
    with pytest.raises(ValueError, match="does not match"):
        save_confusion_matrix(cm, labels.EXPRESSIONS, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_curves_skip_missing_values_and_bar_chart(tmp_path):
    history = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5, "p_mtl": 0.4}, {"epoch": 3, "p_mtl": float("nan")}]
    path = save_curves(history, ["loss", "p_mtl", "absent"], tmp_path / "curves.png", "run")
    assert mpimg.imread(path).shape[0] > 3 * 150  # one panel per key
    bars = save_bar_chart({a: 0.1 * i for i, a in enumerate(labels.AUS)}, tmp_path / "au.png", "AU F1")
    assert bars.stat().st_size > 1000
    with pytest.raises(ValueError):
        save_curves(history, [], tmp_path / "none.png")
