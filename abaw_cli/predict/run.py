"""`abaw predict` as a library call: plan, check everything, then stream every job.

    report = run_predict(PredictRequest(inputs=["clip.mp4"], model=Path("runs/mtl/best.pt")))
    report = run_predict(PredictRequest(inputs=["clip.mp4"]))   # model_choice.choose_model's default

All refusals come before any output is written, so a bad checkpoint, a missing listed image or an
unreadable video fails in seconds. They are PredictInputError (the CLI maps them to exit code 2).

Under torchrun (`torchrun --nproc_per_node=N -m abaw_cli predict ...`) every rank plans and checks
the same jobs, then runs only the jobs it owns (train.distributed.run_shared: each video, image
source or list goes to exactly one rank, by the bytes it reads); every job writes its own files, so
the outputs are those of a one-process run, and rank 0's report covers all jobs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import TextColumn

from abaw_cli.data.formats import FormatError
from abaw_cli.faces.detector import FaceDetector
from abaw_cli.faces.sources import approximate_bytes
from abaw_cli.faces.stream import FACES_MODES
from abaw_cli.faces.video import SourceError, open_source
from abaw_cli.predict.batching import FacePredictor
from abaw_cli.predict.heads import OutputSpaceError
from abaw_cli.predict.model_choice import ModelChoice, NoModelError, choose_model, demo_model_warning
from abaw_cli.predict.overlay import OVERLAY_LABELS
from abaw_cli.predict.pipeline import SourceSummary, VideoOptions, predict_source
from abaw_cli.predict.plan import PlanError, SetJob, SourceJob, expand_jobs, plan_outputs
from abaw_cli.predict.submission import SetSummary, check_task, predict_image_set
from abaw_cli.predict.tables import TableFormatError
from abaw_cli.progress import make_progress
from abaw_cli.runtime import cpu_threads, resolve_device
from abaw_cli.train import distributed as D
from abaw_cli.train.checkpoint import CheckpointError

log = logging.getLogger(__name__)

# Everything that means "the user's input cannot work": exit code 2, message, no traceback.
INPUT_ERRORS = (CheckpointError, OutputSpaceError, FormatError, SourceError, PlanError, TableFormatError, NoModelError)


class PredictInputError(ValueError):
    """Bad input found before (or while opening) a job; the message names the file and reason."""


@dataclass
class PredictRequest:
    inputs: list[str]
    model: Path | None = None  # None: $ABAW_MODEL, else make pipeline's model (model_choice)
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
    overlay_label: str = "model"  # "model" or "prior": whose expression the overlay writes
    show_progress: bool = True


@dataclass
class PredictReport:
    model: Path
    kind: str
    device: str
    model_origin: str = "--model"  # how the model was chosen (model_choice.ModelChoice.origin)
    sources: list[SourceSummary] = field(default_factory=list)
    sets: list[SetSummary] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # said once, by the caller (the CLI prints them)
    rank: int = 0  # under torchrun: this process's rank (only rank 0 needs to report)
    world_size: int = 1


def _check_request(req: PredictRequest) -> None:
    if req.faces not in FACES_MODES:
        raise PlanError(f"--faces must be one of {', '.join(FACES_MODES)} (got {req.faces!r})")
    if req.detect_every < 1:
        raise PlanError(f"--detect-every must be at least 1 (got {req.detect_every})")
    if req.smooth_s < 0:
        raise PlanError(f"--smooth must be >= 0 seconds (got {req.smooth_s})")
    if req.batch is not None and req.batch < 1:
        raise PlanError(f"--batch must be positive (got {req.batch})")
    if req.overlay_label not in OVERLAY_LABELS:
        raise PlanError(f"--overlay-label must be one of {', '.join(OVERLAY_LABELS)} (got {req.overlay_label!r})")
    if not req.inputs:
        raise PlanError("no input given")


def _check_overlay_label(req: PredictRequest, predictor: FacePredictor, model: Path) -> None:
    if req.overlay_label == "prior" and not predictor.space.has_prior:
        what = "a cotrain model" if predictor.space.kind != "mtl" else "an EMMA model trained with --cnn none"
        raise PlanError(f"--overlay-label prior: {model} is {what}, which has no expression prior")


def _job_bytes(job: SetJob | SourceJob) -> float:
    """What a job costs, for dealing jobs to ranks: about the bytes of the files it reads."""
    return approximate_bytes(job.image_set.paths() if isinstance(job, SetJob) else (job.source.images or (job.source.path,)))


def _job_path(job: SetJob | SourceJob) -> Path:
    return job.image_set.origin if isinstance(job, SetJob) else job.source.path


def run_predict(req: PredictRequest) -> PredictReport:
    started = time.perf_counter()
    try:
        device = resolve_device(req.device)
    except (ValueError, RuntimeError) as exc:  # an unknown --device, or cuda without CUDA
        raise PredictInputError(str(exc)) from exc
    created = D.init_distributed(device)
    try:
        try:
            # Every rank plans and checks; a refusal on any rank stops all of them.
            failure, plan = None, None
            try:
                plan = _plan_and_check(req, device)
            except INPUT_ERRORS as exc:
                failure = exc
            D.share_failure(failure)
        except (*INPUT_ERRORS, D.RankFailedError) as exc:
            raise PredictInputError(str(exc)) from exc
        choice, planned, predictor = plan
        report = PredictReport(choice.path, predictor.space.kind, str(device), choice.origin, rank=D.rank(), world_size=D.world_size())
        warning = demo_model_warning(predictor.dataset, predictor.space.kind, choice.path, (_job_path(j) for j in planned))
        if warning:
            report.warnings.append(warning)
        with cpu_threads(device):  # on a CPU: every core of this rank (runtime.cores_per_rank)
            results = _run_jobs(req, planned, predictor, device, show_progress=req.show_progress and report.rank == 0)
    finally:
        if created:
            D.cleanup_distributed()
    for i, job in enumerate(planned):
        (report.sets if isinstance(job, SetJob) else report.sources).append(results[i])
    report.seconds = time.perf_counter() - started
    return report


def _plan_and_check(req: PredictRequest, device) -> tuple[ModelChoice, list[SetJob | SourceJob], FacePredictor]:
    """The model, the jobs with their outputs, and the loaded predictor; INPUT_ERRORS when any of
    it cannot work (nothing has been written yet)."""
    _check_request(req)
    choice = choose_model(req.model)
    jobs, problems = expand_jobs(req.inputs, req.images)
    if problems:
        raise PlanError("cannot use these inputs:\n  " + "\n  ".join(problems))
    if not jobs:
        raise PlanError("nothing to predict in the given inputs")
    planned = plan_outputs(jobs, req.out, req.overlay, req.plot, req.table_format)
    predictor = FacePredictor.from_checkpoint(choice.path, device)
    _check_overlay_label(req, predictor, choice.path)
    for job in planned:
        if isinstance(job, SetJob):
            check_task(job.image_set, predictor)
        else:
            # Opening reads the first frame: an unreadable video fails now, not after others ran.
            open_source(job.source).close()
    return choice, planned, predictor


def _run_jobs(req: PredictRequest, planned: list[SetJob | SourceJob], predictor: FacePredictor, device, show_progress: bool) -> dict:
    """{job index: SetSummary | SourceSummary} for every planned job, this rank running its own."""
    set_batch = req.batch or (256 if device.type == "cuda" else 64)
    video_batch = req.batch or (128 if device.type == "cuda" else 16)
    detector: FaceDetector | None = None

    with make_progress(TextColumn("{task.fields[fps]}"), disable=not show_progress) as progress:

        def run_job(i: int) -> SetSummary | SourceSummary:
            nonlocal detector
            job = planned[i]
            if D.world_size() > 1:
                log.info("rank %d of %d: %s", D.rank(), D.world_size(), job.image_set.name if isinstance(job, SetJob) else job.source.name)
            if isinstance(job, SetJob):
                return predict_image_set(job.image_set, predictor, job.out, set_batch, req.workers, progress)
            if detector is None:  # built by the first rank-owned source: a rank with lists only needs none
                detector = FaceDetector(device=device, min_face=req.min_face, share_cores=True)
            # Photos are unrelated stills: following faces between them would be meaningless.
            detect_every = req.detect_every if job.source.kind == "video" else 1
            options = VideoOptions(req.faces, detect_every, req.smooth_s, video_batch, req.overlay_label)
            return predict_source(job.source, detector, predictor, job.outputs, options, progress)

        weights = [_job_bytes(j) for j in planned] if D.world_size() > 1 else [1.0] * len(planned)
        return D.run_shared(weights, run_job)
