"""What the stages' command lines share: the training options (declared once, here), the preset
check, and how failures become exit codes and messages."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Annotated

import typer
from rich.text import Text

from abaw_cli.config import available_presets
from abaw_cli.options import (
    AccumOption,
    BatchOption,
    DeviceOption,
    EpochsOption,
    LrOption,
    MaxStepsOption,
    PresetOption,
    ResumeOption,
    RunSeedOption,
    WorkersOption,
)
from abaw_cli.progress import console
from abaw_cli.train.distributed import RankFailedError
from abaw_cli.train.engine import NonFiniteLossError

# Exit codes: 2 = bad input or an output that cannot be written (nothing was half-written);
# 1 = the run itself failed (a non-finite loss; the last good checkpoint is kept).
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1

CheckImagesOption = Annotated[bool, typer.Option(
    "--check-images",
    help="Decode every training image before training starts and report the unreadable ones (a run skips a few; "
         "more than 0.1% stops it).",
)]


@dataclass
class TrainingOptions:
    """The options every training stage (pretrain-mae, train-mtl, cotrain) takes."""

    preset: str = "cpu-small"
    epochs: int | None = None
    max_steps: int | None = None
    batch: int | None = None
    accum: int | None = None
    lr: float | None = None
    workers: int | None = None
    resume: bool = False
    device: str = "auto"
    seed: int | None = None
    check_images: bool = False

    def overrides(self) -> dict:
        """The `optim.*` config overrides (None = the preset's, or on --resume the run's)."""
        return {
            "optim.epochs": self.epochs, "optim.max_steps": self.max_steps, "optim.batch_size": self.batch,
            "optim.accum_steps": self.accum, "optim.lr": self.lr, "optim.num_workers": self.workers,
            "optim.seed": self.seed,
            # On --resume the run's own device stands unless one is asked for explicitly.
            "optim.device": self.device if self.device != "auto" or not self.resume else None,
        }


_OPTION_TYPES = {
    "preset": PresetOption, "epochs": EpochsOption, "max_steps": MaxStepsOption, "batch": BatchOption,
    "accum": AccumOption, "lr": LrOption, "workers": WorkersOption, "resume": ResumeOption,
    "device": DeviceOption, "seed": RunSeedOption, "check_images": CheckImagesOption,
}
_SHARED_PARAMETERS = [
    inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=_OPTION_TYPES[f.name], default=f.default)
    for f in fields(TrainingOptions)
]


def training_command(stage: str) -> Callable[[Callable], Callable]:
    """Decorate a training stage's command function: Typer sees its own options plus the shared
    ones; the function receives those as `training: TrainingOptions` (preset already checked)."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "training"]

        @functools.wraps(command)
        def with_training_options(**kwargs):
            training = TrainingOptions(**{p.name: kwargs.pop(p.name) for p in _SHARED_PARAMETERS})
            check_preset(stage, training.preset)
            return command(**kwargs, training=training)

        with_training_options.__signature__ = signature.replace(parameters=own + _SHARED_PARAMETERS)
        return with_training_options

    return decorate


def check_preset(stage: str, preset: str) -> None:
    if preset not in available_presets(stage):
        raise typer.BadParameter(f"no preset {preset!r}; available: {', '.join(available_presets(stage))}", param_hint="--preset")


def describe_os_error(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    hint = {
        errno.ENOSPC: "the disk is full",
        errno.EFBIG: "the file is larger than this system allows (file-size limit or full quota)",
        errno.EACCES: "the folder is not writable",
        errno.EROFS: "the file system is read-only",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
    }.get(exc.errno, exc.strerror or str(exc))
    return f"cannot write or read{where}: {hint}. Files written before this point are intact (all outputs are written to a temporary name, then renamed)."


def print_error(label: str, message: str) -> None:
    """`label: message` on stderr, the message verbatim: paths like `x[old]` are not rich markup,
    and a long path is not broken across lines."""
    console.print(Text.assemble((f"{label}: ", "red"), message), soft_wrap=True, highlight=False)


@contextlib.contextmanager
def stage_errors(*user_errors: type[BaseException]) -> Iterator[None]:
    """Turn the expected failures of a stage into one clear line and an exit code, not a traceback."""
    try:
        yield
    except (NonFiniteLossError, RankFailedError) as exc:  # the run failed (here, or on another torchrun rank)
        print_error("stopped", str(exc))
        raise typer.Exit(code=EXIT_RUN_FAILED) from exc
    except user_errors as exc:
        print_error("error", str(exc))
        raise typer.Exit(code=EXIT_BAD_INPUT) from exc
    except OSError as exc:
        print_error("error", describe_os_error(exc))
        raise typer.Exit(code=EXIT_BAD_INPUT) from exc
