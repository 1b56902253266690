"""The closing tables of `make pipeline`: P_MTL and LSD F1 next to what chance would score.

Run as `python -m abaw_cli.pipeline_summary RUNS`; reads RUNS/score/{mtl,lsd,lsd_test}.json written
by `abaw score` (lsd_test: the LSD test set against the truth the demo renders), and RUNS/train-mtl/metrics.json for the AU figures with thresholds tuned on
validation (labelled: they flatter). Chance is computed from the truth itself
(the class and AU frequencies in the score files), so it is the honest floor for this data:
expression / LSD class drawn uniformly at random, every AU predicted present, VA uncorrelated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console()


def uniform_guess_macro_f1(class_counts: np.ndarray) -> float:
    """Expected macro-F1 of guessing each class with probability 1/K: per class
    precision = p_c, recall = 1/K, so F1_c = 2 p_c (1/K) / (p_c + 1/K)."""
    counts = np.asarray(class_counts, dtype=float)
    k = len(counts)
    p = counts / max(counts.sum(), 1.0)
    return float(np.mean(np.where(p > 0, 2 * p / k / (p + 1 / k), 0.0)))


def all_positive_au_f1(positives: dict[str, int], n_frames: int) -> float:
    """Mean F1 of predicting every AU present: precision = p, recall = 1, F1 = 2p / (1 + p)."""
    p = np.array([positives[k] / max(n_frames, 1) for k in positives], dtype=float)
    return float(np.mean(2 * p / (1 + p)))


def au_threshold_label(train_metrics: dict | None) -> str:
    """How best.pt decided the AUs that `abaw score` scored: at 0.5, or at thresholds tuned on validation."""
    thresholds = ((train_metrics or {}).get("best_epoch") or {}).get("details", {}).get("au_thresholds")
    if not thresholds:
        return "best.pt's AU thresholds"
    return "AUs at 0.5" if all(t == 0.5 for t in thresholds.values()) else "AU thresholds tuned on validation: optimistic"


def mtl_table(result: dict, train_metrics: dict | None = None) -> Table:
    s = result["scores"]
    truth_counts = np.array(result["confusion_matrix"]["counts"]).sum(axis=1)
    chance_expr = uniform_guess_macro_f1(truth_counts)
    chance_au = all_positive_au_f1(s["n_au_positive"], s["n_au"])
    table = Table(title="MTL validation (EMMA, train-mtl best.pt)")
    for col in ("term", "score", "chance"):
        table.add_column(col, justify="right" if col != "term" else "left")
    table.add_row("CCC valence", f"{s['ccc_valence']:.3f}", "0.000")
    table.add_row("CCC arousal", f"{s['ccc_arousal']:.3f}", "0.000")
    table.add_row("expression macro-F1", f"{s['expression_f1']:.3f}", f"{chance_expr:.3f}")
    label = au_threshold_label(train_metrics)
    table.add_row(f"AU mean F1 ({label})", f"{s['au_f1']:.3f}", f"{chance_au:.3f}")
    table.add_row(f"[bold]P_MTL[/] ({label})", f"[bold]{s['p_mtl']:.3f}", f"[bold]{chance_expr + chance_au:.3f}")
    best = ((train_metrics or {}).get("best_epoch") or {}).get("metrics", {})
    if "au_f1_val_tuned" in best:
        table.add_section()
        table.add_row("AU mean F1, thresholds tuned on validation (optimistic; train-mtl)", f"{best['au_f1_val_tuned']:.3f}", "")
        table.add_row("P_MTL, AU thresholds tuned on validation (optimistic; train-mtl)", f"{best['p_mtl_val_tuned']:.3f}", "")
    return table


LSD_VALIDATION_TITLE = "LSD validation on the 'real' style (Masked CoTEX, cotrain best.pt)"
LSD_TEST_TITLE = "LSD test set (demo truth; Masked CoTEX, cotrain best.pt)"


def lsd_table(result: dict, title: str = LSD_VALIDATION_TITLE) -> Table:
    s = result["scores"]
    cm = result["confusion_matrix"]
    truth_counts = np.array(cm["counts"]).sum(axis=1)
    table = Table(title=title)
    for col in ("class", "F1", "chance"):
        table.add_column(col, justify="right" if col != "class" else "left")
    per_class = s.get("f1_per_class", {})
    k = len(truth_counts)
    p = truth_counts / max(truth_counts.sum(), 1)
    for i, name in enumerate(cm["classes"]):
        chance = 2 * p[i] / k / (p[i] + 1 / k) if p[i] > 0 else 0.0
        value = per_class.get(name)
        table.add_row(name, "-" if value is None else f"{value:.3f}", f"{chance:.3f}")
    table.add_row("[bold]macro-F1", f"[bold]{s['f1']:.3f}", f"[bold]{uniform_guess_macro_f1(truth_counts):.3f}")
    return table


def main(runs: Path) -> int:
    score_dir = runs / "score"
    shown = 0
    train_metrics_path = runs / "train-mtl" / "metrics.json"
    train_metrics = json.loads(train_metrics_path.read_text()) if train_metrics_path.exists() else None
    for name, render in (("mtl", lambda r: mtl_table(r, train_metrics)), ("lsd", lsd_table),
                         ("lsd_test", lambda r: lsd_table(r, LSD_TEST_TITLE))):
        path = score_dir / f"{name}.json"
        if path.exists():
            console.print(render(json.loads(path.read_text())))
            shown += 1
    if not shown:
        console.print(f"[red]no score files under {score_dir}")
        return 1
    console.print(f"artifacts: {runs}/<stage>/  (scores JSON and confusion matrices in {score_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/pipeline")))
