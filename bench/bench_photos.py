"""Photos at video speed: `abaw predict` on the same face photos at 1350 px and at 640 px.

    .venv/bin/python bench/bench_photos.py                     # 24 photos, cpu
    .venv/bin/python bench/bench_photos.py --photos 48 --device cuda --model runs/pipeline/train-mtl/best.pt

The photos are real faces that ship with scikit-image: the astronaut (skimage.data.astronaut) and
the 100 faces of skimage.data.lfw_subset (25 px crops, upscaled), each placed at a random spot and
size on a 1350x1350 scene (skimage's coffee and rocket photos); the 640 px photos are the same
pictures scaled down (area averaging), saved as JPEG like the 1350 px ones.

Measured in one run (fastest of --repeats, the two sizes alternating):
1. photos/s of predict's photo path (predict.pipeline.predict_source: decode thread -> MTCNN on a
   copy of at most 640 px -> alignment from the full-resolution image -> batched model -> table)
   at 1350 px and at 640 px, and their ratio (goal >= 0.8);
2. the face boxes found at 1350 px, scaled to 640 px, against those found at 640 px: mean and
   smallest IoU (goal >= 0.9), and the share of photos with a face at each size;
3. for reference, MTCNN alone on decoded frames: 640 px, 1350 px searched at full resolution (what
   predict did before) and 1350 px searched on the 640 px copy.
The model is --model, else a randomly initialised cpu-small EMMA (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from predict import random_init_checkpoint  # noqa: E402  (bench/predict.py)

from abaw_cli.data.formats import read_prediction_table  # noqa: E402
from abaw_cli.faces.detector import PHOTO_DETECT_SIDE, FaceDetector  # noqa: E402
from abaw_cli.faces.sources import expand_inputs  # noqa: E402
from abaw_cli.faces.tracker import box_iou  # noqa: E402
from abaw_cli.predict.batching import FacePredictor  # noqa: E402
from abaw_cli.predict.pipeline import SourceOutputs, VideoOptions, predict_source  # noqa: E402
from abaw_cli.runtime import resolve_device  # noqa: E402

BIG, SMALL = 1350, 640


def face_pictures(n: int) -> list[np.ndarray]:
    """n RGB face pictures: the astronaut every 4th, LFW faces between (grey, upscaled to 250 px)."""
    from skimage import data

    lfw = data.lfw_subset()[:100]  # the first 100 are faces, the rest are not
    out = []
    for i in range(n):
        if i % 4 == 0:
            out.append(data.astronaut())
        else:
            grey = cv2.resize((lfw[i % 100] * 255).astype(np.uint8), (250, 250), interpolation=cv2.INTER_CUBIC)
            out.append(np.repeat(grey[..., None], 3, axis=2))
    return out


def scenes() -> list[np.ndarray]:
    """Backgrounds without faces that ship with scikit-image: a coffee table, a rocket launch."""
    from skimage import data

    return [data.coffee(), data.rocket()]


def make_photos(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """folder/1350/*.jpg and folder/640/*.jpg: the same n pictures at both sizes."""
    rng = np.random.default_rng(seed)
    big_dir, small_dir = folder / str(BIG), folder / str(SMALL)
    big_dir.mkdir(parents=True)
    small_dir.mkdir(parents=True)
    backgrounds = scenes()
    for i, face in enumerate(face_pictures(n)):
        canvas = cv2.resize(backgrounds[i % len(backgrounds)], (BIG, BIG), interpolation=cv2.INTER_CUBIC)
        side = int(rng.integers(380, 700))
        x, y = (int(v) for v in rng.integers(0, BIG - side, 2))
        canvas[y : y + side, x : x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(big_dir / f"photo{i:03d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
        small = cv2.resize(bgr, (SMALL, SMALL), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(small_dir / f"photo{i:03d}.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return big_dir, small_dir


def run_photos(folder: Path, detector: FaceDetector, predictor: FacePredictor, table: Path) -> float:
    """Seconds for predict's photo path over the folder (one images source), table written."""
    (source,), _ = expand_inputs([folder])
    started = time.perf_counter()
    summary = predict_source(source, detector, predictor, SourceOutputs(table), VideoOptions(batch=16))
    seconds = time.perf_counter() - started
    assert summary.frames == len(source.images), summary
    return seconds


def boxes_by_photo(table: Path, scale: float) -> dict[str, np.ndarray]:
    t = read_prediction_table(table)
    return {
        Path(img).name: np.array([t[c][i] for c in ("x1", "y1", "x2", "y2")]) * scale
        for i, img in enumerate(t["image"]) if t["face"][i] == 1
    }


def detector_only(detector: FaceDetector, folder: Path, max_side: int | None) -> float:
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.glob("*.jpg"))]
    started = time.perf_counter()
    for i in range(0, len(frames), detector.batch):
        detector.detect(frames[i : i + detector.batch], max_side)
    return len(frames) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, default=None, help="a best.pt (default: random-init cpu-small EMMA)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 steadies the numbers on a shared machine)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench-photos-") as tmp:
        work = Path(tmp)
        big_dir, small_dir = make_photos(work / "photos", args.photos)
        model = args.model or random_init_checkpoint(work / "cpu-small-random.pt", "cpu-small")
        predictor = FacePredictor.from_checkpoint(model, device)
        detector = FaceDetector(device=device)
        run_photos(small_dir, detector, predictor, work / "warm.csv")  # warm-up: first calls, allocator
        times = {BIG: [], SMALL: []}
        for r in range(args.repeats):
            for size, folder in ((BIG, big_dir), (SMALL, small_dir)):
                times[size].append(run_photos(folder, detector, predictor, work / f"{size}-{r}.csv"))
        fps = {size: args.photos / min(t) for size, t in times.items()}
        big_boxes = boxes_by_photo(work / f"{BIG}-0.csv", SMALL / BIG)
        small_boxes = boxes_by_photo(work / f"{SMALL}-0.csv", 1.0)
        common = sorted(set(big_boxes) & set(small_boxes))
        ious = [float(box_iou(big_boxes[k][None], small_boxes[k][None])[0, 0]) for k in common]
        reference = {
            "detector_640_fps": detector_only(detector, small_dir, None),
            "detector_1350_full_resolution_fps": detector_only(detector, big_dir, None),
            f"detector_1350_on_{PHOTO_DETECT_SIDE}_copy_fps": detector_only(detector, big_dir, PHOTO_DETECT_SIDE),
        }
    result = {
        "device": str(device), "photos": args.photos, "torch_threads": torch.get_num_threads(),
        "photos_per_s_1350": fps[BIG], "photos_per_s_640": fps[SMALL], "ratio_1350_over_640": fps[BIG] / fps[SMALL],
        "face_found_1350": len(big_boxes) / args.photos, "face_found_640": len(small_boxes) / args.photos,
        "box_iou_mean": float(np.mean(ious)) if ious else 0.0, "box_iou_min": float(np.min(ious)) if ious else 0.0,
        "all_seconds": {str(k): [round(t, 3) for t in v] for k, v in times.items()}, **reference,
    }
    print(f"photos/s: {fps[BIG]:.2f} at {BIG} px, {fps[SMALL]:.2f} at {SMALL} px -> ratio {result['ratio_1350_over_640']:.3f} (goal >= 0.8)")
    print(f"box IoU 1350 vs 640: mean {result['box_iou_mean']:.3f}, min {result['box_iou_min']:.3f} (goal >= 0.9); "
          f"faces found {result['face_found_1350']:.0%} / {result['face_found_640']:.0%}")
    print("MTCNN alone, photos/s: " + ", ".join(f"{k} {v:.2f}" for k, v in reference.items()))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
