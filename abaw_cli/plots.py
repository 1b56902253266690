"""Shared matplotlib figures (Agg backend: no display needed), each written atomically as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from abaw_cli.atomic import atomic_open  # noqa: E402


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120, tight: bool = True) -> Path:
    """Save `fig` (atomically; the format follows the suffix, PNG by default), close the figure."""
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
    return Path(path)


def save_confusion_matrix(
    cm: Any, class_names: Sequence[str], path: str | os.PathLike, title: str = "Confusion matrix"
) -> Path:
    """Confusion matrix (rows = truth, columns = prediction). Colour = share of the truth row,
    text = count and row percentage, so rare classes stay readable next to frequent ones."""
    cm = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {k} class names")
    row_sums = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=np.float64), where=row_sums > 0)
    size = max(4.0, 0.75 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=[f"{n} ({int(s)})" for n, s in zip(class_names, row_sums[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (frames)")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{100 * share[i, j]:.0f}%", ha="center", va="center",
                    fontsize=7, color=colour)
    return save_figure(fig, path)


def save_curves(
    history: Sequence[dict[str, Any]],
    keys: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    x_key: str | None = None,
) -> Path:
    """Line plot of `keys` over `history` (a list of per-epoch or per-step dicts, e.g. the rows of
    log.jsonl). The x axis is `x_key`, else "epoch", else "step", else the row index. Rows that
    lack a key (or hold a non-number) are skipped for that key. One panel per key."""
    if not keys:
        raise ValueError("save_curves needs at least one key")
    if x_key is None:
        x_key = next((k for k in ("epoch", "step") if any(k in row for row in history)), None)
    fig, axes = plt.subplots(len(keys), 1, figsize=(7.0, 2.4 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        xs, ys = [], []
        for index, row in enumerate(history):
            value = row.get(key)
            if isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value):
                xs.append(row.get(x_key, index) if x_key else index)
                ys.append(float(value))
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
        if not xs:
            ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center")
    axes[-1, 0].set_xlabel(x_key or "index")
    if title:
        axes[0, 0].set_title(title)
    return save_figure(fig, path)


def save_bar_chart(
    values: dict[str, float], path: str | os.PathLike, title: str = "", ylabel: str = ""
) -> Path:
    """Bar per named value (e.g. F1 per AU or per class), value printed above each bar."""
    names = list(values)
    heights = [float(values[n]) for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(names) + 1.5), 3.2))
    bars = ax.bar(names, heights, color="tab:blue")
    ax.bar_label(bars, labels=[f"{h:.2f}" for h in heights], fontsize=7)
    ax.set_ylim(0.0, max(1.0, max(heights, default=0.0) * 1.1))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    return save_figure(fig, path)
