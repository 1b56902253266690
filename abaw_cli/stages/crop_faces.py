"""`abaw crop-faces`: the command line of face detection, alignment and cropping (the library:
abaw_cli/faces/crop.py and faces/output.py)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from abaw_cli.faces.crop import CropReport, crop_faces
from abaw_cli.faces.output import CropFacesError, CropSettings
from abaw_cli.options import BatchOption, DeviceOption, OutDirOption
from abaw_cli.progress import console
from abaw_cli.stages.common import stage_errors


def summary_table(report: CropReport) -> Table:
    table = Table(title="crop-faces", show_footer=True)
    done = [r for r in report.results if r.status != "failed"]
    frames = sum(r.frames for r in done)
    with_face = sum(r.frames_with_face for r in done)
    fresh = [r for r in done if r.status == "done"]
    fresh_s = sum(r.seconds for r in fresh)
    fresh_fps = f"{sum(r.frames for r in fresh) / fresh_s:.1f}" if fresh_s > 0 else ""
    table.add_column("source", footer=f"{len(done)} of {len(report.results)}")
    table.add_column("status")
    table.add_column("frames", justify="right", footer=str(frames))
    table.add_column("faces", justify="right", footer=str(sum(r.faces for r in done)))
    table.add_column("tracks", justify="right")
    table.add_column("detection rate", justify="right", footer=f"{with_face / frames:.1%}" if frames else "")
    table.add_column("fps", justify="right", footer=fresh_fps)
    for r in report.results:
        if r.status == "failed":  # the reason is listed under the table
            table.add_row(r.name, "[red]failed[/red]", "", "", "", "", "")
            continue
        table.add_row(
            r.name, r.status, str(r.frames), str(r.faces), str(r.tracks),
            f"{r.detection_rate:.1%}", f"{r.fps:.1f}" if r.status == "done" else "",
        )
    return table


HELP = """Detect (MTCNN), align and crop faces from videos, images, folders and path lists.

INPUT: video files (any container OpenCV reads), image files, folders (searched recursively; a
folder of images is one source, its images the frames) and .txt lists of such paths. Writes
OUT/<source>/<frame:05d>.jpg aligned faces (OUT/<source>_<track>/ with --faces all) and
OUT/faces.csv: one row per face per frame, and a face=0 row for a frame without a face. Unreadable
inputs are reported and skipped; the exit code is 1 only when nothing could be processed. Running
it again skips the sources already finished in OUT. Photos are searched for faces on a copy of at
most 640 px (--min-face is measured there) and cropped from the full-resolution image. Under
torchrun (torchrun --nproc_per_node=N -m abaw_cli crop-faces ...) each source goes to one rank and
rank 0 writes the one faces.csv.

[bold]Examples[/]

  abaw crop-faces clip.mp4 --out crops

  abaw crop-faces videos/ photos/ list.txt --out crops --size 224 --fps 5

  abaw crop-faces party.mkv --out crops --faces all --min-face 40 --device cuda --batch 32
"""


def register(app: typer.Typer) -> None:
    @app.command(
        "crop-faces",
        help=HELP,
        short_help="Detect, align and crop faces from videos and images (s-Aff-Wild2 layout).",
    )
    def crop_faces_command(
        inputs: Annotated[
            list[str],
            typer.Argument(help="Video files, image files, folders (searched recursively) or .txt lists of paths.", show_default=False),
        ],
        out: OutDirOption,
        size: Annotated[int, typer.Option("--size", help="Crop size in pixels: 112 (s-Aff-Wild2) or 224.")] = 112,
        fps: Annotated[float | None, typer.Option("--fps", help="Sample videos at this rate (default: every frame).")] = None,
        faces: Annotated[str, typer.Option("--faces", help="largest: one face per frame; all: every face, tracked.")] = "largest",
        min_face: Annotated[int, typer.Option("--min-face", help="Smallest face to find (box side, pixels).")] = 20,
        device: DeviceOption = "auto",
        batch: BatchOption = None,
    ) -> None:
        settings = CropSettings(size=size, faces=faces, fps=fps, min_face=min_face)
        with stage_errors(CropFacesError):
            report = crop_faces(inputs, out, settings, device=device, batch=batch)
        if report.rank == 0:  # under torchrun rank 0 reports for all ranks
            console.print(summary_table(report))
            for r in report.results:
                if r.status == "failed":
                    console.print(f"[red]failed[/red] {r.error}")
            for s in report.skipped:
                console.print(f"[yellow]skipped[/yellow] {s}")
            console.print(f"faces table: {report.manifest}")
        if not report.usable:
            if report.rank == 0:
                console.print("[red]nothing could be processed[/red]")
            raise typer.Exit(code=1)
