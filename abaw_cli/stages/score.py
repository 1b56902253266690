"""`abaw score`: the command line of scoring (the library: abaw_cli/predict/scoring.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from abaw_cli import labels
from abaw_cli.data.formats import FormatError
from abaw_cli.metrics import MetricError
from abaw_cli.predict.scoring import ScoreError, ScoreResult, default_json_path, score_files, write_outputs
from abaw_cli.progress import console
from abaw_cli.stages.common import stage_errors

log = logging.getLogger(__name__)


def render_table(result: ScoreResult) -> Table:
    s = result.scores
    if result.task == "mtl":
        table = Table(title=f"P_MTL = {s['p_mtl']:.4f}  ({result.prediction.name} vs {result.truth.name})")
        for name, justify in (("metric", "left"), ("value", "right"), ("frames", "right")):
            table.add_column(name, justify=justify)
        table.add_row("[bold]P_MTL[/]", f"[bold]{s['p_mtl']:.4f}[/]", "")
        table.add_row("CCC valence", f"{s['ccc_valence']:.4f}", f"{s['n_valence']:,}")
        table.add_row("CCC arousal", f"{s['ccc_arousal']:.4f}", f"{s['n_arousal']:,}")
        table.add_row("VA (mean CCC)", f"{s['va']:.4f}", "", end_section=True)
        table.add_row("[bold]expression macro-F1[/]", f"{s['expression_f1']:.4f}", f"{s['n_expression']:,}")
        for name, value in s["expression_f1_per_class"].items():
            table.add_row(f"  F1 {name}", f"{value:.4f}", f"{result.confusion[labels.EXPRESSIONS.index(name)].sum():,}")
        table.add_section()
        table.add_row("[bold]AU mean F1[/] (the predictions' AU decisions)", f"{s['au_f1']:.4f}", f"{s['n_au']:,}")
        for name, value in s["au_f1_per_au"].items():
            table.add_row(f"  F1 {name} ({labels.AU_NAMES[name]})", f"{value:.4f}", f"{s['n_au_positive'][name]:,} pos")
        if "au_f1_tuned_on_truth" in s:
            table.add_section()
            table.add_row("AU mean F1, thresholds tuned on this truth (optimistic)", f"{s['au_f1_tuned_on_truth']:.4f}", "")
            table.add_row("P_MTL, AU thresholds tuned on this truth (optimistic)", f"{s['p_mtl_tuned_on_truth']:.4f}", "")
    else:
        table = Table(title=f"LSD macro-F1 = {s['f1']:.4f}  ({result.prediction.name} vs {result.truth.name})")
        for name, justify in (("metric", "left"), ("value", "right"), ("frames", "right")):
            table.add_column(name, justify=justify)
        table.add_row("[bold]macro-F1[/]", f"[bold]{s['f1']:.4f}[/]", f"{s['n_frames']:,}")
        table.add_row("accuracy", f"{s['accuracy']:.4f}", "")
        for i, (name, value) in enumerate(s["f1_per_class"].items()):
            table.add_row(f"  F1 {name}", f"{value:.4f}", f"{result.confusion[i].sum():,}")
    c = result.coverage
    table.add_section()
    table.add_row("coverage", f"{c['coverage']:.1%}", f"{c['scored_images']:,} / {c['truth_images']:,}")
    if c["extra_predictions"]:
        table.add_row("predictions not in truth (ignored)", "", f"{c['extra_predictions']:,}")
    return table


HELP = """Score predictions against ABAW truth: P_MTL (CCC valence/arousal, expression macro-F1, AU F1) or LSD macro-F1.

PRED: an ABAW submission (MTL or LSD) or a prediction table from `abaw predict` (image key = `image` column, else `<source>/<frame:05d>.jpg`). TRUTH: an MTL annotation file, or for LSD a class-folder tree or a labelled `image,expression` list. Writes the numbers as JSON (default `<PRED stem>.scores.json`) and a confusion-matrix PNG beside it. Bad input exits with code 2.

[bold]Examples[/]

  abaw score runs/pred/validation_set_annotations.submission.txt --truth data/mtl/validation_set_annotations.txt

  abaw score runs/pred/predictions.csv --truth data/mtl/validation_set_annotations.txt --allow-partial

  abaw score runs/pred/validation_set_real_images.submission.txt --truth data/lsd/validation_set_real_images --json runs/lsd-scores.json
"""


def register(app: typer.Typer) -> None:
    @app.command(name="score", help=HELP, short_help="Score predictions against ABAW truth (P_MTL, LSD F1).")
    def score(
        pred: Annotated[Path, typer.Argument(help="Submission file or prediction table.", show_default=False)],
        truth: Annotated[Path, typer.Option("--truth", help="MTL annotation file, or LSD class-folder tree / labelled list.", show_default=False)],
        task: Annotated[str | None, typer.Option("--task", help="mtl or lsd (default: from PRED's header; must agree).")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="Where to write the scores JSON (default <PRED stem>.scores.json beside PRED).")] = None,
        allow_partial: Annotated[bool, typer.Option("--allow-partial", help="Score the truth images PRED covers instead of refusing missing ones.")] = False,
    ) -> None:
        if task is not None and task not in ("mtl", "lsd"):
            raise typer.BadParameter(f"{task!r} is not one of mtl, lsd", param_hint="--task")
        with stage_errors(FormatError, ScoreError, MetricError):
            result = score_files(pred, truth, task=task, allow_partial=allow_partial)
        for warning in result.scores.get("warnings", []):
            log.warning("%s", warning)
        json_path = json_out or default_json_path(pred)
        written_json, png = write_outputs(result, json_path)
        Console().print(render_table(result))
        console.print(f"scores: {written_json}\nconfusion matrix: {png}", markup=False, highlight=False, soft_wrap=True)
