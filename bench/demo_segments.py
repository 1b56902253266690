"""Distinct expression instances in the demo MTL splits: labelled expression segments per class.

A segment is a maximal run of frames of one clip with the same non-missing expression label
(abaw_cli/data/demo/segments.py). Counted on an existing MTL root (its annotation files), or on
the plan of a demo scale (labels only, nothing drawn; seconds) for one or more seeds.

    python bench/demo_segments.py --data runs/pipeline/demo-data/mtl
    python bench/demo_segments.py --scale small --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_cli.data.demo import plan_demo  # noqa: E402
from abaw_cli.data.demo.segments import segment_counts  # noqa: E402
from abaw_cli.data.formats import read_mtl_annotations  # noqa: E402
from abaw_cli.labels import EXPRESSIONS  # noqa: E402


def print_counts(title: str, splits: dict) -> None:
    print(title)
    print(f"  {'split':<6} {'frames':>7} {'clips':>6} {'segments':>9} {'min':>5}  " + " ".join(f"{e[:7]:>7}" for e in EXPRESSIONS))
    for split, ann in splits.items():
        c = segment_counts(ann)
        clips = len({i.split('/', 1)[0] for i in ann.images})
        print(f"  {split:<6} {len(ann):>7} {clips:>6} {sum(c.values()):>9} {min(c.values()):>5}  " + " ".join(f"{c[e]:>7}" for e in EXPRESSIONS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="an MTL root (cropped_aligned/ + the two annotation files)")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = ap.parse_args()
    if args.data:
        splits = {split: read_mtl_annotations(args.data / f"{name}_set_annotations.txt")
                  for split, name in (("train", "training"), ("val", "validation"))}
        print_counts(f"labelled expression segments in {args.data}", splits)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            plan = plan_demo(Path(tmp), args.scale, seed)
            print_counts(f"labelled expression segments, demo scale {args.scale}, seed {seed} (planned labels)", plan.annotations)


if __name__ == "__main__":
    main()
