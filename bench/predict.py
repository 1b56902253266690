"""bench/predict: how fast `abaw predict` streams a video, what --detect-every costs, whether memory
stays flat, and whether a briefly trained model agrees with the demo video's truth.

    .venv/bin/python bench/predict.py                        # CPU; CUDA section too when present
    .venv/bin/python bench/predict.py --model runs/pipeline/train-mtl/best.pt --video clip.mp4
    .venv/bin/python bench/predict.py --model runs/pipeline/cotrain/best.pt --skip-memory   # LSD classes
    .venv/bin/python bench/predict.py --cuda-only            # the GPU numbers only (paper model)

Measured in one run, printed, and saved to runs/bench-predict/predict_bench.json:
1. end-to-end frames/s of predict on the demo video (decode thread -> MTCNN -> align -> batched
   model -> smoothing -> table), with the threads `abaw predict` chooses (runtime.cpu_threads and
   a detector that shares cores: the cores other processes leave free), and its ratio to the
   throughput of the detector alone plus the model alone on the same frames, each at its fastest
   torch thread count from 1 to the cores of this process: 1 / (t_detector + t_model) (goal
   >= 0.9: decoding, alignment and writing hidden behind the two networks, and predict picking
   their best threads); the ratio is taken within each repeat and its median printed (a
   neighbour whose load comes and goes makes a best-of-all ratio compare a quiet moment with a busy
   one), the times are the best of the repeats;
2. the frames/s of --detect-every 5, and what it costs: expression labels and boxes compared with
   full detection, and each run's agreement with the truth;
3. expression agreement with the demo truth against chance (majority class, and 1/classes); a
   cotrain (LSD) model is scored on the frames whose truth is one of its 6 classes;
4. peak RSS of a predict process on the video and on the same video looped 10 times (goal: within 10%);
5. on CUDA: the same throughput numbers with the `paper` model (ViT-B/16 at 224 + fer prior, random
   init: speed does not depend on the weights).
The model is --model, else runs/pipeline/train-mtl/best.pt (make pipeline's cpu-small model), else a
cpu-small model trained here for --train-steps steps on the demo data (cached in runs/bench-predict).
Timings take the fastest of --repeats runs: on a shared machine the others measure the neighbours.
--load N runs a busy process (a torch matmul loop on N threads) beside the throughput runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
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

from abaw_cli.data.formats import read_prediction_table  # noqa: E402
from abaw_cli.faces.align import align_face  # noqa: E402
from abaw_cli.faces.detector import FaceDetector  # noqa: E402
from abaw_cli.faces.sources import expand_inputs  # noqa: E402
from abaw_cli.faces.video import VideoReader  # noqa: E402
from abaw_cli.labels import EXPRESSIONS, expression_index  # noqa: E402
from abaw_cli.predict.batching import FacePredictor  # noqa: E402
from abaw_cli.predict.pipeline import CROP_SIZE, SourceOutputs, VideoOptions, predict_source  # noqa: E402
from abaw_cli.runtime import cores_per_rank, cpu_threads, resolve_device  # noqa: E402
from bench_crop_faces import busy_process, thread_counts  # noqa: E402

RUNS = ROOT / "runs" / "bench-predict"
log = logging.getLogger("bench.predict")


# ---------------------------------------------------------------------------------------------
# Inputs: demo data, a model
# ---------------------------------------------------------------------------------------------


def ensure_demo(scale: str) -> Path:
    from abaw_cli.data.demo import generate_demo

    root = RUNS / f"demo-{scale}"
    if not (root / "videos").is_dir():
        print(f"rendering the {scale} demo set into {root} ...", flush=True)
        generate_demo(root, scale=scale, seed=0)
    return root


def ensure_model(args, demo: Path) -> Path:
    if args.model:
        return Path(args.model)
    pipeline_model = ROOT / "runs" / "pipeline" / "train-mtl" / "best.pt"
    if pipeline_model.is_file():
        return pipeline_model
    out = RUNS / f"cpu-small-mtl-{args.train_steps}"
    if not (out / "best.pt").is_file():
        from abaw_cli.train.mtl import train_mtl

        print(f"training a cpu-small EMMA for {args.train_steps} steps on {demo / 'mtl'} ...", flush=True)
        started = time.perf_counter()
        train_mtl(out, "cpu-small", overrides={
            "data.root": str(demo / "mtl"), "init": "none", "optim.max_steps": args.train_steps, "optim.epochs": 1000,
        })
        print(f"  trained in {time.perf_counter() - started:.0f} s", flush=True)
    return out / "best.pt"


def random_init_checkpoint(path: Path, preset: str = "paper") -> Path:
    """A randomly initialised EMMA of a train-mtl preset (paper: ViT-B/16 at 224; fer prior) saved
    as a best.pt: for speed measurements, which do not depend on the weights."""
    from abaw_cli.config import load_config
    from abaw_cli.labels import AUS
    from abaw_cli.models.emma import EMMA, emma_model_config
    from abaw_cli.models.priors import build_prior
    from abaw_cli.models.vit import resolve_vit_config, vit_from_config
    from abaw_cli.train.mtl import STAGE, TrainMTLConfig
    from abaw_cli.train.checkpoint import make_checkpoint, save_atomic

    cfg = load_config(TrainMTLConfig, STAGE, preset, {"init": "none"})
    vit = resolve_vit_config(cfg.model, None, preset)
    prior = build_prior(cfg.model.prior)
    m = cfg.model
    model_config = emma_model_config(vit, prior, m.head_hidden, m.va_hidden, m.va_input)
    model = EMMA(vit_from_config(vit), prior, model_config["head_hidden"], m.va_hidden, m.va_input)
    meta = {"input_size": int(m.input_size), "expressions": list(EXPRESSIONS), "aus": list(AUS), "au_thresholds": [0.5] * len(AUS)}
    save_atomic(make_checkpoint("mtl", model_config, model.state_dict(), meta=meta), path)
    return path


def _video_frames(video: Path) -> int:
    cap = cv2.VideoCapture(str(video))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n


def looped_video(video: Path, loops: int, out: Path) -> Path:
    """`video` concatenated `loops` times (same size and rate), written with OpenCV."""
    if out.is_file():
        return out
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    h, w = frames[0].shape[:2]
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for _ in range(loops):
        for frame in frames:
            writer.write(frame)
    writer.release()
    tmp.replace(out)
    return out


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def component_times(video: Path, detector: FaceDetector, predictor: FacePredictor, batch: int, threads: int) -> dict:
    """Seconds of the detector alone and the model alone on the video's frames (decoded beforehand),
    on `threads` torch threads (0: as set, on a GPU)."""
    frames = [f.rgb for f in VideoReader(video)]
    device = predictor.device
    with cpu_threads(device, threads):
        detector.detect(frames[: detector.batch])  # warm-up (CUDA kernels, allocator, a new thread team)
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        detections = []
        for i in range(0, len(frames), detector.batch):
            detections += detector.detect(frames[i : i + detector.batch])
        _sync(device)
        t_detector, c_detector = time.perf_counter() - t, time.process_time() - c
        crops = [align_face(f, d.landmarks[0], CROP_SIZE)[0] for f, d in zip(frames, detections) if len(d)]
        predictor(np.stack(crops[:batch]))
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        for i in range(0, len(crops), batch):
            predictor(np.stack(crops[i : i + batch]))
        _sync(device)
        t_model, c_model = time.perf_counter() - t, time.process_time() - c
    return {"threads": threads, "frames": len(frames), "faces": len(crops), "detector_s": t_detector, "model_s": t_model,
            "detector_cpu_s": c_detector, "model_cpu_s": c_model}


def end_to_end(video: Path, detector: FaceDetector, predictor: FacePredictor, options: VideoOptions, table: Path) -> dict:
    source = expand_inputs([video])[0][0]
    c = time.process_time()
    with cpu_threads(predictor.device):  # as run_predict() runs it
        summary = predict_source(source, detector, predictor, SourceOutputs(table), options)
    threads = detector.threads.threads if detector.threads else 0  # the count it ended on
    return {"frames": summary.frames, "faces": summary.faces, "seconds": summary.seconds, "fps": summary.fps,
            "cpu_s": time.process_time() - c, "threads": threads}


def throughput(video: Path, model: Path, device: torch.device, batch: int, repeats: int, workdir: Path, min_face: int) -> dict:
    predictor = FacePredictor.from_checkpoint(model, device)
    fixed = FaceDetector(device=device, min_face=min_face)  # leaves the thread count to us
    detector = FaceDetector(device=device, min_face=min_face, share_cores=True)  # as run_predict() builds it
    counts = thread_counts(device)
    comps: list[dict] = []
    runs: dict[int, list[dict]] = {1: [], 5: []}
    for r in range(repeats):
        comps += [component_times(video, fixed, predictor, batch, n) for n in counts]
        for k in (1, 5):
            runs[k].append(end_to_end(video, detector, predictor, VideoOptions(detect_every=k, batch=batch), workdir / f"k{k}.csv"))
        took = ", ".join(f"{c['threads']} threads: {c['detector_s']:.2f} + {c['model_s']:.2f} s" for c in comps[-len(counts):])
        print(f"  repeat {r + 1}/{repeats}: detector + model {took}; end-to-end {runs[1][-1]['seconds']:.2f} s "
              f"({runs[1][-1]['threads']} threads), detect-every 5 {runs[5][-1]['seconds']:.2f} s", flush=True)
    best_det = min(comps, key=lambda c: c["detector_s"])
    best_model = min(comps, key=lambda c: c["model_s"])
    e2e = min(runs[1], key=lambda x: x["seconds"])
    e2e5 = min(runs[5], key=lambda x: x["seconds"])
    frames = e2e["frames"]
    bound_s = best_det["detector_s"] + best_model["model_s"]
    per_repeat = [comps[r * len(counts) : (r + 1) * len(counts)] for r in range(repeats)]
    ratios = [(min(c["detector_s"] for c in cs) + min(c["model_s"] for c in cs)) / run["seconds"] for cs, run in zip(per_repeat, runs[1])]
    return {
        "device": str(device), "model": str(model), "classes": predictor.space.classes,
        "input_size": predictor.space.input_size, "batch": batch,
        "detector_batch": detector.batch, "frames": frames, "faces": e2e["faces"],
        "detector_only_s": best_det["detector_s"], "model_only_s": best_model["model_s"],
        "detector_threads": best_det["threads"], "model_threads": best_model["threads"],
        "detector_s_by_threads": {n: min(c["detector_s"] for c in comps if c["threads"] == n) for n in counts},
        "model_s_by_threads": {n: min(c["model_s"] for c in comps if c["threads"] == n) for n in counts},
        "detector_fps": frames / best_det["detector_s"], "model_faces_per_s": best_model["faces"] / best_model["model_s"],
        "bound_fps": frames / bound_s,
        "end_to_end_s": e2e["seconds"], "end_to_end_fps": e2e["fps"], "end_to_end_threads": e2e["threads"],
        "ratio_to_detector_plus_model": float(np.median(ratios)), "ratios": ratios,
        "detect_every_5_fps": e2e5["fps"], "detect_every_5_gain": e2e5["fps"] / e2e["fps"],
        "repeats": repeats,
        # Process CPU seconds (all threads, decoding included): a check that needs no quiet machine.
        "cpu_seconds": {"detector": best_det["detector_cpu_s"], "model": best_model["model_cpu_s"],
                        "end_to_end": min(x["cpu_s"] for x in runs[1]), "detect_every_5": min(x["cpu_s"] for x in runs[5])},
        "all_runs": {"components": comps, "k1": runs[1], "k5": runs[5]},
    }


def agreement(table_k1: Path, table_k5: Path, truth_csv: Path, model_classes: tuple[str, ...]) -> dict:
    a, b = read_prediction_table(table_k1), read_prediction_table(table_k5)
    truth = np.genfromtxt(truth_csv, delimiter=",", names=True)
    n = min(len(a["frame"]), len(truth))
    true_expr = truth["expression"][:n].astype(int)
    # The model's own classes as MTL expression indices: all 8 for EMMA, 6 for an LSD (cotrain)
    # model, which is scored on the frames whose truth is one of its classes only.
    classes = [expression_index(c) for c in model_classes]
    scored = np.isin(true_expr, classes)
    out = {}
    for name, t in (("full_detection", a), ("detect_every_5", b)):
        face = t["face"][:n] == 1
        pred = np.array([expression_index(e) if e else -1 for e in t["expression"][:n]])
        labelled = face & scored
        out[f"{name}_truth_agreement"] = float((pred[labelled] == true_expr[labelled]).mean()) if labelled.any() else float("nan")
        out[f"{name}_face_rate"] = float(face.mean())
    labelled = (a["face"][:n] == 1) & scored
    counts = np.bincount(true_expr[labelled], minlength=len(EXPRESSIONS))
    out["chance_majority_class"] = float(counts.max() / max(counts.sum(), 1))
    out["majority_class"] = EXPRESSIONS[int(counts.argmax())]
    out["chance_uniform"] = 1.0 / len(classes)
    out["labelled_frames"] = int(labelled.sum())
    both = (a["face"] == 1) & (b["face"] == 1)
    out["k5_vs_k1_same_expression"] = float((a["expression"][both] == b["expression"][both]).mean())
    box_a = np.stack([a[c][both] for c in ("x1", "y1", "x2", "y2")], 1)
    box_b = np.stack([b[c][both] for c in ("x1", "y1", "x2", "y2")], 1)
    iw = np.clip(np.minimum(box_a[:, 2], box_b[:, 2]) - np.maximum(box_a[:, 0], box_b[:, 0]), 0, None)
    ih = np.clip(np.minimum(box_a[:, 3], box_b[:, 3]) - np.maximum(box_a[:, 1], box_b[:, 1]), 0, None)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    iou = iw * ih / (area(box_a) + area(box_b) - iw * ih)
    out["k5_vs_k1_box_iou_mean"] = float(iou.mean())
    if "valence" in a:  # EMMA tables; an LSD model predicts classes only
        out["k5_vs_k1_valence_mae"] = float(np.abs(a["valence"][both] - b["valence"][both]).mean())
    return out


def peak_rss_mb(video: Path, model: Path, device: str, workdir: Path, min_face: int) -> dict:
    """Run predict (table + overlay + 0.5 s smoothing) in a fresh process; its peak RSS."""
    cmd = [sys.executable, __file__, "--rss-child", str(video), "--model", str(model), "--device", device,
           "--workdir", str(workdir), "--min-face", str(min_face)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def rss_child(args) -> None:
    from abaw_cli.predict.run import PredictRequest, run_predict

    logging.disable(logging.WARNING)
    out = Path(args.workdir)
    report = run_predict(PredictRequest(
        inputs=[args.rss_child], model=Path(args.model), out=out / "rss.csv", overlay=out / "rss.mp4",
        smooth_s=0.5, device=args.device, min_face=args.min_face,
    ))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"frames": report.sources[0].frames, "peak_rss_mb": peak_kb / 1024, "seconds": report.seconds}))


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="train-mtl or cotrain best.pt for the CPU numbers (default: see above)")
    parser.add_argument("--video", help="video with a <name>.csv truth beside it (default: the demo video)")
    parser.add_argument("--demo-scale", default="small", help="demo set to render when no --video/--model is given")
    parser.add_argument("--train-steps", type=int, default=400, help="steps of the cpu-small model trained when none exists")
    parser.add_argument("--batch", type=int, default=16, help="faces per model batch on the CPU (GPU: 128)")
    parser.add_argument("--min-face", type=int, default=20)
    parser.add_argument("--loops", type=int, default=10)
    parser.add_argument("--memory-video", help="video for the RSS check (default: --video)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cuda-only", action="store_true", help="only the CUDA section")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--load", type=int, default=0, help="run a busy process on this many threads beside the throughput runs")
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args)
        return
    RUNS.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    demo = None if args.video else ensure_demo(args.demo_scale)
    video = Path(args.video) if args.video else sorted((demo / "videos").glob("*.mp4"))[0]
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    print(f"video: {video}", flush=True)

    if not args.cuda_only:
        model = ensure_model(args, demo or RUNS)
        print(f"== CPU throughput ({model}); {cores_per_rank()} cores; busy neighbour: "
              f"{f'{args.load} threads' if args.load else 'none'}; load average {os.getloadavg()[0]:.2f}", flush=True)
        with busy_process(args.load):
            cpu = throughput(video, model, torch.device("cpu"), args.batch, args.repeats, work, args.min_face)
            cpu["load_threads"], cpu["load_average_end"] = args.load, os.getloadavg()[0]
        print(f"  load average at the end {cpu['load_average_end']:.2f}", flush=True)
        results["cpu"] = cpu
        truth = video.with_suffix(".csv")
        if truth.is_file():
            results["agreement"] = agreement(work / "k1.csv", work / "k5.csv", truth, cpu["classes"])
        if not args.skip_memory:
            print(f"== peak RSS: video vs looped x{args.loops}", flush=True)
            mem_video = Path(args.memory_video) if args.memory_video else video
            looped = looped_video(mem_video, args.loops, RUNS / f"{mem_video.stem}_{_video_frames(mem_video)}f_x{args.loops}.mp4")
            one = peak_rss_mb(mem_video, model, "cpu", work, args.min_face)
            many = peak_rss_mb(looped, model, "cpu", work, args.min_face)
            results["memory"] = {"video": one, "looped": many, "loops": args.loops,
                                 "ratio": many["peak_rss_mb"] / one["peak_rss_mb"]}

    if torch.cuda.is_available():
        print("== CUDA throughput (paper model, random init)", flush=True)
        paper = random_init_checkpoint(RUNS / "paper-random-init.pt")
        results["cuda"] = throughput(video, paper, resolve_device("cuda"), 128, args.repeats, work, args.min_face)
        results["cuda"]["gpu"] = torch.cuda.get_device_name()

    (RUNS / "predict_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    report(results)


def report(r: dict) -> None:
    for key in ("cpu", "cuda"):
        if key not in r:
            continue
        t = r[key]
        print(f"\n[{key}] {t['frames']} frames, {t['faces']} faces, model input {t['input_size']}, batch {t['batch']}, "
              f"detector batch {t['detector_batch']}{', ' + t['gpu'] if 'gpu' in t else ''}")
        by = lambda key: ", ".join(f"{n}: {v:.2f} s" for n, v in t[key].items())  # noqa: E731
        print(f"  detector alone       {t['detector_only_s']:.2f} s  ({t['detector_fps']:.1f} frames/s, {t['detector_threads']} threads; "
              f"by threads {by('detector_s_by_threads')})")
        print(f"  model alone          {t['model_only_s']:.2f} s  ({t['model_faces_per_s']:.1f} faces/s, {t['model_threads']} threads; "
              f"by threads {by('model_s_by_threads')})")
        print(f"  1/(det + model)      {t['bound_fps']:.1f} frames/s  (each at its fastest thread count)")
        print(f"  end to end           {t['end_to_end_s']:.2f} s  ({t['end_to_end_fps']:.1f} frames/s, ended on {t['end_to_end_threads']} threads)")
        print(f"  ratio e2e / (det+model) = {t['ratio_to_detector_plus_model']:.3f}   (goal >= 0.9; median of the repeats' "
              f"{', '.join(f'{x:.3f}' for x in t['ratios'])})")
        print(f"  --detect-every 5     {t['detect_every_5_fps']:.1f} frames/s  (x{t['detect_every_5_gain']:.2f})")
        c = t["cpu_seconds"]
        print(f"  CPU seconds: detector {c['detector']:.1f} + model {c['model']:.1f} = {c['detector'] + c['model']:.1f} vs "
              f"end to end {c['end_to_end']:.1f} (ratio {(c['detector'] + c['model']) / c['end_to_end']:.3f}); detect-every 5 {c['detect_every_5']:.1f}")
    if "agreement" in r:
        a = r["agreement"]
        print(f"\n[agreement] {a['labelled_frames']} frames labelled with one of the model's classes")
        print(f"  expression vs truth: full detection {a['full_detection_truth_agreement']:.3f}, "
              f"detect-every 5 {a['detect_every_5_truth_agreement']:.3f}; chance: majority class "
              f"({a['majority_class']}) {a['chance_majority_class']:.3f}, uniform {a['chance_uniform']:.3f}")
        print(f"  detect-every 5 vs full: same expression {a['k5_vs_k1_same_expression']:.3f}, "
              f"box IoU {a['k5_vs_k1_box_iou_mean']:.3f}, valence MAE {a.get('k5_vs_k1_valence_mae', float('nan')):.4f}, "
              f"face rate {a['detect_every_5_face_rate']:.3f} vs {a['full_detection_face_rate']:.3f}")
    if "memory" in r:
        m = r["memory"]
        print(f"\n[memory] peak RSS {m['video']['peak_rss_mb']:.0f} MB ({m['video']['frames']} frames) vs "
              f"{m['looped']['peak_rss_mb']:.0f} MB ({m['looped']['frames']} frames, x{m['loops']}): ratio {m['ratio']:.3f} (goal within 10%)")


if __name__ == "__main__":
    main()
