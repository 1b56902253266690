"""`abaw predict`: a train-mtl / cotrain best.pt applied to videos, images and ABAW test lists.

The work is in abaw_cli.predict (run.run_predict); this file is the command line and the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from abaw_cli.options import BatchOption, DeviceOption
from abaw_cli.predict.model_choice import MODEL_ENV, PIPELINE_MODEL
from abaw_cli.predict.run import PredictInputError, PredictReport, PredictRequest, run_predict
from abaw_cli.progress import console
from abaw_cli.stages.common import stage_errors

HELP = """Predict valence/arousal, expressions and AUs (train-mtl model) or the 6 LSD classes (cotrain model).

INPUTS can be:

- videos: every frame gets a row (MTCNN detection, 5-point alignment, batched model);

- photos or folders of images: detected and aligned like video frames, with an `image` column naming the file;

- ABAW lists: an MTL test list (MTL_Challenge_test_set_release.txt), an MTL annotation file (its images, e.g. the validation set) or an LSD list (image,expression), whose images under --images ROOT are aligned crops (resized only); or an LSD class-folder tree (validation_set_real_images; images named CLASS/file.jpg relative to it). These give the official submission file (same header and image order), which `abaw score` reads back.

Outputs: an --out path ending in .csv/.parquet/.txt is that file (one input only); any other path is a folder with <name>.csv per video or image source and <name>.submission.txt per list. --overlay (.mp4) and --plot (.png) follow the same rule.

Table columns: source, frame (0-based, as crop-faces numbers crops), time_s, track, face (0 = no face, predictions empty), x1 y1 x2 y2, det_score, valence, arousal, expression, p_<expression> x8, p_<AU> x12, <AU> 0/1 x12 (the checkpoint's thresholds), then the frozen expression prior's own reading: prior_expression and prior_<expression> x8 (empty where the prior has no such class, e.g. Other for fer; empty throughout for a model trained with --cnn none); a cotrain model gives expression and p_<CLASS> x6.

The model: --model, else $ABAW_MODEL, else runs/pipeline/train-mtl/best.pt under the current folder (what `make pipeline` leaves). A model trained on the demo data warns once when it is given anything else: its heads learned rendered faces; read the prior's columns (--overlay-label prior) on real faces.

Photos are searched for faces on a copy scaled down to at most 640 px on the longer side, and cropped from the full-resolution image.

Under torchrun (torchrun --nproc_per_node=N -m abaw_cli predict ...) each input goes to one rank; the outputs are those of one process.

--smooth S averages each track's probabilities and VA over a centred window of S seconds (S/2 s of look-ahead is buffered; memory stays bounded). --detect-every K runs MTCNN on every K-th frame only and follows the faces in between by optical flow on the landmarks: faster where detection dominates, but a face that appears, vanishes or moves fast is caught up to K-1 frames late.

Bad input (an unreadable video, a checkpoint of another kind, missing listed images) exits with code 2; a video without any face gives empty rows and a warning.

[bold]Examples[/]

  abaw predict video.mp4

  abaw predict video.mp4 --model runs/mtl/best.pt --overlay video_overlay.mp4 --overlay-label prior

  abaw predict video.mp4 --model runs/mtl/best.pt --out video.csv --overlay video_overlay.mp4 --plot video.png --smooth 0.5

  abaw predict party.mp4 --model runs/mtl/best.pt --faces all --detect-every 5 --device cuda --batch 256

  abaw predict MTL_Challenge_test_set_release.txt --images data/mtl/cropped_aligned --model runs/mtl/best.pt --out mtl_submission.txt

  abaw predict data/lsd/validation_set_real_images --model runs/cotrain/best.pt --out lsd_submission.txt

  abaw predict data/lsd/LSD_Challenge_test_set_release.txt --images data/lsd/test_set_images --model runs/cotrain/best.pt --out lsd_test_submission.txt
"""

OutOption = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Output file (.csv/.parquet table, .txt submission; one input) or folder (default: predictions/)."),
]


def summary_table(report: PredictReport) -> Table:
    ranks = f", {report.world_size} ranks" if report.world_size > 1 else ""
    title = f"predict: {report.kind} model {report.model} ({report.model_origin}) on {report.device}{ranks}"
    table = Table(title=title, title_justify="left")
    for col in ("input", "frames", "with face", "faces", "tracks", "fps", "time (s)", "written"):
        table.add_column(col, justify="left" if col in ("input", "written") else "right")
    for s in report.sources:
        rate = f"{s.frames_with_face / s.frames:.0%}" if s.frames else "-"
        table.add_row(
            s.name, str(s.frames), f"{s.frames_with_face} ({rate})", str(s.faces), str(len(s.tracks)),
            f"{s.fps:.1f}", f"{s.seconds:.1f}", "\n".join(str(p) for p in s.written),
        )
    for s in report.sets:
        table.add_row(s.name, str(s.images), "(crops)", str(s.images), "-", f"{s.fps:.1f}", f"{s.seconds:.1f}", str(s.written))
    return table


def register(app: typer.Typer) -> None:
    @app.command("predict", help=HELP, short_help="Predict affect on videos, images and ABAW test lists (tables, overlays, submissions).")
    def predict_command(
        inputs: Annotated[list[str], typer.Argument(help="Videos, images, folders, ABAW lists or an LSD class-folder tree.", show_default=False)],
        model: Annotated[Path | None, typer.Option("--model", "-m", help=f"A best.pt from train-mtl or cotrain (default: ${MODEL_ENV}, else {PIPELINE_MODEL}, which `make pipeline` leaves).", show_default=False)] = None,
        out: OutOption = None,
        images: Annotated[Path | None, typer.Option("--images", help="Folder the images of ABAW lists are relative to (default: cropped_aligned or test_set_images beside the list, else the list's folder).")] = None,
        overlay: Annotated[Path | None, typer.Option("--overlay", help="Overlay video (.mp4 file, or a folder for several videos).")] = None,
        overlay_label: Annotated[str, typer.Option("--overlay-label", help="Whose expression the overlay writes above a face: model (its own heads) or prior (EMMA's frozen expression CNN).")] = "model",
        plot: Annotated[Path | None, typer.Option("--plot", help="Timeline plot (.png file, or a folder).")] = None,
        table_format: Annotated[str | None, typer.Option("--format", help="Per-frame table format in folder mode: csv (default) or parquet (needs pyarrow).")] = None,
        faces: Annotated[str, typer.Option("--faces", help="`largest`: one face per frame; `all`: every face, tracked.")] = "largest",
        detect_every: Annotated[int, typer.Option("--detect-every", help="Detect faces on every K-th frame, follow them in between.")] = 1,
        smooth: Annotated[float, typer.Option("--smooth", help="Centred moving-average window in seconds (0: off).")] = 0.0,
        min_face: Annotated[int, typer.Option("--min-face", help="Smallest face to find (box side, pixels).")] = 20,
        workers: Annotated[int | None, typer.Option("--workers", help="Image-decoding worker processes for lists (default: by size).")] = None,
        batch: BatchOption = None,
        device: DeviceOption = "auto",
    ) -> None:
        request = PredictRequest(
            inputs=inputs, model=model, out=out, images=images, overlay=overlay, plot=plot,
            table_format=table_format, faces=faces, detect_every=detect_every, smooth_s=smooth,
            batch=batch, min_face=min_face, workers=workers, device=device, overlay_label=overlay_label,
        )
        with stage_errors(PredictInputError):
            report = run_predict(request)
        if report.rank != 0:  # under torchrun rank 0 reports for all ranks
            return
        for warning in report.warnings:
            console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)
        console.print(summary_table(report))
        for s in report.sources:
            if s.frames and not s.frames_with_face:
                console.print(f"warning: no face found in any of the {s.frames} frames of {s.name}: its table has only empty rows (face=0)", style="yellow", markup=False, highlight=False)
        frames = sum(s.frames for s in report.sources) + sum(s.images for s in report.sets)
        console.print(f"{frames} frames/images in {report.seconds:.1f} s ({frames / max(report.seconds, 1e-9):.1f} per second overall)", highlight=False)
