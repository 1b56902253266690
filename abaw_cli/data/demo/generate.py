"""`generate_demo`: the whole demo data set, in the layouts of the real ABAW data.

    OUT/mtl/cropped_aligned/<video>/<frame:05d>.jpg + training/validation_set_annotations.txt
    OUT/lsd/training_set_synthetic_images/<CLASS>/*.jpg   (one rendering style)
    OUT/lsd/validation_set_real_images/<CLASS>/*.jpg      (a photographic style: domain shift)
    OUT/lsd/LSD_Challenge_test_set_release.txt + test_set_images/test_<k:06d>.jpg
                                                          (the unlabelled test set, photographic style)
    OUT/truth/lsd_test_truth.txt                          (its labels: for benches and tests only)
    OUT/pool/<part>/*.jpg                                 (unlabeled faces for MAE)
    OUT/videos/<name>.mp4 + <name>.csv                    (scenes with per-frame truth)
    OUT/contact_sheets/{mtl,lsd_synthetic,lsd_real,lsd_test,pool}.png
    OUT/demo_summary.json

Every image is seeded from (seed, stream, index) alone, so the files are the same whatever the
number of workers. Everything is written under OUT/.partial-<pid>/ and moved into place at the
end, so an interrupted run never leaves a half-made set under the final names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from abaw_cli.data.demo import scenes
from abaw_cli.data.demo.contact_sheet import write_contact_sheets
from abaw_cli.data.demo.expressions import sample_expression
from abaw_cli.data.demo.face_render import random_identity
from abaw_cli.data.demo.plans import Deck, Timeline, apply_missing, make_timeline, smooth_noise
from abaw_cli.data.demo.video import render_video
from abaw_cli.data.formats import (
    LSDSamples, MTLAnnotations, write_lsd_submission, write_lsd_test_release, write_mtl_annotations,
)
from abaw_cli.labels import EXPRESSIONS, LSD_CLASSES

log = logging.getLogger(__name__)

PARTS = ("mtl", "lsd", "pool", "videos", "truth", "contact_sheets")
# Random streams: one per kind of item, so adding items of one kind never changes another.
STREAM_MTL, STREAM_LSD_SYN, STREAM_LSD_REAL, STREAM_POOL, STREAM_VIDEO, STREAM_PLAN, STREAM_LSD_TEST = range(1, 8)
SPLIT_ID = {"train": 0, "val": 1, "test": 2}  # plan streams: [seed, STREAM_PLAN, split id]
# Missing-label rates of s-Aff-Wild2 (method.md): train VA 27%, expression 36%, AU 27%;
# validation has every VA and AU label and 43% of frames without an expression.
MISSING_RATES = {
    "train": {"va": 1 - 103917 / 142333, "expression": 1 - 90645 / 142333, "au": 1 - 103316 / 142333},
    "val": {"va": 0.0, "expression": 1 - 15440 / 26876, "au": 0.0},
}
# LSD class shares: the real training set's (ANGER 18,286, DISGUST 15,150, FEAR 10,923,
# HAPPINESS 73,285, SADNESS 144,631, SURPRISE 14,976) softened by a power, so the smallest demo
# classes still hold a few images; the real validation set is far less skewed.
LSD_REAL_COUNTS = np.array([18286, 15150, 10923, 73285, 144631, 14976], np.float64)
LSD_TRAIN_POWER, LSD_VAL_POWER = 0.8, 0.3
# Folder names as some LSD releases spell them (the readers accept the alias).
LSD_TRAIN_FOLDERS = {"ANGER": "ANGRER"}
POOL_PER_FOLDER = 500
# The LSD test set as the challenge releases it: a list with the expressions withheld and images
# named without their class; the truth lies outside lsd/ (OUT/truth/), for benches and tests.
LSD_TEST_LIST = "LSD_Challenge_test_set_release.txt"
LSD_TEST_IMAGES = "test_set_images"
LSD_TEST_TRUTH = "truth/lsd_test_truth.txt"
TRAIN_FILE, VAL_FILE = "training_set_annotations.txt", "validation_set_annotations.txt"


@dataclass(frozen=True)
class Scale:
    train_videos: int
    val_videos: int
    train_frames: tuple[int, int]  # frames per training video (min, max)
    val_frames: tuple[int, int]
    seg_len: tuple[int, int]  # frames per expression segment
    lsd_synthetic: int
    lsd_real: int
    lsd_test: int  # the unlabelled test set: real style, as many as the validation set
    pool: int
    videos: int
    video_seconds: float


SCALES: dict[str, Scale] = {
    "tiny": Scale(8, 4, (30, 30), (30, 30), (6, 12), 120, 60, 60, 120, 1, 3.0),
    # small: many short clips (one identity each), so that the MTL splits hold many distinct
    # expression instances (about 1,100 labelled segments in training, at least 30 per class in
    # validation; bench/demo_segments.py counts them) rather than long runs of one face.
    # 6,000 synthetic LSD faces, 20 per real-style validation face (the challenge has 59): at the
    # same optimiser steps one unmasked view scored 0.829 against 0.731 with 1,500 (seed 0).
    "small": Scale(700, 400, (5, 7), (5, 7), (3, 5), 6000, 300, 300, 6000, 2, 8.0),
    "medium": Scale(160, 64, (45, 75), (40, 60), (8, 20), 6000, 1200, 1200, 6000, 4, 12.0),
}


def lsd_counts(total: int, power: float) -> dict[str, int]:
    """Per-class image counts (largest remainder rounding) for `total` images."""
    w = LSD_REAL_COUNTS ** power
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return {name: int(c) for name, c in zip(LSD_CLASSES, counts)}


# ---------------------------------------------------------------------------------------------
# Work items (run in worker processes; each writes its own files)
# ---------------------------------------------------------------------------------------------


def _write_jpeg(path: Path, img: np.ndarray, quality: int) -> None:
    path.write_bytes(scenes.encode_jpeg(img, quality))


def _mtl_video_job(job: dict) -> int:
    tl: Timeline = job["timeline"]
    rng = np.random.default_rng(job["seed"])
    ident = random_identity(rng)
    light = scenes.random_light(rng, "wild")
    look = scenes.random_look(rng, "wild")
    big = 160
    bg = scenes.clutter(rng, big, big, shapes=int(rng.integers(6, 14)), blur=1.2)
    n = len(tl)
    ox = np.clip(24 + smooth_noise(rng, n, 10, 10), 0, big - scenes.CROP).astype(int)
    oy = np.clip(24 + smooth_noise(rng, n, 10, 8), 0, big - scenes.CROP).astype(int)
    folder = Path(job["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        fr = np.random.default_rng([*job["seed"], i])
        back = bg[oy[i]:oy[i] + scenes.CROP, ox[i]:ox[i] + scenes.CROP]
        img = scenes.render_crop(ident, tl.au_state(i), tl.pose_at(i), light, back, look, fr)
        _write_jpeg(folder / f"{i + 1:05d}.jpg", img, look.jpeg)
    return n


def _single_image(style: str, expression: str, seed: list[int]) -> tuple[np.ndarray, int]:
    """One still face crop of `expression` in `style`; returns (image, JPEG quality)."""
    rng = np.random.default_rng(seed)
    ident = random_identity(rng)
    aus = sample_expression(rng, expression, strength=float(rng.uniform(0.5, 1.0)))
    if style == "synthetic":
        pose = scenes.random_pose(rng, yaw=20, pitch=10, roll=4)
        if rng.random() < 0.7:  # mostly a studio backdrop, else a soft out-of-focus scene
            back = scenes.studio(rng, scenes.CROP, scenes.CROP)
        else:
            back = scenes.clutter(rng, scenes.CROP, scenes.CROP, shapes=int(rng.integers(3, 7)), blur=3.5)
    else:
        pose = scenes.random_pose(rng, yaw=30, pitch=15, roll=8)
        back = scenes.clutter(rng, scenes.CROP, scenes.CROP, shapes=int(rng.integers(4, 10)), blur=float(rng.uniform(0.8, 2.5)))
    look = scenes.random_look(rng, style)
    img = scenes.render_crop(ident, aus, pose, scenes.random_light(rng, style), back, look, rng)
    return img, look.jpeg


def _stills_job(job: dict) -> int:
    for item in job["items"]:
        img, q = _single_image(item["style"], item["expression"], item["seed"])
        path = Path(item["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_jpeg(path, img, q)
    return len(job["items"])


def _video_job(job: dict) -> int:
    return render_video(Path(job["path"]), tuple(job["seed"]), job["seconds"])


def _run_job(job: dict) -> tuple[str, int]:
    fn = {"mtl": _mtl_video_job, "stills": _stills_job, "video": _video_job}[job["kind"]]
    return job["part"], fn(job)


@contextlib.contextmanager
def _single_threaded_cv2() -> Iterator[None]:
    """Render in this process like a worker does, then give OpenCV its thread count back."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


# ---------------------------------------------------------------------------------------------
# Planning (main process)
# ---------------------------------------------------------------------------------------------


def _plan_mtl(stage: Path, scale: Scale, seed: int) -> tuple[list[dict], dict[str, MTLAnnotations]]:
    jobs, annotations = [], {}
    vid = 0
    for split in ("train", "val"):
        sid = SPLIT_ID[split]
        rng = np.random.default_rng([seed, STREAM_PLAN, sid])
        deck = Deck(rng)
        n_videos = scale.train_videos if split == "train" else scale.val_videos
        lo, hi = scale.train_frames if split == "train" else scale.val_frames
        timelines, images = [], []
        for _ in range(n_videos):
            name = f"vid{vid:03d}"
            n = int(rng.integers(lo, hi + 1))
            tl = make_timeline(rng, deck, n, seg_len=scale.seg_len, ramp=4, start_neutral=False)
            timelines.append(tl)
            images += [f"{name}/{i + 1:05d}.jpg" for i in range(n)]
            jobs.append({"kind": "mtl", "part": "mtl", "timeline": tl, "seed": [seed, STREAM_MTL, vid],
                         "folder": str(stage / "mtl" / "cropped_aligned" / name), "size": n})
            vid += 1
        va, expr, aus = apply_missing(timelines, rng, MISSING_RATES[split])
        annotations[split] = MTLAnnotations(images=images, valence_arousal=va, expression=expr, aus=aus)
    return jobs, annotations


def _plan_lsd_test(stage: Path, scale: Scale, seed: int) -> tuple[list[dict], LSDSamples]:
    """The test set: validation's class shares and style, new draws, classes in a shuffled order
    so that neither a name nor a position tells the class. Samples: paths as the list names them."""
    counts = lsd_counts(scale.lsd_test, LSD_VAL_POWER)
    classes = np.repeat(np.arange(len(LSD_CLASSES)), list(counts.values()))
    classes = classes[np.random.default_rng([seed, STREAM_PLAN, SPLIT_ID["test"]]).permutation(len(classes))]
    names = [f"test_{k:06d}.jpg" for k in range(len(classes))]
    items = [{"style": "photo", "expression": LSD_CLASSES[c].capitalize(), "seed": [seed, STREAM_LSD_TEST, k],
              "path": str(stage / "lsd" / LSD_TEST_IMAGES / name)} for k, (name, c) in enumerate(zip(names, classes))]
    return items, LSDSamples(paths=[Path(n) for n in names], labels=classes)


def _plan_stills(stage: Path, scale: Scale, seed: int) -> tuple[list[dict], dict, LSDSamples]:
    items_by_part: dict[str, list[dict]] = {"lsd": [], "pool": []}
    counts = {"train": lsd_counts(scale.lsd_synthetic, LSD_TRAIN_POWER), "val": lsd_counts(scale.lsd_real, LSD_VAL_POWER)}
    for split, style, stream, folder in (("train", "synthetic", STREAM_LSD_SYN, "training_set_synthetic_images"),
                                         ("val", "photo", STREAM_LSD_REAL, "validation_set_real_images")):
        k = 0
        for name, c in counts[split].items():
            sub = LSD_TRAIN_FOLDERS.get(name, name) if split == "train" else name
            for j in range(c):
                items_by_part["lsd"].append({
                    "style": style, "expression": name.capitalize(), "seed": [seed, stream, k],
                    "path": str(stage / "lsd" / folder / sub / f"{split}_{k:06d}.jpg"),
                })
                k += 1
    test_items, test = _plan_lsd_test(stage, scale, seed)
    items_by_part["lsd"] += test_items
    counts["test"] = test.class_counts()
    rng = np.random.default_rng([seed, STREAM_POOL])
    styles = rng.choice(scenes.STYLES, size=scale.pool, p=[0.7, 0.15, 0.15])
    exprs = rng.integers(0, len(EXPRESSIONS), scale.pool)
    for k in range(scale.pool):
        items_by_part["pool"].append({
            "style": str(styles[k]), "expression": EXPRESSIONS[int(exprs[k])], "seed": [seed, STREAM_POOL, k],
            "path": str(stage / "pool" / f"part{k // POOL_PER_FOLDER:03d}" / f"{k:06d}.jpg"),
        })
    jobs = []
    chunk = 40
    for part, items in items_by_part.items():
        for i in range(0, len(items), chunk):
            jobs.append({"kind": "stills", "part": part, "items": items[i:i + chunk], "size": len(items[i:i + chunk])})
    return jobs, counts, test


def _plan_videos(stage: Path, scale: Scale, seed: int) -> list[dict]:
    return [{"kind": "video", "part": "videos", "path": str(stage / "videos" / f"demo{k:02d}.mp4"),
             "seed": [seed, STREAM_VIDEO, k], "seconds": scale.video_seconds,
             "size": int(round(scale.video_seconds * 25))} for k in range(scale.videos)]


def _run_jobs(jobs: list[dict], workers: int, on_done: Callable[[str, int], None]) -> None:
    # Biggest first, so two workers finish together.
    jobs = sorted(jobs, key=lambda j: -j["size"] * (6 if j["kind"] == "video" else 1))
    if workers <= 1:
        with _single_threaded_cv2():
            for job in jobs:
                on_done(*_run_job(job))
        return
    # fork: workers need no re-import of the caller's main module (no __main__ guard needed),
    # and they only run numpy/OpenCV code, never torch, so torch threads in the parent are harmless.
    # No cv2.setNumThreads() in the forked workers: after the parent has used OpenCV from several
    # threads (crop-faces, predict, a test session), that call deadlocks in the child.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    with ctx.Pool(workers) as pool:
        for part, n in pool.imap_unordered(_run_job, jobs):
            on_done(part, n)


@dataclass
class DemoPlan:
    """Everything decided before drawing: the labels and the render jobs (files under `stage`)."""

    scale: str
    seed: int
    jobs: list[dict]
    annotations: dict[str, MTLAnnotations]  # "train", "val"
    lsd: dict[str, dict[str, int]]  # "train", "val", "test" -> class -> count
    lsd_test: LSDSamples  # the test images as the release list names them, with their classes

    def totals(self) -> dict[str, int]:
        """Items per part (MTL frames, LSD images, pool faces, videos)."""
        out: dict[str, int] = {}
        for j in self.jobs:
            out[j["part"]] = out.get(j["part"], 0) + (1 if j["kind"] == "video" else j["size"])
        return out


def plan_demo(stage: Path | str, scale: str = "small", seed: int = 0) -> DemoPlan:
    """The labels and render jobs of a demo set (cheap: nothing is drawn)."""
    if scale not in SCALES:
        raise ValueError(f"unknown demo scale {scale!r}; expected one of {', '.join(SCALES)}")
    stage, sc = Path(stage), SCALES[scale]
    mtl_jobs, annotations = _plan_mtl(stage, sc, seed)
    still_jobs, lsd, lsd_test = _plan_stills(stage, sc, seed)
    return DemoPlan(scale, seed, mtl_jobs + still_jobs + _plan_videos(stage, sc, seed), annotations, lsd, lsd_test)


def run_job(job: dict) -> int:
    """Draw one job's files (an MTL clip, a batch of stills or a video); returns the item count."""
    with _single_threaded_cv2():
        return _run_job(job)[1]


def generate_demo(out: Path | str, scale: str = "small", seed: int = 0, workers: int | None = None,
                  overwrite: bool = False, show_progress: bool = False) -> dict:
    """Render the demo data set into `out`; returns a summary of what was made (also written to
    OUT/demo_summary.json). Refuses to replace existing parts unless `overwrite`."""
    if scale not in SCALES:
        raise ValueError(f"unknown demo scale {scale!r}; expected one of {', '.join(SCALES)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"demo output {out} is a file, not a folder")
    existing = [p for p in PARTS if (out / p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass overwrite=True (--force) to replace them")
    sc = SCALES[scale]
    workers = max(1, min(os.cpu_count() or 1, 2) if workers is None else workers)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    try:
        plan = plan_demo(stage, scale, seed)
        (stage / "videos").mkdir(parents=True)
        _render(plan.jobs, plan.totals(), workers, show_progress)
        for split, fname in (("train", TRAIN_FILE), ("val", VAL_FILE)):
            write_mtl_annotations(stage / "mtl" / fname, plan.annotations[split])
        test_images = plan.lsd_test.relative_keys()
        write_lsd_test_release(stage / "lsd" / LSD_TEST_LIST, test_images)
        write_lsd_submission(stage / LSD_TEST_TRUTH, test_images, plan.lsd_test.labels)
        write_contact_sheets(stage, plan.annotations)
        for part in PARTS:
            if (out / part).exists():
                shutil.rmtree(out / part)
            os.replace(stage / part, out / part)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    summary = {
        "scale": scale, "seed": seed,
        "scale_config": asdict(sc),
        "mtl": {split: ann.label_counts() | {"videos": len({i.split('/')[0] for i in ann.images})}
                for split, ann in plan.annotations.items()},
        "lsd": {"train": plan.lsd["train"], "val": plan.lsd["val"], "test": plan.lsd["test"],
                "train_folders": {LSD_TRAIN_FOLDERS.get(k, k): v for k, v in plan.lsd["train"].items()},
                "test_list": f"lsd/{LSD_TEST_LIST}", "test_images": f"lsd/{LSD_TEST_IMAGES}", "test_truth": LSD_TEST_TRUTH},
        "pool": sc.pool,
        "videos": [{"name": Path(j["path"]).name, "frames": j["size"], "fps": 25} for j in plan.jobs if j["kind"] == "video"],
        "workers": workers,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("demo data (%s, seed %d) written to %s in %.1f s", scale, seed, out, summary["seconds"])
    return summary


def _render(jobs: list[dict], totals: dict[str, int], workers: int, show_progress: bool) -> None:
    labels_ = {"mtl": "MTL frames", "lsd": "LSD images", "pool": "pool faces", "videos": "videos"}
    if not show_progress:
        _run_jobs(jobs, workers, lambda part, n: None)
        return
    from abaw_cli.progress import make_progress

    with make_progress() as progress:
        tasks = {p: progress.add_task(labels_[p], total=t) for p, t in totals.items()}
        _run_jobs(jobs, workers, lambda part, n: progress.advance(tasks[part], n if part != "videos" else 1))
