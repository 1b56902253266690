"""MAE pretraining throughput end to end (data path + step), with and without the in-memory face cache.

Runs `pretrain-mae --preset cpu-small` for a few optimiser steps per variant on the given face
folders and reports the median images/s of the engine's log rows (the first row, which pays for
start-up, is dropped), the seconds spent building the cache, and the step alone for reference
(bench_mae.py measures that in detail). Variants: cache off/on x DataLoader workers; the engine
gives the training loop the cores the workers leave (engine.cpu_training_threads).

    python bench/bench_mae_data.py runs/demo/pool runs/demo/mtl/cropped_aligned --steps 60
    python bench/bench_mae_data.py DATA... --variants off:2 on:0
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_cli.data import images  # noqa: E402
from abaw_cli.data.images import FaceImages, find_images  # noqa: E402
from abaw_cli.train.mae import pretrain_mae  # noqa: E402
from abaw_cli.train.engine import cpu_training_threads  # noqa: E402


def run(data: list[Path], cache: bool, workers: int, steps: int, work: Path) -> dict:
    saved = images.DEFAULT_CACHE_BYTES
    images.DEFAULT_CACHE_BYTES = saved if cache else 0
    try:
        out = work / f"cache-{cache}-w{workers}"
        t0 = time.perf_counter()
        pretrain_mae(data, out, "cpu-small", overrides={"optim.max_steps": steps, "optim.num_workers": workers,
                                                         "optim.log_every_steps": 5, "optim.checkpoint_every_steps": 0,
                                                         "optim.device": "cpu"})
        wall = time.perf_counter() - t0
    finally:
        images.DEFAULT_CACHE_BYTES = saved
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]
    ips = [r["images_per_s"] for r in rows if r.get("type") == "step"][1:]
    return {"cache": cache, "workers": workers, "threads": cpu_training_threads(workers), "steps": steps,
            "images_per_s": statistics.median(ips), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--variants", nargs="+", default=["off:2", "on:0", "on:1"], help="cache:workers pairs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    paths = find_images(args.data)
    t0 = time.perf_counter()
    faces = FaceImages(paths, 112, train=True)
    build = time.perf_counter() - t0
    mib = sum(f.numel() for f in faces.faces.cache) / 2**20
    print(f"{len(paths)} faces; cache: {len(faces.faces.cache)} faces, {mib:.0f} MiB, built in {build:.1f} s")
    del faces
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in args.variants:
            c, w = v.split(":")
            r = run(args.data, c == "on", int(w), args.steps, Path(tmp))
            results.append(r)
            print(f"cache {'on ' if r['cache'] else 'off'}  workers {r['workers']}  threads {r['threads']}: "
                  f"{r['images_per_s']:6.1f} img/s (median), {r['wall_s']:.1f} s for {r['steps']} steps", flush=True)
    base = results[0]["images_per_s"]
    for r in results[1:]:
        print(f"  cache {'on' if r['cache'] else 'off'} / {r['workers']} workers vs the first variant: {r['images_per_s'] / base:.2f}x")


if __name__ == "__main__":
    main()
