"""EMMA ablation on the demo MTL set with the cpu-small recipe, and paper-preset images/s on CUDA.

    python bench/ablation_mtl.py                       # 3 arms x 3 seeds x (all, a quarter of the labels)
    python bench/ablation_mtl.py --arms emma random-init --seeds 0 1 --epochs 2
    python bench/ablation_mtl.py --no-ablation         # only the CUDA throughput part (when CUDA is there)

Arms (validation numbers of the LAST epoch, nothing selected on validation; P_MTL with AUs at 0.5,
and with thresholds tuned on validation beside it):
    emma              MAE-initialised ViT + frozen fer prior          (the paper's system)
    random-init       random ViT (layer decay off) + frozen fer prior (what MAE pretraining buys)
    no-prior          MAE-initialised ViT, --cnn none                 (what the CNN prior buys)
    random-no-prior   random ViT, no prior                            (optional fourth corner)

The MAE encoder is pretrained once with `pretrain-mae --preset cpu-small` on the demo pool and
cached, as is the demo set (ABAW_BENCH_CACHE, default ~/.cache/abaw-bench). With --labels 0.25 each
arm also trains on the frames of a quarter of the training clips (one fixed draw, listed 4x per
epoch), for as many optimiser steps as with all labels: the paper's point that pretraining stands
in for labels. Each number is one
run's last epoch; the table gives mean +- sample std over seeds and the JSON every run.
Where CUDA is present the script also runs the `paper` preset (ViT-B/16, 224, batch 100 x accum 4,
bf16) for a few optimiser steps on the same data and reports images/s (end to end from the
engine's log, and the model's own forward+backward+step rate on data already on the GPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abaw_cli.atomic import atomic_write_text  # noqa: E402
from abaw_cli.config import load_config  # noqa: E402
from abaw_cli.data.demo import generate_demo  # noqa: E402
from abaw_cli.data.formats import MTLAnnotations, read_mtl_annotations, write_mtl_annotations  # noqa: E402
from abaw_cli.train.mae import pretrain_mae  # noqa: E402
from abaw_cli.train.mtl import TrainMTLConfig, train_mtl  # noqa: E402
from pinned_pool import run_pinned  # noqa: E402

console = Console()
ARMS = {
    "emma": {"init": "mae", "prior": "fer"},
    "random-init": {"init": "none", "prior": "fer"},
    "no-prior": {"init": "mae", "prior": "none"},
    "random-no-prior": {"init": "none", "prior": "none"},
}
REPORTED = ("p_mtl", "va", "expression_f1", "au_f1", "p_mtl_val_tuned", "au_f1_val_tuned")


def cached_demo(cache: Path, scale: str) -> Path:
    out = cache / f"demo-{scale}-s0"
    if not (out / "demo_summary.json").exists():
        console.print(f"generating the {scale} demo set into {out} ...")
        t0 = time.perf_counter()
        generate_demo(out, scale=scale, seed=0, overwrite=True)
        console.print(f"  {time.perf_counter() - t0:.0f} s")
    return out


def cached_encoder(cache: Path, demo: Path, scale: str, mae_epochs: int | None) -> tuple[Path, float | None]:
    """encoder.pt of a finished cpu-small MAE run on the demo pool (pretrained once, then reused)."""
    run = cache / (f"mae-cpu-small-{scale}" + (f"-e{mae_epochs}" if mae_epochs else ""))
    done = run / "DONE"
    if done.exists():
        return run / "encoder.pt", None
    if run.exists():
        shutil.rmtree(run)  # an unfinished earlier attempt
    console.print(f"pretraining the cpu-small MAE encoder on {demo / 'pool'} into {run} ...")
    t0 = time.perf_counter()
    overrides = {"optim.epochs": mae_epochs} if mae_epochs else {}
    encoder, _ = pretrain_mae([demo / "pool"], run, "cpu-small", overrides=overrides)
    seconds = time.perf_counter() - t0
    done.write_text(f"{seconds:.1f}\n")
    console.print(f"  {seconds:.0f} s")
    return encoder, seconds


def label_subset(data: Path, fraction: float, work: Path, seed: int = 0) -> Path:
    """An MTL root whose training split holds the frames of `fraction` of the training clips (drawn
    once with `seed`, the same for every arm and run seed), each listed round(1 / fraction) times
    under linked clip folders (`<clip>_rK`), so that an epoch has as many optimiser steps (and the
    run as many validations) as with all labels; validation is unchanged. Nothing is copied."""
    if fraction >= 1.0:
        return data
    out = work / f"labels-{fraction:g}"
    if (out / "training_set_annotations.txt").exists():
        return out
    images = out / "cropped_aligned"
    images.mkdir(parents=True, exist_ok=True)
    source = (data / "cropped_aligned").resolve()
    for clip in source.iterdir():
        (images / clip.name).symlink_to(clip)
    train = read_mtl_annotations(data / "training_set_annotations.txt")
    clips = sorted({i.split("/", 1)[0] for i in train.images})
    keep = set(np.random.default_rng(seed).permutation(clips)[: max(1, round(fraction * len(clips)))].tolist())
    rows = np.array([i.split("/", 1)[0] in keep for i in train.images])
    kept = [i for i, k in zip(train.images, rows) if k]
    repeat = max(1, round(1 / fraction))
    names = list(kept)
    for r in range(1, repeat):
        for clip in sorted(keep):
            (images / f"{clip}_r{r}").symlink_to(source / clip)
        names += [f"{i.split('/', 1)[0]}_r{r}/{i.split('/', 1)[1]}" for i in kept]
    subset = MTLAnnotations(names, np.tile(train.valence_arousal[rows], (repeat, 1)), np.tile(train.expression[rows], repeat),
                            np.tile(train.aus[rows], (repeat, 1)))
    write_mtl_annotations(out / "training_set_annotations.txt", subset)
    shutil.copy(data / "validation_set_annotations.txt", out / "validation_set_annotations.txt")
    return out


def run_arm(arm: str, seed: int, data: Path, encoder: Path, work: Path, args, fraction: float = 1.0) -> dict:
    spec = ARMS[arm]
    out = work / f"{arm}-l{fraction:g}-s{seed}"
    root = label_subset(data, fraction, work)
    overrides = {
        "data.root": str(root),
        "data.manifest": "s-aff-wild2-mtl" if fraction < 1.0 else "auto",
        "init": str(encoder) if spec["init"] == "mae" else "none",
        "model.prior": spec["prior"],
        "optim.seed": seed,
        "optim.epochs": args.epochs,
        "optim.max_steps": args.max_steps,
        "optim.device": "cpu",
    }
    t0 = time.perf_counter()
    result = train_mtl(out, "cpu-small", overrides=overrides)
    seconds = time.perf_counter() - t0
    # The last epoch's validation numbers: nothing is selected on the validation set.
    last = result.history[-1]
    row = {"arm": arm, "labels": fraction, "seed": seed, "seconds": round(seconds, 1), "steps": last["step"],
           **{k: last[f"val_{k}"] for k in REPORTED}, "ccc_valence": last["val_ccc_valence"], "ccc_arousal": last["val_ccc_arousal"]}
    console.print(f"  {arm} labels {fraction:g} seed {seed}: P_MTL {row['p_mtl']:.4f} "
                  f"(AU thresholds tuned on validation: {row['p_mtl_val_tuned']:.4f})  {seconds:.0f} s")
    return row


def run_all(arms: list[str], seeds: list[int], data: Path, encoder: Path | None, work: Path, args) -> list[dict]:
    """Every (labels, arm, seed) run; with --jobs > 1 in that many processes pinned to their share
    of the cores (pinned_pool.run_pinned)."""
    plan = [(arm, seed, fraction) for fraction in args.labels for seed in seeds for arm in arms]
    for fraction in args.labels:
        label_subset(data, fraction, work)  # made once, before any worker needs it
    calls = [(arm, seed, data, encoder, work, args, fraction) for arm, seed, fraction in plan]
    return run_pinned(run_arm, calls, args.jobs, args.threads)


def summarise(rows: list[dict], arms: list[str]) -> dict:
    summary = {}
    for fraction in sorted({r["labels"] for r in rows}, reverse=True):
        for arm in arms:
            runs = [r for r in rows if r["arm"] == arm and r["labels"] == fraction]
            if not runs:
                continue
            key = arm if fraction >= 1.0 else f"{arm}, {fraction:g} of the labels"
            summary[key] = {
                k: {"mean": statistics.fmean(r[k] for r in runs), "std": statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0}
                for k in REPORTED
            }
            summary[key]["n_seeds"] = len(runs)
    return summary


def print_table(summary: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("arm")
    for k in REPORTED:
        table.add_column(k.replace("_", " "), justify="right")
    table.add_column("seeds", justify="right")
    for arm, s in summary.items():
        table.add_row(arm, *[f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in REPORTED], str(s["n_seeds"]))
    console.print(table)


PAPER_VIT = {"size": "base", "input_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "drop_path": 0.1}


def paper_throughput(data: Path, work: Path, steps: int, prior: str, device: str = "cuda", preset: str = "paper",
                     vit: dict = PAPER_VIT, batch: int = 100) -> dict:
    """images/s of the `paper` preset: a short end-to-end run, and the model step alone.
    (device/preset/vit/batch exist so that the same code can be smoke-tested small on a CPU.)"""
    out = work / f"{preset}-{device}"
    overrides = {"data.root": str(data), "init": "none", "model.prior": prior, "optim.max_steps": steps, "optim.epochs": 30,
                 "optim.device": device, "optim.log_every_steps": 1, "optim.checkpoint_every_steps": 0,
                 "optim.num_workers": min(16, os.cpu_count() or 1), "data.eval_batch_size": 500}
    t0 = time.perf_counter()
    train_mtl(out, preset, overrides=overrides)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    ips = [r["images_per_s"] for r in rows if r.get("type") == "step"][1:]  # the first step pays for warm-up
    result = {"end_to_end_images_per_s_median": statistics.median(ips) if ips else None, "steps": steps, "wall_s": round(wall, 1)}

    # The model step alone (data already on the GPU): ViT-B/16 + prior + heads, bf16 autocast, AdamW.
    from abaw_cli.models.emma import EMMA
    from abaw_cli.models.vit import vit_from_config
    from abaw_cli.models.priors import build_prior
    from abaw_cli.train.engine import TrainConfig, default_param_groups

    from abaw_cli.runtime import autocast

    dev = torch.device(device)
    model = EMMA(vit_from_config(vit), build_prior(prior)).to(dev).train()
    opt = torch.optim.AdamW(default_param_groups(model, TrainConfig(layer_decay=0.65)), lr=1e-4)
    x = torch.rand(batch, 3, vit["input_size"], vit["input_size"], device=dev)
    cuda = dev.type == "cuda"

    def step():
        with autocast(dev):  # bf16 on CUDA, as the engine trains
            loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    n, t0 = 20 if cuda else 2, time.perf_counter()
    for _ in range(n):
        step()
    if cuda:
        torch.cuda.synchronize()
    result["model_step_images_per_s"] = n * batch / (time.perf_counter() - t0)
    result["batch"] = batch
    result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    result["gpu"] = torch.cuda.get_device_name() if cuda else "cpu"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=["emma", "random-init", "no-prior"], choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--scale", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--epochs", type=int, default=None, help="train-mtl epochs per run with all labels (default: the cpu-small preset's)")
    parser.add_argument("--labels", nargs="+", type=float, default=[1.0, 0.25],
                        help="shares of the training clips used (each listed 1/share times: same optimiser steps)")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--mae-epochs", type=int, default=None, help="pretrain-mae epochs (default: the cpu-small preset's)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("ABAW_BENCH_CACHE", Path.home() / ".cache" / "abaw-bench")))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "ablation_mtl.json")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in all (split between jobs)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the CPU ablation (e.g. on a GPU machine)")
    parser.add_argument("--cuda-steps", type=int, default=8, help="optimiser steps of the paper-preset CUDA run")
    parser.add_argument("--cuda-prior", default="fer")
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = load_config(TrainMTLConfig, "train_mtl", "cpu-small").optim.epochs
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, args.threads))

    t_start = time.perf_counter()
    results: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    demo = cached_demo(args.cache, args.scale)
    data = demo / "mtl"
    with tempfile.TemporaryDirectory(prefix="abaw-ablation-") as tmp:
        work = Path(tmp)
        if not args.no_ablation:
            needs_mae = any(ARMS[a]["init"] == "mae" for a in args.arms)
            encoder, mae_seconds = cached_encoder(args.cache, demo, args.scale, args.mae_epochs) if needs_mae else (None, None)
            results["mae_pretrain_seconds"] = mae_seconds
            rows = run_all(args.arms, args.seeds, data, encoder, work, args)
            summary = summarise(rows, args.arms)
            results["runs"], results["summary"] = rows, summary
            print_table(summary, f"EMMA ablation, demo {args.scale}, cpu-small, {args.epochs} epochs with all labels, seeds {args.seeds} "
                                 "(validation, last epoch, mean ± std)")
        if torch.cuda.is_available():
            cuda = paper_throughput(data, work, args.cuda_steps, args.cuda_prior)
            results["cuda_paper"] = cuda
            console.print(
                f"paper preset on {cuda['gpu']}: end to end {cuda['end_to_end_images_per_s_median'] or float('nan'):.0f} images/s "
                f"(median over steps 2..{cuda['steps']}); model step alone {cuda['model_step_images_per_s']:.0f} images/s, "
                f"peak {cuda['peak_gpu_memory_gib']:.1f} GiB at batch {cuda['batch']}"
            )
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(results, indent=2))
    console.print(f"total {results['total_seconds']:.0f} s; results in {args.json}")


if __name__ == "__main__":
    main()
