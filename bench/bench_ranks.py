"""crop-faces and predict spread over ranks: sources/s with `torchrun --nproc_per_node=N` for each N.

    .venv/bin/python bench/bench_ranks.py                      # N = 1 and 2 on CPU, 8 videos
    .venv/bin/python bench/bench_ranks.py --nprocs 1,2,4 --device cuda --videos 32

The sources are --videos synthetic 640x360 videos of --frames frames (the scikit-image astronaut
moving across a grey frame; bench_crop_faces.synthetic_video). Each command runs as a user runs it,
`torchrun --standalone --nproc_per_node=N -m abaw_cli ...` into a fresh output folder, so the
wall time includes starting N processes and loading MTCNN (and the model) in each; sources/s =
videos / wall seconds, and the ratio is against N = 1 measured in the same run. On a CPU each
rank runs torch on cores // N threads (runtime.cores_per_rank, fewer while other processes keep
cores busy), so the ratio says what spreading sources buys over one process using the same cores.
predict uses --model, else a randomly initialised cpu-small EMMA (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_crop_faces import synthetic_video  # noqa: E402
from predict import random_init_checkpoint  # noqa: E402  (bench/predict.py)

TORCHRUN = Path(sys.executable).parent / "torchrun"


def timed_torchrun(nproc: int, args: list[str]) -> float:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "-m", "abaw_cli", *args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--nprocs", default="1,2", help="comma list of ranks per run (the first is the reference)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    nprocs = [int(n) for n in args.nprocs.split(",")]
    results: dict[str, dict[int, dict[str, float]]] = {"crop-faces": {}, "predict": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ranks-") as tmp:
        work = Path(tmp)
        videos = work / "videos"
        videos.mkdir()
        for i in range(args.videos):
            synthetic_video(videos / f"clip{i:02d}.mp4", frames=args.frames)
        model = args.model or random_init_checkpoint(work / "cpu-small-random.pt", "cpu-small")
        for n in nprocs:
            crop_s = timed_torchrun(n, ["crop-faces", str(videos), "--out", str(work / f"crops-{n}"), "--device", args.device])
            pred_s = timed_torchrun(n, ["predict", str(videos), "--model", str(model), "--out", str(work / f"preds-{n}"), "--device", args.device])
            for stage, seconds in (("crop-faces", crop_s), ("predict", pred_s)):
                results[stage][n] = {"seconds": seconds, "sources_per_s": args.videos / seconds}
                print(f"{stage:10s} {n} rank(s): {seconds:6.1f} s, {args.videos / seconds:.3f} sources/s", flush=True)
    base = nprocs[0]
    for stage, by_n in results.items():
        for n, r in by_n.items():
            r["ratio_vs_first"] = r["sources_per_s"] / by_n[base]["sources_per_s"]
        print(f"{stage}: " + ", ".join(f"{n} ranks x{r['ratio_vs_first']:.2f}" for n, r in by_n.items()) + f" (vs {base})")
    summary = {"device": args.device, "videos": args.videos, "frames": args.frames, "cpu_count": os.cpu_count(), "results": results}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
