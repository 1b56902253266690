"""`abaw predict` as a library call: plan, check everything, then stream every job.

    report = run_predict(PredictRequest(inputs=["clip.mp4"], model=Path("runs/mtl/best.pt")))

All refusals come before any output is written, so a bad checkpoint, a missing listed image or an
unreadable video fails in seconds. They are PredictInputError (the CLI maps them to exit code 2).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import TextColumn

from abaw_cli.data.formats import FormatError
from abaw_cli.faces.detector import FaceDetector
from abaw_cli.faces.stream import FACES_MODES
from abaw_cli.faces.video import SourceError, open_source
from abaw_cli.predict.batching import FacePredictor
from abaw_cli.predict.heads import OutputSpaceError
from abaw_cli.predict.pipeline import SourceSummary, VideoOptions, predict_source
from abaw_cli.predict.plan import PlanError, SetJob, SourceJob, expand_jobs, plan_outputs
from abaw_cli.predict.submission import SetSummary, check_task, predict_image_set
from abaw_cli.predict.tables import TableFormatError
from abaw_cli.progress import make_progress
from abaw_cli.runtime import resolve_device
from abaw_cli.train.checkpoint import CheckpointError

log = logging.getLogger(__name__)

# Everything that means "the user's input cannot work": exit code 2, message, no traceback.
INPUT_ERRORS = (CheckpointError, OutputSpaceError, FormatError, SourceError, PlanError, TableFormatError)


class PredictInputError(ValueError):
    """Bad input found before (or while opening) a job; the message names the file and reason."""


@dataclass
class PredictRequest:
    inputs: list[str]
    model: Path
    out: Path | None = None
    images: Path | None = None
    overlay: Path | None = None
    plot: Path | None = None
    table_format: str | None = None
    faces: str = "largest"
    detect_every: int = 1
    smooth_s: float = 0.0
    batch: int | None = None
    min_face: int = 20
    workers: int | None = None
    device: str = "auto"


@dataclass
class PredictReport:
    model: Path
    kind: str
    device: str
    sources: list[SourceSummary] = field(default_factory=list)
    sets: list[SetSummary] = field(default_factory=list)
    seconds: float = 0.0


def _check_request(req: PredictRequest) -> None:
    if req.faces not in FACES_MODES:
        raise PlanError(f"--faces must be one of {', '.join(FACES_MODES)} (got {req.faces!r})")
    if req.detect_every < 1:
        raise PlanError(f"--detect-every must be at least 1 (got {req.detect_every})")
    if req.smooth_s < 0:
        raise PlanError(f"--smooth must be >= 0 seconds (got {req.smooth_s})")
    if req.batch is not None and req.batch < 1:
        raise PlanError(f"--batch must be positive (got {req.batch})")
    if not req.inputs:
        raise PlanError("no input given")


def run_predict(req: PredictRequest) -> PredictReport:
    started = time.perf_counter()
    try:
        _check_request(req)
        jobs, problems = expand_jobs(req.inputs, req.images)
        if problems:
            raise PlanError("cannot use these inputs:\n  " + "\n  ".join(problems))
        if not jobs:
            raise PlanError("nothing to predict in the given inputs")
        planned = plan_outputs(jobs, req.out, req.overlay, req.plot, req.table_format)
        device = resolve_device(req.device)
        predictor = FacePredictor.from_checkpoint(req.model, device)
        for job in planned:
            if isinstance(job, SetJob):
                check_task(job.image_set, predictor)
            else:
                # Opening reads the first frame: an unreadable video fails now, not after others ran.
                open_source(job.source).close()
    except INPUT_ERRORS as exc:
        raise PredictInputError(str(exc)) from exc

    report = PredictReport(req.model, predictor.space.kind, str(device))
    set_batch = req.batch or (256 if device.type == "cuda" else 64)
    video_batch = req.batch or (128 if device.type == "cuda" else 16)
    detector = None
    if any(isinstance(j, SourceJob) for j in planned):
        detector = FaceDetector(device=device, min_face=req.min_face)
    with make_progress(TextColumn("{task.fields[fps]}")) as progress:
        for job in planned:
            if isinstance(job, SetJob):
                report.sets.append(predict_image_set(job.image_set, predictor, job.out, set_batch, req.workers, progress))
                continue
            # Photos are unrelated stills: following faces between them would be meaningless.
            detect_every = req.detect_every if job.source.kind == "video" else 1
            options = VideoOptions(req.faces, detect_every, req.smooth_s, video_batch)
            report.sources.append(predict_source(job.source, detector, predictor, job.outputs, options, progress))
    report.seconds = time.perf_counter() - started
    return report
