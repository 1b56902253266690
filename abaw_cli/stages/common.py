"""What the three training stages (pretrain-mae, train-mtl, cotrain) do the same way: the preset
check, the shared optimiser overrides, and how failures become exit codes and messages."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator

import typer

from abaw_cli.config import available_presets
from abaw_cli.progress import console
from abaw_cli.train.engine import NonFiniteLossError

log = logging.getLogger(__name__)

# Exit codes: 2 = bad input or an output that cannot be written (nothing was half-written);
# 1 = the run itself failed (a non-finite loss; the last good checkpoint is kept).
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1
# --init value of train-mtl and cotrain for a randomly initialised ViT.
INIT_NONE = "none"


def full_lr_from_scratch(cfg) -> None:
    """With --init none there is nothing pretrained for layer-wise lr decay to preserve: every layer
    must learn, so the decay goes to 1.0 (`cfg` has `.init` and `.optim.layer_decay`)."""
    if cfg.init == INIT_NONE and cfg.optim.layer_decay < 1.0:
        log.info("--init none: layer-wise lr decay %.2f -> 1.0 (nothing pretrained to preserve)", cfg.optim.layer_decay)
        cfg.optim.layer_decay = 1.0


def check_preset(stage: str, preset: str) -> None:
    if preset not in available_presets(stage):
        raise typer.BadParameter(f"no preset {preset!r}; available: {', '.join(available_presets(stage))}", param_hint="--preset")


def optim_overrides(*, epochs, max_steps, batch, accum, lr, workers, seed, device: str, resume: bool) -> dict:
    """The `optim.*` overrides every training stage takes from its command line (None = the preset's)."""
    return {
        "optim.epochs": epochs, "optim.max_steps": max_steps, "optim.batch_size": batch, "optim.accum_steps": accum,
        "optim.lr": lr, "optim.num_workers": workers, "optim.seed": seed,
        # On --resume the run's own device stands unless one is asked for explicitly.
        "optim.device": device if device != "auto" or not resume else None,
    }


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


@contextlib.contextmanager
def stage_errors(*user_errors: type[BaseException]) -> Iterator[None]:
    """Turn the expected failures of a stage into one clear line and an exit code, not a traceback."""
    try:
        yield
    except NonFiniteLossError as exc:
        console.print(f"[red]stopped:[/red] {exc}")
        raise typer.Exit(code=EXIT_RUN_FAILED) from exc
    except user_errors as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=EXIT_BAD_INPUT) from exc
    except OSError as exc:
        console.print(f"[red]error:[/red] {describe_os_error(exc)}")
        raise typer.Exit(code=EXIT_BAD_INPUT) from exc
