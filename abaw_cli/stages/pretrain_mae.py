"""`abaw pretrain-mae`: the command line of MAE pretraining (the task: abaw_cli/train/mae.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from abaw_cli.config import ConfigError
from abaw_cli.data.images import ImageSourceError
from abaw_cli.options import OutDirOption
from abaw_cli.progress import console
from abaw_cli.stages.common import TrainingOptions, stage_errors, training_command
from abaw_cli.train.engine import EngineError
from abaw_cli.train.mae import ENCODER_FILE, STAGE, pretrain_mae

EXAMPLES = """

[bold]Examples[/bold]

  abaw pretrain-mae demo/pool --out runs/mae --preset cpu-small

  abaw pretrain-mae crops/ celeba/img_align_celeba --out runs/mae-b16 --preset paper --device cuda

  torchrun --nproc_per_node=8 -m abaw_cli pretrain-mae celeba/ --out runs/mae-b16 --preset paper --accum 2

  abaw pretrain-mae --out runs/mae --resume            (continue exactly where it stopped)

  abaw pretrain-mae demo/pool --out runs/quick --preset test-tiny --max-steps 20
"""


def register(app: typer.Typer) -> None:
    @app.command(
        "pretrain-mae",
        help=(
            "Masked-autoencoder pretraining of the ViT on unlabeled face images (folders, crop-faces "
            "faces.csv, .txt lists). Writes encoder.pt (official MAE key names) for train-mtl / cotrain --init, "
            "checkpoint-last.pt, log.jsonl, a loss curve and per-epoch reconstruction grids." + EXAMPLES
        ),
        short_help="MAE pretraining of the ViT on unlabeled faces -> encoder.pt.",
    )
    @training_command(STAGE)
    def pretrain_mae_command(
        data: Annotated[
            list[Path] | None,
            typer.Argument(help="Folders of face images (searched recursively), faces.csv / .csv / .txt manifests, or images.", show_default=False),
        ] = None,
        out: OutDirOption = Path("runs/mae"),
        training: TrainingOptions = TrainingOptions(),
    ) -> None:
        with stage_errors(ImageSourceError, ConfigError, EngineError):
            result = pretrain_mae(data, out, training.preset, training.resume, training.overrides(), training.check_images)
        if result.main:
            last = result.history[-1] if result.history else {}
            console.print(f"encoder: {out / ENCODER_FILE}  (train loss {last.get('train_loss', float('nan')):.4f} at step {last.get('step', 0)})")
