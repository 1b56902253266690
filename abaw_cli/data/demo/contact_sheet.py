"""Contact sheets: a grid of samples per class for every demo set, as PNGs for the README."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from abaw_cli.atomic import atomic_open
from abaw_cli.data.formats import MTLAnnotations, scan_lsd_folders
from abaw_cli.image_files import list_images
from abaw_cli.labels import EXPRESSIONS, LSD_CLASSES

CELL = 112
LABEL_W = 130
PER_ROW = 8


def _grid(rows: list[tuple[str, list[Path]]], title: str, label_w: int = LABEL_W) -> np.ndarray:
    """One row per class: its name on the left, up to PER_ROW samples to the right."""
    head = 34
    sheet = np.full((head + CELL * len(rows), label_w + CELL * PER_ROW, 3), 245, np.uint8)
    cv2.putText(sheet, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (30, 30, 30), 2, cv2.LINE_AA)
    for r, (name, paths) in enumerate(rows):
        y = head + r * CELL
        cv2.putText(sheet, name, (8, y + CELL // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (30, 30, 30), 1, cv2.LINE_AA)
        for c, p in enumerate(paths[:PER_ROW]):
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise OSError(f"cannot read {p} for the contact sheet")
            if img.shape[:2] != (CELL, CELL):
                img = cv2.resize(img, (CELL, CELL), interpolation=cv2.INTER_AREA)
            sheet[y:y + CELL, label_w + c * CELL: label_w + (c + 1) * CELL] = img
    return sheet


def _spread(items: list, k: int) -> list:
    """k items spread evenly over the list (different videos/identities rather than neighbours)."""
    if len(items) <= k:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, k)]


def _mid_of_runs(annotations: dict[str, MTLAnnotations], e: int, img_root: Path) -> list[Path]:
    """Up to PER_ROW frames labelled `e`: the middle frame of each labelled run (the expression at
    its apex, not mid-change), one run per clip first so the row shows different people."""
    runs: list[tuple[int, str]] = []  # (how many runs of this clip came before, middle image)
    for ann in annotations.values():
        lab = ann.expression == e
        seen: dict[str, int] = {}
        i = 0
        while i < len(lab):
            if not lab[i]:
                i += 1
                continue
            j = i
            clip = ann.images[i].split("/")[0]
            while j < len(lab) and lab[j] and ann.images[j].split("/")[0] == clip:
                j += 1
            runs.append((seen.get(clip, 0), ann.images[(i + j) // 2]))
            seen[clip] = seen.get(clip, 0) + 1
            i = j
    runs.sort(key=lambda r: r[0])
    return [img_root / r[1] for r in runs[:PER_ROW]]


def _save_png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    with atomic_open(path, "wb") as fh:
        fh.write(buf.tobytes())


def write_contact_sheets(root: Path, annotations: dict[str, MTLAnnotations]) -> list[Path]:
    """Writes ROOT/contact_sheets/{mtl,lsd_synthetic,lsd_real,lsd_test,pool}.png from the files under ROOT."""
    out = root / "contact_sheets"
    written = []
    rows = []
    img_root = root / "mtl" / "cropped_aligned"
    for e, name in enumerate(EXPRESSIONS):
        rows.append((name, _mid_of_runs(annotations, e, img_root)))
    sheet = _grid(rows, "MTL (s-Aff-Wild2 layout): rows = expression label")
    _save_png(out / "mtl.png", sheet)
    written.append(out / "mtl.png")
    for folder, key, title in (("training_set_synthetic_images", "lsd_synthetic", "LSD synthetic training style"),
                               ("validation_set_real_images", "lsd_real", "LSD 'real' validation style")):
        samples = scan_lsd_folders(root / "lsd" / folder)
        by_class = {c: [p for p, y in zip(samples.paths, samples.labels) if y == i] for i, c in enumerate(LSD_CLASSES)}
        sheet = _grid([(c, _spread(p, PER_ROW)) for c, p in by_class.items()], title)
        _save_png(out / f"{key}.png", sheet)
        written.append(out / f"{key}.png")
    for folder, key, title in (("lsd/test_set_images", "lsd_test", "LSD test set (labels withheld)"),
                               ("pool", "pool", "Unlabeled pool (MAE pretraining)")):
        chunks = _spread(list_images(root / folder), PER_ROW * 6)
        rows = [("", chunks[i:i + PER_ROW]) for i in range(0, len(chunks), PER_ROW)]
        _save_png(out / f"{key}.png", _grid(rows, title, label_w=0))
        written.append(out / f"{key}.png")
    return written
