"""Ablation of Masked CoTEX on the demo LSD set (synthetic training style -> the "real" photo style).

Three systems, each trained with `abaw cotrain` (the same engine, data and recipe; only the
switches differ) for several seeds, scored by the 6-class macro-F1 on the demo's real-style
validation folders:

  single   one ViT view, no token dropping, plain cross-entropy   (--mask-ratio 0, one view)
  cotex    Masked CoTEX: two views, mask ratio r, CE + lambda JS   (the paper)
  cotex+u  Masked CoTEX + co-training on unlabeled real-style faces   (--unlabeled)

Unlabeled faces (default `--unlabeled-source test-set`): the demo's LSD test set, released as the
challenge releases it (`lsd/LSD_Challenge_test_set_release.txt`, labels withheld; real-style faces
of the six classes, none of them in the validation folders): the paper's own unlabeled material.
`--unlabeled-source pool`: the demo's unlabeled face pool, the set
MAE pretraining uses. It is rendered apart from the LSD folders (its own random stream), so no
validation image is in it, and its labels are never read. It mixes the MTL "wild" style (70%)
with the synthetic and the real photo style (15% each) and holds all 8 ABAW expressions,
Neutral and Other included: like crop-faces output of real videos, where many faces belong to
none of the 6 classes, so pseudo-labelling has to cope with faces it should not label. It costs
nothing extra to make. `--unlabeled-source second-demo` instead renders a second demo set with
another seed and takes its real-style LSD folders, class folders ignored: in-domain faces of the
validation style, never the validation images themselves (several minutes more here).

Reported per system: macro-F1 of the pair (and of each view) at the LAST epoch (no selection on
the validation set) and at the best epoch (what best.pt keeps; optimistic, it is selected on the
same folders), mean +- std over seeds, plus wall time per run. A table on the terminal and JSON
(stdout and --json).

    python bench/ablation_cotrain.py --init runs/pipeline/pretrain-mae/encoder.pt   # the README's table
    python bench/ablation_cotrain.py --seeds 0 --epochs 2      # a quick look (random init)
    python bench/ablation_cotrain.py --profile cpu+mae         # both views from an MAE encoder pretrained here

Runs go --jobs at a time (default 2), each single-threaded and pinned to its own core. A second
bench in the same --work reuses the runs the first finished with the same settings (so an
interrupted bench goes on where it stopped) and refuses, before training anything, run folders
that hold other settings or an unfinished run.
The default profile, "preset", is the cotrain preset as `make pipeline` runs it.
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

import torch
from rich.console import Console
from rich.table import Table

from abaw_cli.atomic import atomic_write_text
from abaw_cli.data.demo import generate_demo
from abaw_cli.labels import LSD_CLASSES
from abaw_cli.train.cotrain import cotrain
from pinned_pool import run_pinned

console = Console()

# Profiles. "preset" (the default) is the cotrain preset exactly as `make pipeline` runs it (pass
# the pipeline's encoder with --init): the README's table. "cpu" is the same preset from random
# weights, with pseudo-labels at threshold 0.3 from epoch 4: views trained from scratch are never
# 90% sure, and at 0.3 from the first step pseudo-labelling collapsed the model onto one class
# (docs/experiments.md, "Co-training: when pseudo-labels start"). "cpu+mae" changes one thing:
# both views start from a cpu-small MAE encoder pretrained here on the pool (the paper's
# initialisation). "paper-lambda" is "cpu+mae" with the paper's lambda 100.
PSEUDO = {"loss.pseudo_threshold": 0.3, "loss.pseudo_start_epoch": 4}
PROFILES: dict[str, dict] = {
    "preset": {"init": "none", "overrides": {}},
    "cpu": {"init": "none", "overrides": dict(PSEUDO)},
    "cpu+mae": {"init": "mae", "overrides": dict(PSEUDO)},
    "paper-lambda": {"init": "mae", "overrides": {**PSEUDO, "loss.lambda_js": 100.0}},
}

SYSTEMS: dict[str, dict] = {
    "single": {"model.num_views": 1, "model.mask_ratio": 0.0},
    "cotex": {},
    "cotex+u": {"unlabeled": True},
}
# Relative cost of a run (one view = 1; two views at r 0.25 ~1.5; co-training adds a teacher
# pass and a second batch from its start epoch on): runs start longest first, so that the last
# one to finish is a short one and no core idles through a long tail.
RUN_COST = {"single": 1.0, "cotex": 1.5, "cotex+u": 2.5}


def ensure_demo(root: Path, scale: str, seed: int) -> Path:
    if not (root / "lsd").is_dir():
        t0 = time.perf_counter()
        generate_demo(root, scale=scale, seed=seed)
        console.log(f"demo data {scale} seed {seed} -> {root} ({time.perf_counter() - t0:.0f} s)")
    return root


def pretrain_encoder(work: Path, demo: Path, device: str, workers: int, mae_overrides: dict, name: str) -> Path:
    """One MAE encoder (cpu-small MAE preset + the profile's changes) on the demo pool, shared by
    every run of the ablation."""
    from abaw_cli.train.mae import pretrain_mae

    out = work / f"mae_{name}"
    if (out / "encoder.pt").exists() and (out / "metrics.json").exists():
        return out / "encoder.pt"
    overrides = {"optim.device": device, "optim.num_workers": workers, **mae_overrides}
    pretrain_mae([demo / "pool"], out, "cpu-small", overrides=overrides)
    return out / "encoder.pt"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run_overrides(system: str, seed: int, base: dict, unlabeled: Path | None) -> dict:
    switches = dict(SYSTEMS[system])
    overrides = {**base, "optim.seed": seed}
    if switches.pop("unlabeled", False):
        overrides["data.unlabeled"] = str(unlabeled)
    overrides.update(switches)
    return overrides


def run_folder(work: Path, system: str, seed: int) -> Path:
    return work / "runs" / f"{system}_seed{seed}"


def finished_row(out: Path, preset: str, overrides: dict) -> dict | None:
    """The row of a run that an earlier bench in the same --work finished with these settings."""
    row_file = out / "ablation_row.json"
    if not row_file.exists():
        return None
    row = json.loads(row_file.read_text())
    return row if row.get("preset") == preset and row.get("overrides") == json.loads(json.dumps(overrides)) else None


def run_system(system: str, seed: int, base: dict, unlabeled: Path | None, work: Path, preset: str) -> dict:
    """One `abaw cotrain` run of `system`; its last-epoch and best-epoch numbers (those of an
    earlier bench's finished run when it had the same settings)."""
    overrides = run_overrides(system, seed, base, unlabeled)
    out = run_folder(work, system, seed)
    row = finished_row(out, preset, overrides)
    if row is not None:
        console.log(f"{system:8s} seed {seed}: last F1 {row['last_f1']:.3f}  best {row['best_f1']:.3f}  (reused {out})")
        return row
    t0 = time.perf_counter()
    result = cotrain(out, preset, overrides=overrides)
    seconds = time.perf_counter() - t0
    epochs = [h for h in result.history if "val_f1" in h]
    last, best = epochs[-1], result.best
    row = {
        "seed": seed, "seconds": round(seconds, 1), "epochs": len(epochs),
        "last_f1": last["val_f1"], "best_f1": best["value"], "best_epoch": best["epoch"],
        "last_f1_views": [last[k] for k in ("val_f1_view1", "val_f1_view2") if k in last],
        "last_f1_classes": {c: last[f"val_f1_{c}"] for c in LSD_CLASSES if f"val_f1_{c}" in last},
        "last_accuracy": last["val_accuracy"], "preset": preset, "overrides": overrides,
    }
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rates = [r["pseudo_rate"] for r in steps if r.get("type") == "step" and r.get("epoch") == last["epoch"] and "pseudo_rate" in r]
    if rates:
        row["pseudo_rate_last_epoch"] = statistics.fmean(rates)
    # The run's row beside its log: finished runs survive an interrupted bench.
    atomic_write_text(out / "ablation_row.json", json.dumps(row, indent=1))
    console.log(f"{system:8s} seed {seed}: last F1 {row['last_f1']:.3f}  best {row['best_f1']:.3f}  ({seconds:.0f} s)")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="folder for demo data and runs (default: a temporary folder)")
    ap.add_argument("--scale", default="small", help="demo scale (tiny|small|medium)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--profile", choices=list(PROFILES), default="preset")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--init", default=None, help="encoder.pt for both views, none, or mae (pretrain one on the demo pool first); default: the profile's")
    ap.add_argument("--mask-ratio", type=float, default=None)
    ap.add_argument("--pseudo-threshold", type=float, default=None)
    ap.add_argument("--unlabeled-source", choices=("test-set", "pool", "second-demo"), default="test-set")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides, e.g. model.depth=6")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel, each pinned to its own cores (pinned_pool)")
    ap.add_argument("--device", default="cpu", help="cpu (the reference) or cuda")
    ap.add_argument("--workers", type=int, default=0,
                    help="data-loading workers per run (default 0: a run pinned to one core decodes and augments in its "
                         "own process; workers would only share that core with it)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="ablation_cotrain_"))
    work.mkdir(parents=True, exist_ok=True)
    demo = ensure_demo(work / f"demo_{args.scale}_seed0", args.scale, 0)
    unlabeled = None
    if "cotex+u" in args.systems:
        if args.unlabeled_source == "second-demo":
            unlabeled = ensure_demo(work / f"demo_{args.scale}_seed1", args.scale, 1) / "lsd" / "validation_set_real_images"
        elif args.unlabeled_source == "pool":
            unlabeled = demo / "pool"
        else:
            unlabeled = demo / "lsd" / "LSD_Challenge_test_set_release.txt"

    profile = PROFILES[args.profile]
    init = args.init or profile["init"]
    mae_seconds = None
    if init == "mae":
        t0 = time.perf_counter()
        init = str(pretrain_encoder(work, demo, args.device, args.workers, profile.get("mae", {}), args.profile))
        mae_seconds = round(time.perf_counter() - t0, 1)
        console.log(f"MAE encoder on the demo pool -> {init} ({mae_seconds:.0f} s)")
    extra = dict(profile["overrides"])
    extra["optim.num_workers"] = args.workers
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = json.loads(value) if value not in ("", "none", "None") else None
    if args.epochs is not None:
        extra["optim.epochs"] = args.epochs
    base = {"data.root": str(demo / "lsd"), "init": init, "optim.device": args.device,
            "model.mask_ratio": args.mask_ratio, "loss.pseudo_threshold": args.pseudo_threshold, **extra}

    t_all = time.perf_counter()
    plan = sorted(((system, seed) for seed in args.seeds for system in args.systems), key=lambda run: -RUN_COST[run[0]])
    # Refuse before any run starts, not after the others have taken their minutes.
    taken = [str(out) for system, seed in plan if (out := run_folder(work, system, seed)).exists()
             and finished_row(out, args.preset, run_overrides(system, seed, base, unlabeled)) is None]
    if taken:
        console.print(f"[red]these run folders hold runs with other settings or unfinished runs: {', '.join(taken)}; "
                      "remove them or pass another --work[/red]")
        return 2
    calls = [(system, seed, base, unlabeled, work, args.preset) for system, seed in plan]
    rows = run_pinned(run_system, calls, args.jobs, args.threads * max(args.jobs, 1))
    results: dict[str, list[dict]] = {s: [row for (system, _), row in zip(plan, rows) if system == s] for s in args.systems}

    summary = {}
    table = Table(title=f"Masked CoTEX ablation, demo LSD {args.scale} (synthetic -> real style), {len(args.seeds)} seed(s), preset {args.preset}")
    for col in ("system", "macro-F1 last epoch", "view 1 / view 2 (last)", "lowest class (last)", "macro-F1 best epoch",
                "pseudo-labelled (last ep.)", "s/run"):
        table.add_column(col)
    for system, rows in results.items():
        last_m, last_s = mean_std([r["last_f1"] for r in rows])
        best_m, best_s = mean_std([r["best_f1"] for r in rows])
        views = [mean_std([r["last_f1_views"][v] for r in rows]) for v in range(len(rows[0]["last_f1_views"]))]
        summary[system] = {"last_f1_mean": last_m, "last_f1_std": last_s, "best_f1_mean": best_m, "best_f1_std": best_s,
                           "last_f1_views_mean": [m for m, _ in views], "seconds_mean": statistics.fmean(r["seconds"] for r in rows), "runs": rows}
        rates = [r["pseudo_rate_last_epoch"] for r in rows if "pseudo_rate_last_epoch" in r]
        summary[system]["pseudo_rate_last_epoch_mean"] = statistics.fmean(rates) if rates else None
        classes = {c: statistics.fmean(r["last_f1_classes"][c] for r in rows) for c in rows[0]["last_f1_classes"]}
        summary[system]["last_f1_classes_mean"] = classes
        lowest = min(classes, key=classes.get) if classes else None
        table.add_row(system, f"{last_m:.3f} ± {last_s:.3f}", " / ".join(f"{m:.3f}" for m, _ in views),
                      f"{lowest} {classes[lowest]:.3f}" if lowest else "-",
                      f"{best_m:.3f} ± {best_s:.3f}", f"{statistics.fmean(rates):.1%}" if rates else "-",
                      f"{summary[system]['seconds_mean']:.0f}")
    console.print(table)
    report = {
        "bench": "ablation_cotrain", "profile": args.profile, "scale": args.scale, "seeds": args.seeds, "preset": args.preset,
        "init": init, "mae_pretrain_seconds": mae_seconds, "unlabeled_source": args.unlabeled_source if unlabeled else None, "overrides": extra,
        "threads": args.threads, "device": args.device, "total_seconds": round(time.perf_counter() - t_all, 1), "systems": summary,
    }
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
