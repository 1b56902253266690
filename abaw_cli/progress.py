"""One look for every progress bar: rich, on stderr, quiet when not on a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def make_progress(*extra_columns, transient: bool = False, disable: bool = False) -> Progress:
    """A rich Progress with description, bar, n/total, %, elapsed, ETA and any extra columns
    (e.g. TextColumn("{task.fields[loss]}") for a training loss). `disable`: draws nothing (the
    other ranks under torchrun, whose bars would overwrite rank 0's)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        transient=transient,
        disable=disable,
    )
