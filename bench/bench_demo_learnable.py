"""Bench: is the demo data learnable, and does the LSD domain shift bite?

Generates the demo set (default `small`, timed) unless --data points at one, then fits small
scikit-learn models on HOG features of the 112x112 crops (the project's training engine is for the
real models; this only asks whether the labels are in the pixels):
- MTL: multinomial logistic regression (expression), one logistic regression per AU, ridge
  regression (valence, arousal); trained on the training split, scored on the validation split
  with abaw_cli.metrics.mtl_scores, next to chance baselines measured on the same frames
  (a random guess with the training priors, always-present AUs, a constant VA).
- LSD: logistic regression trained on the synthetic style, scored on held-out synthetic images
  (in domain) and on the photo-style validation set (domain shift), with macro-F1.
- Video crops (--video-crops, the folder `abaw crop-faces` wrote for the demo videos): the
  expression model's per-frame agreement with each video's truth, beside its majority class: the
  reference for what a model trained on the MTL split reads from the frames `abaw predict` sees.
- Videos: facenet-pytorch MTCNN (its own thresholds) on every frame of every demo video: the share
  of frames where a detected box overlaps the truth box with IoU > 0.4 (and with p > 0.9 too).
Everything printed is measured in this run.
Usage: python bench/bench_demo_learnable.py [--data DEMO_ROOT] [--scale small] [--seed 0] [--no-mtcnn]
       [--video-crops runs/pipeline/crop-faces]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table
from skimage.feature import hog
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from abaw_cli.data.demo import generate_demo
from abaw_cli.data.formats import read_mtl_annotations, scan_lsd_folders
from abaw_cli.labels import AUS, EXPRESSIONS, NUM_EXPRESSIONS, NUM_LSD_CLASSES
from abaw_cli.metrics import lsd_f1, mtl_scores

console = Console()


def features(paths: list[Path]) -> np.ndarray:
    """HOG (9 orientations, 8 px cells, 2x2 blocks) of the 64x64 grey face, plus 16x16 grey pixels."""
    out = []
    for p in paths:
        g = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if g is None:
            raise OSError(f"cannot read {p}")
        g64 = cv2.resize(g, (64, 64), interpolation=cv2.INTER_AREA)
        h = hog(g64, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), feature_vector=True)
        px = cv2.resize(g, (16, 16), interpolation=cv2.INTER_AREA).reshape(-1) / 255.0
        out.append(np.concatenate([h, px]).astype(np.float32))
    return np.stack(out)


def classifier(c: float = 0.05) -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300, class_weight="balanced"))


def mtl_bench(root: Path, rng: np.random.Generator) -> dict:
    img_root = root / "mtl" / "cropped_aligned"
    train = read_mtl_annotations(root / "mtl" / "training_set_annotations.txt", img_root)
    val = read_mtl_annotations(root / "mtl" / "validation_set_annotations.txt", img_root)
    t0 = time.perf_counter()
    xtr = features([img_root / i for i in train.images])
    xva = features([img_root / i for i in val.images])
    t_feat = time.perf_counter() - t0

    t0 = time.perf_counter()
    m = train.has_expression
    expr_model = classifier().fit(xtr[m], train.expression[m])
    pred_expr = expr_model.predict(xva)
    m = train.has_aus
    pred_aus = np.zeros((len(val), len(AUS)), np.int64)
    for j in range(len(AUS)):
        y = train.aus[m, j]
        if y.min() == y.max():
            pred_aus[:, j] = y[0]
            continue
        pred_aus[:, j] = classifier(0.02).fit(xtr[m], y).predict(xva)
    m = train.has_va
    va_model = make_pipeline(StandardScaler(), Ridge(alpha=3000.0)).fit(xtr[m], train.valence_arousal[m])
    pred_va = np.clip(va_model.predict(xva), -1, 1)
    t_fit = time.perf_counter() - t0
    model = mtl_scores(pred_va, pred_expr, pred_aus, val)

    # Chance, on the same validation frames: guesses drawn with the training label priors,
    # every AU always present (the usual AU-F1 floor), valence/arousal = training mean + noise.
    prior = np.bincount(train.expression[train.has_expression], minlength=NUM_EXPRESSIONS) / train.has_expression.sum()
    guess_expr = rng.choice(NUM_EXPRESSIONS, size=len(val), p=prior)
    mean_va = train.valence_arousal[train.has_va].mean(0)
    guess_va = mean_va + rng.normal(0, 0.05, (len(val), 2))
    chance = mtl_scores(guess_va, guess_expr, np.ones((len(val), len(AUS)), np.int64), val)
    return {"model": model, "chance": chance, "n_train": len(train), "n_val": len(val),
            "feature_s": t_feat, "fit_s": t_fit, "expr_model": expr_model}


def video_crop_agreement(expr_model, crops: Path, videos: Path) -> list[dict]:
    """Per demo video: the share of labelled frames whose crop (the most confident face of the
    frame in crop-faces' table) the HOG expression model reads as the truth's expression."""
    by_video: dict[str, dict[int, tuple[float, str]]] = {}
    with open(crops / "faces.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            frames = by_video.setdefault(r["source"], {})
            k, score = int(r["frame"]), float(r["score"])
            if k not in frames or score > frames[k][0]:
                frames[k] = (score, r["crop"])
    out = []
    for name, frames in sorted(by_video.items()):
        with open(videos / f"{name}.csv", newline="") as fh:
            truth = {int(r["frame"]): int(r["expression"]) for r in csv.DictReader(fh)}
        keys = [k for k in sorted(frames) if truth.get(k, -1) >= 0]
        pred = expr_model.predict(features([crops / frames[k][1] for k in keys]))
        true = np.array([truth[k] for k in keys])
        labelled = np.array([v for v in truth.values() if v >= 0])
        major = np.bincount(labelled, minlength=NUM_EXPRESSIONS)
        out.append({"video": name, "frames": len(labelled), "with_crop": len(keys),
                    "agreement": float((pred == true).sum() / len(labelled)),
                    "majority": float(major.max() / len(labelled)), "majority_class": EXPRESSIONS[int(major.argmax())]})
    return out


def lsd_bench(root: Path, seed: int) -> dict:
    syn = scan_lsd_folders(root / "lsd" / "training_set_synthetic_images")
    real = scan_lsd_folders(root / "lsd" / "validation_set_real_images")
    xs, xr = features(syn.paths), features(real.paths)
    idx_tr, idx_te = train_test_split(np.arange(len(syn)), test_size=0.2, random_state=seed, stratify=syn.labels)
    model = classifier().fit(xs[idx_tr], syn.labels[idx_tr])
    in_domain = lsd_f1(model.predict(xs[idx_te]), syn.labels[idx_te])[0]
    shifted = lsd_f1(model.predict(xr), real.labels)[0]
    prior = np.bincount(syn.labels[idx_tr], minlength=NUM_LSD_CLASSES) / len(idx_tr)
    chance = lsd_f1(np.random.default_rng(seed).choice(NUM_LSD_CLASSES, size=len(real), p=prior), real.labels)[0]
    return {"in_domain": in_domain, "real": shifted, "chance": chance, "n_syn": len(syn), "n_real": len(real)}


def _iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def mtcnn_bench(root: Path) -> list[dict]:
    import torch
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")
    out = []
    for video in sorted((root / "videos").glob("*.mp4")):
        with open(video.with_suffix(".csv"), newline="") as fh:
            truth = [[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in csv.DictReader(fh)]
        cap = cv2.VideoCapture(str(video))
        frames = []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        hit = sure = 0
        ious = []
        t0 = time.perf_counter()
        for i in range(0, len(frames), 8):
            with torch.inference_mode():
                boxes, probs = mtcnn.detect(np.stack(frames[i:i + 8]))
            for k, (b, p) in enumerate(zip(boxes, probs)):
                best, best_p = 0.0, 0.0
                if b is not None:  # numpy 2: object arrays; cast
                    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
                    p = np.asarray(p, dtype=np.float64).reshape(-1)
                    for bb, pp in zip(b, p):
                        v = _iou(bb, truth[i + k])
                        if v > best:
                            best, best_p = v, pp
                ious.append(best)
                hit += best > 0.4
                sure += best > 0.4 and best_p > 0.9
        out.append({"video": video.name, "frames": len(frames), "found": hit, "found_p09": sure,
                    "median_iou": float(np.median(ious)), "s_per_frame": (time.perf_counter() - t0) / len(frames)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="an existing demo root (skips generation)")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-mtcnn", action="store_true", help="skip the face-detection check on the videos")
    ap.add_argument("--video-crops", type=Path, help="crop-faces output for --data's videos: score the expression model on them")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            root = Path(tmp) / "demo"
            t0 = time.perf_counter()
            generate_demo(root, scale=args.scale, seed=args.seed)
            console.print(f"generated the `{args.scale}` demo set in {time.perf_counter() - t0:.1f} s (2 workers)")
        rng = np.random.default_rng(args.seed)
        mtl = mtl_bench(root, rng)
        lsd = lsd_bench(root, args.seed)
        videos = [] if args.no_mtcnn else mtcnn_bench(root)
        crops = [] if args.video_crops is None else video_crop_agreement(mtl["expr_model"], args.video_crops, root / "videos")

    t = Table(title=f"MTL validation ({mtl['n_val']} frames; trained on {mtl['n_train']}): HOG + linear models vs chance")
    for col in ("metric", "model", "chance", "ratio"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for key, name in (("expression_f1", "expression macro-F1 (8)"), ("au_f1", "AU mean F1 (12)"),
                      ("ccc_valence", "CCC valence"), ("ccc_arousal", "CCC arousal"), ("p_mtl", "P_MTL")):
        a, b = mtl["model"][key], mtl["chance"][key]
        t.add_row(name, f"{a:.3f}", f"{b:.3f}", f"{a / b:.1f}x" if b > 1e-3 else "-")
    console.print(t)
    per = mtl["model"]["expression_f1_per_class"]
    console.print("expression F1 per class: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
    per = mtl["model"]["au_f1_per_au"]
    console.print("AU F1 per AU: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
    console.print(f"features {mtl['feature_s']:.1f} s, fitting {mtl['fit_s']:.1f} s")
    t = Table(title=f"LSD: trained on synthetic ({lsd['n_syn']} images), macro-F1 over 6 classes")
    t.add_column("test set")
    t.add_column("macro-F1", justify="right")
    t.add_row("held-out synthetic (in domain)", f"{lsd['in_domain']:.3f}")
    t.add_row(f"photo-style validation ({lsd['n_real']}, domain shift)", f"{lsd['real']:.3f}")
    t.add_row("chance (training priors) on validation", f"{lsd['chance']:.3f}")
    console.print(t)
    if videos:
        t = Table(title="MTCNN on every demo video frame (IoU > 0.4 with the truth box)")
        for col in ("video", "frames", "found", "found, p > 0.9", "median IoU", "s/frame"):
            t.add_column(col, justify="left" if col == "video" else "right")
        for v in videos:
            t.add_row(v["video"], str(v["frames"]), f"{v['found'] / v['frames']:.1%}", f"{v['found_p09'] / v['frames']:.1%}",
                      f"{v['median_iou']:.2f}", f"{v['s_per_frame']:.2f}")
        n = sum(v["frames"] for v in videos)
        t.add_row("all", str(n), f"{sum(v['found'] for v in videos) / n:.1%}", f"{sum(v['found_p09'] for v in videos) / n:.1%}", "", "")
        console.print(t)
    if crops:
        t = Table(title="HOG expression model on the crop-faces crops of the demo videos (a frame without a crop counts as wrong)")
        for col in ("video", "labelled frames", "with a crop", "agreement", "majority class"):
            t.add_column(col, justify="left" if col == "video" else "right")
        for v in crops:
            t.add_row(v["video"], str(v["frames"]), str(v["with_crop"]), f"{v['agreement']:.3f}",
                      f"{v['majority']:.3f} ({v['majority_class']})")
        console.print(t)


if __name__ == "__main__":
    main()
