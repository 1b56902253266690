"""The `abaw` command line: one thin subcommand per stage; the stages do the work."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from abaw_cli import __version__

console = Console(stderr=True)

app = typer.Typer(
    name="abaw",
    help=(
        "Facial affect analysis (valence/arousal, 8 expressions, 12 action units) with an "
        "MAE-pretrained ViT and facial priors: the ABAW4 EMMA and Masked CoTEX systems, end to end."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Stage modules, in pipeline order. Each exposes `register(app)`; a stage is listed only once it works.
STAGES: tuple[str, ...] = (
    "demo_data",
    "crop_faces",
    "pretrain_mae",
    "train_mtl",
    "cotrain",
    "predict",
    "score",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"abaw {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )


for _stage in STAGES:
    importlib.import_module(f"abaw_cli.stages.{_stage}").register(app)


def run() -> None:  # pragma: no cover - console entry for `python -m abaw_cli`
    sys.exit(app())
