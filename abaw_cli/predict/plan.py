"""Turn predict's command line into jobs with output paths, refusing bad input before any work.

Jobs: an ImageSet (ABAW list / LSD tree -> submission file) or a faces Source (video, photo,
folder of frames -> per-frame table). Output paths follow one rule for --out, --overlay and --plot:
a path with a file suffix is that file (then it must serve exactly one job); any other path is a
folder that gets one file per job, named after the job:
    <out>/<name>.csv (or .parquet)   per-frame table of a video / image source
    <out>/<name>.submission.txt      ABAW submission of a list or LSD tree
    <overlay>/<name>.mp4             overlay video (videos only)
    <plot>/<name>.png                timeline plot
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from abaw_cli.faces.sources import Source, expand_inputs
from abaw_cli.predict.lists import ImageSet, is_image_set, load_image_set
from abaw_cli.predict.pipeline import SourceOutputs
from abaw_cli.predict.tables import table_format_for

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
SUBMISSION_SUFFIXES = (".txt", ".csv")
DEFAULT_OUT = Path("predictions")


class PlanError(ValueError):
    """Inputs or output paths that cannot work together (message says which and why)."""


@dataclass(frozen=True)
class SetJob:
    image_set: ImageSet
    out: Path


@dataclass(frozen=True)
class SourceJob:
    source: Source
    outputs: SourceOutputs


def _is_file_path(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.suffix.lower() in suffixes


def expand_jobs(inputs: list[str], images_root: Path | None) -> tuple[list[ImageSet | Source], list[str]]:
    """Jobs in input order, plus problems (unusable inputs) to report; nothing runs yet."""
    jobs: list[ImageSet | Source] = []
    problems: list[str] = []
    plain: list[str] = []

    def flush_plain() -> None:
        sources, skipped = expand_inputs(plain)
        jobs.extend(sources)
        problems.extend(str(s) for s in skipped)
        plain.clear()

    for raw in inputs:
        if is_image_set(Path(raw)):
            flush_plain()
            jobs.append(load_image_set(raw, images_root))
        else:
            plain.append(raw)
    flush_plain()
    return jobs, problems


def plan_outputs(
    jobs: list[ImageSet | Source],
    out: Path | None,
    overlay: Path | None,
    plot: Path | None,
    table_format: str | None,
) -> list[SetJob | SourceJob]:
    out = out or DEFAULT_OUT
    out_is_file = _is_file_path(out, TABLE_SUFFIXES + SUBMISSION_SUFFIXES)
    if out_is_file and len(jobs) != 1:
        raise PlanError(f"--out {out} is a file but there are {len(jobs)} inputs; give a folder instead")
    videos = [j for j in jobs if isinstance(j, Source) and j.kind == "video"]
    sources = [j for j in jobs if isinstance(j, Source)]
    for flag, path, suffix, candidates in (("--overlay", overlay, ".mp4", videos), ("--plot", plot, ".png", sources)):
        if path is not None and path.suffix and len(candidates) != 1:
            what = "videos" if flag == "--overlay" else "videos or image sources"
            raise PlanError(f"{flag} {path} is a file but there are {len(candidates)} {what}; give a folder instead")
        if path is not None and path.suffix and path.suffix.lower() != suffix:
            raise PlanError(f"{flag} must be a {suffix} file or a folder (got {path})")
    if overlay is not None and not videos:
        raise PlanError("--overlay draws on videos, and no input is a video")
    if plot is not None and not sources:
        raise PlanError("--plot draws the timeline of videos or images, and the inputs are only ABAW lists")

    planned: list[SetJob | SourceJob] = []
    for job in jobs:
        if isinstance(job, ImageSet):
            if out_is_file and not _is_file_path(out, SUBMISSION_SUFFIXES):
                raise PlanError(f"--out {out}: a submission for {job.origin} is a .txt (or .csv) file")
            planned.append(SetJob(job, out if out_is_file else out / f"{job.name}.submission.txt"))
            continue
        if out_is_file and not _is_file_path(out, TABLE_SUFFIXES):
            raise PlanError(f"--out {out}: the per-frame table of {job.path} is a .csv or .parquet file")
        fmt = table_format_for(out if out_is_file else Path(f"x.{table_format or 'csv'}"), table_format)
        table = out if out_is_file else out / f"{job.name}.{fmt}"
        job_overlay = None
        if overlay is not None and job.kind == "video":
            job_overlay = overlay if overlay.suffix else overlay / f"{job.name}.mp4"
        job_plot = (plot if plot.suffix else plot / f"{job.name}.png") if plot is not None else None
        planned.append(SourceJob(job, SourceOutputs(table, fmt, job_overlay, job_plot)))
    return planned
