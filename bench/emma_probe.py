"""One cpu-small EMMA run with config overrides, summarised per epoch against a baseline.

    python bench/emma_probe.py --data DEMO/mtl --init RUN/encoder.pt --out runs/emma-x --seed 0 \
        --set optim.clip_grad=1.0 loss.weight_au=0.25
    python bench/emma_probe.py --summarise runs/emma-x [runs/emma-y ...]   (tables of finished runs)

Prints, per epoch, the validation numbers the engine logged: expression macro-F1, AU mean F1 at
threshold 0.5 and with thresholds tuned on validation, CCC V/A, P_MTL at 0.5. The summary
(OUT/probe.json) holds the last epoch and the epoch with the best P_MTL at 0.5, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_cli.atomic import atomic_write_text  # noqa: E402
from abaw_cli.train.mtl import train_mtl  # noqa: E402

KEYS = ("expression_f1", "au_f1", "au_f1_val_tuned", "ccc_valence", "ccc_arousal", "p_mtl", "p_mtl_val_tuned")


def epoch_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return [{"epoch": r["epoch"] + 1, "train_loss": r["train_loss"], **{k: r[f"val_{k}"] for k in KEYS}}
            for r in rows if r.get("type") == "epoch" and "val_p_mtl" in r]


def summarise(run: Path) -> dict:
    rows = epoch_rows(run)
    probe = json.loads((run / "probe.json").read_text()) if (run / "probe.json").exists() else {}
    best = max(rows, key=lambda r: r["p_mtl"])
    return {**probe, "run": str(run), "epochs": rows, "last": rows[-1], "best": best}


def print_run(s: dict) -> None:
    print(f"== {s['run']}  ({s.get('wall_s', float('nan')):.0f} s; {s.get('overrides', {})})")
    print("  epoch  loss    exprF1  AU@0.5  AUtuned  CCC_V  CCC_A  P@0.5")
    for r in s["epochs"]:
        print(f"  {r['epoch']:>5}  {r['train_loss']:.3f}  {r['expression_f1']:.3f}   {r['au_f1']:.3f}   {r['au_f1_val_tuned']:.3f}    "
              f"{r['ccc_valence']:.3f}  {r['ccc_arousal']:.3f}  {r['p_mtl']:.3f}")


def parse_value(text: str):
    return yaml.safe_load(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--init", default="none")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value (values parsed as YAML)")
    ap.add_argument("--summarise", nargs="*", type=Path)
    args = ap.parse_args()
    if args.summarise:
        for run in args.summarise:
            print_run(summarise(run))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = {"data.root": str(args.data), "init": args.init, "optim.seed": args.seed, "optim.device": "cpu"}
    extra = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    overrides.update(extra)
    t0 = time.perf_counter()
    train_mtl(args.out, args.preset, overrides=overrides)
    wall = time.perf_counter() - t0
    atomic_write_text(args.out / "probe.json", json.dumps({"wall_s": round(wall, 1), "overrides": extra, "init": args.init,
                                                     "seed": args.seed}, indent=2))
    print_run(summarise(args.out))


if __name__ == "__main__":
    main()
