"""CLI options that mean the same in every subcommand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DeviceOption = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu or cuda.")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed; the same seed repeats a run.")]
OutDirOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if missing).")]
PresetOption = Annotated[
    str,
    typer.Option("--preset", help="Recipe preset: `paper` (the paper's, for GPUs), `cpu-small` (minutes on a CPU), `test-tiny`."),
]
EpochsOption = Annotated[int | None, typer.Option("--epochs", help="Override the preset's epoch count.")]
MaxStepsOption = Annotated[
    int | None, typer.Option("--max-steps", help="Stop after this many optimiser steps (for quick runs).")
]
BatchOption = Annotated[int | None, typer.Option("--batch", help="Per-process batch size (overrides the preset).")]
AccumOption = Annotated[int | None, typer.Option("--accum", help="Gradient accumulation steps (overrides the preset).")]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue from RUN/checkpoint-last.pt exactly where it stopped.")
]
LrOption = Annotated[
    float | None, typer.Option("--lr", help="Absolute learning rate (instead of base lr x effective batch / 256).")
]
WorkersOption = Annotated[int | None, typer.Option("--workers", help="Data-loading worker processes.")]
# Training stages take the seed as an override: None keeps the preset's (or, on --resume, the run's).
RunSeedOption = Annotated[int | None, typer.Option("--seed", help="Random seed; the same seed repeats a run.")]
