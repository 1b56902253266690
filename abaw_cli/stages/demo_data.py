"""`abaw demo-data`: render the embedded demo data set (faces the project draws itself, with labels)
in the layouts of the real ABAW data, so every other stage can run without a download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from abaw_cli.data.demo import SCALES, generate_demo
from abaw_cli.options import SeedOption
from abaw_cli.progress import console

EXAMPLES = """

[bold]Examples[/bold]

  abaw demo-data demo                       # `small` set into ./demo (about 2 minutes on 2 cores)
  abaw demo-data /tmp/d --scale tiny        # seconds; what the tests use
  abaw demo-data demo --scale medium --seed 3 --force

[bold]Writes[/bold]

  OUT/mtl/cropped_aligned/<video>/<frame>.jpg + training/validation_set_annotations.txt  (train-mtl --data OUT/mtl)
  OUT/lsd/training_set_synthetic_images/<CLASS>/, OUT/lsd/validation_set_real_images/<CLASS>/  (cotrain --data OUT/lsd)
  OUT/lsd/LSD_Challenge_test_set_release.txt + OUT/lsd/test_set_images/  the unlabelled test set (predict, cotrain --unlabeled)
  OUT/truth/lsd_test_truth.txt  the test set's labels (score --truth; benches and tests only)
  OUT/pool/  unlabeled faces (pretrain-mae)      OUT/videos/*.mp4 + *.csv  per-frame truth (crop-faces, predict)
  OUT/contact_sheets/*.png  sample grids          OUT/demo_summary.json  counts
"""


def summary_table(summary: dict) -> Table:
    t = Table(title=f"demo data: scale {summary['scale']}, seed {summary['seed']}, {summary['seconds']:.1f} s")
    t.add_column("set")
    t.add_column("images", justify="right")
    t.add_column("details")
    for split, c in summary["mtl"].items():
        t.add_row(f"mtl {split}", str(c["images"]),
                  f"{c['videos']} videos; labelled VA {c['va']}, expression {c['expression']}, AU {c['au']}")
    for split, name in (("train", "lsd synthetic"), ("val", "lsd real"), ("test", "lsd test")):
        counts = summary["lsd"][split]
        t.add_row(name, str(sum(counts.values())), ", ".join(f"{k} {v}" for k, v in counts.items()))
    t.add_row("", "", f"test: {summary['lsd']['test_list']}, labels withheld; truth in {summary['lsd']['test_truth']}")
    t.add_row("pool", str(summary["pool"]), "unlabeled faces")
    for v in summary["videos"]:
        t.add_row("video", str(v["frames"]), f"{v['name']} ({v['frames'] / v['fps']:.0f} s, truth in .csv)")
    return t


def register(app: typer.Typer) -> None:
    @app.command(
        "demo-data",
        help="Render labelled demo faces (MTL, LSD, MAE pool) and demo videos in the ABAW layouts." + EXAMPLES,
        short_help="Render labelled demo faces and videos in the ABAW layouts.",
    )
    def demo_data_command(
        out: Annotated[Path, typer.Argument(help="Output folder (created if missing).", show_default=False)],
        scale: Annotated[str, typer.Option("--scale", help=f"Set size: {', '.join(SCALES)}.")] = "small",
        seed: SeedOption = 0,
        workers: Annotated[int | None, typer.Option("--workers", help="Rendering processes (default: up to 2).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace demo data already in OUT.")] = False,
    ) -> None:
        if scale not in SCALES:
            raise typer.BadParameter(f"expected one of {', '.join(SCALES)}", param_hint="--scale")
        try:
            summary = generate_demo(out, scale=scale, seed=seed, workers=workers, overwrite=force, show_progress=True)
        except (FileExistsError, NotADirectoryError) as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(code=1) from e
        console.print(summary_table(summary))
        console.print(f"contact sheets: {Path(out) / 'contact_sheets'}")
