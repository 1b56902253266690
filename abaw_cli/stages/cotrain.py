"""`abaw cotrain`: the command line of Masked CoTEX training (the task: abaw_cli/train/cotrain.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from abaw_cli.config import ConfigError
from abaw_cli.data.formats import FormatError
from abaw_cli.data.lsd import BALANCE_CHOICES
from abaw_cli.data.manifest import DatasetError
from abaw_cli.models.vit import EncoderLoadError
from abaw_cli.options import OutDirOption
from abaw_cli.progress import console
from abaw_cli.stages.common import TrainingOptions, stage_errors, training_command
from abaw_cli.train.engine import EngineError
from abaw_cli.train.cotrain import STAGE, cotrain

EXAMPLES = """

[bold]Examples[/bold]

  abaw cotrain --data demo/lsd --out runs/cotex --init runs/mae/encoder.pt --preset cpu-small

  abaw cotrain --data demo/lsd --out runs/cotex-u --init runs/mae/encoder.pt --unlabeled crops/ --pseudo-threshold 0.9

  abaw cotrain --data demo/lsd --out runs/cotex-t --init runs/mae/encoder.pt --unlabeled demo/lsd/LSD_Challenge_test_set_release.txt

  abaw cotrain --data ABAW4/LSD --out runs/cotex-b16 --init mae_pretrain_vit_base.pth --preset paper --mask-ratio 0.5 --device cuda

  torchrun --nproc_per_node=4 -m abaw_cli cotrain --data ABAW4/LSD --out runs/cotex-b16 --init encoder.pt --preset paper --accum 1

  abaw cotrain --out runs/cotex --resume            (continue exactly where it stopped)

  abaw predict ABAW4/LSD/validation_set_real_images --model runs/cotex/best.pt --out lsd_submission.txt   (6 classes)

The preset batch is scaled by 1/(1 - mask ratio) as in the paper; an explicit --batch is used as given.
"""


def register(app: typer.Typer) -> None:
    @app.command(
        "cotrain",
        help=(
            "Masked CoTEX on the LSD layout: two ViT views (both from the same --init encoder) each drop a "
            "random share of their patch tokens; loss = mean cross-entropy + lambda x Jensen-Shannon divergence "
            "between the views; prediction = argmax of the summed logits. Validation macro-F1 (each view and "
            "the pair) on the real faces every epoch; best.pt, metrics.json, confusion matrix. --unlabeled adds "
            "co-training on real faces (each view pseudo-labels confident, agreed faces for the other)." + EXAMPLES
        ),
        short_help="Masked CoTEX: two masked ViT views co-trained on synthetic faces (LSD) -> best.pt.",
    )
    @training_command(STAGE)
    def cotrain_command(
        data: Annotated[Path | None, typer.Option("--data", help="LSD root: training_set_synthetic_images/ and validation_set_real_images/ (class folders).")] = None,
        out: OutDirOption = Path("runs/cotrain"),
        init: Annotated[str | None, typer.Option("--init", help="encoder.pt (pretrain-mae) or a public MAE file for both views, or `none` (random).")] = None,
        mask_ratio: Annotated[float | None, typer.Option("--mask-ratio", help="Share of patch tokens each view drops in training (0 = none).")] = None,
        lambda_js: Annotated[float | None, typer.Option("--lambda-js", help="Weight of the Jensen-Shannon consistency term (paper: 100).")] = None,
        unlabeled: Annotated[Path | None, typer.Option("--unlabeled", help="Real face crops for co-training: a folder (e.g. crop-faces output), an image list, or the unlabelled test release LSD_Challenge_test_set_release.txt (images in test_set_images/ beside it).")] = None,
        pseudo_threshold: Annotated[float | None, typer.Option("--pseudo-threshold", help="Confidence both views need to pseudo-label an unlabeled face.")] = None,
        pseudo_weight: Annotated[float | None, typer.Option("--pseudo-weight", help="Weight of the pseudo-label cross-entropy.")] = None,
        pseudo_start_epoch: Annotated[int | None, typer.Option("--pseudo-start-epoch", help="First epoch (0-based) that uses pseudo-labels.")] = None,
        pseudo_class_share: Annotated[float | None, typer.Option("--pseudo-class-share", help="At most share x batch / 6 pseudo-labels per class in a batch (0 = no cap).")] = None,
        balance: Annotated[str | None, typer.Option("--balance", help=f"Class imbalance: {' | '.join(BALANCE_CHOICES)} (sampler: classes drawn equally often; weights: weighted CE).")] = None,
        manifest: Annotated[str | None, typer.Option("--manifest", help="Dataset manifest to check --data against (auto: demo-lsd for demo data, else abaw4-lsd).")] = None,
        training: TrainingOptions = TrainingOptions(),
    ) -> None:
        if balance is not None and balance not in BALANCE_CHOICES:
            raise typer.BadParameter(f"must be one of {', '.join(BALANCE_CHOICES)}", param_hint="--balance")
        overrides = {
            "data.root": str(data) if data else None, "init": init, "model.mask_ratio": mask_ratio,
            "loss.lambda_js": lambda_js, "data.unlabeled": str(unlabeled) if unlabeled else None,
            "loss.pseudo_threshold": pseudo_threshold, "loss.pseudo_weight": pseudo_weight, "loss.balance": balance,
            "loss.pseudo_start_epoch": pseudo_start_epoch, "loss.pseudo_class_share": pseudo_class_share,
            "data.manifest": manifest,
        } | training.overrides()
        with stage_errors(DatasetError, FormatError, ConfigError, EngineError, EncoderLoadError, ValueError):
            result = cotrain(out, training.preset, training.resume, overrides, training.check_images)
        if not result.main:
            return
        if result.best:
            m = result.best["metrics"]
            views = "  ".join(f"view {v}: {m[f'f1_view{v}']:.3f}" for v in (1, 2) if f"f1_view{v}" in m)
            console.print(f"best: {result.best_checkpoint}  (epoch {result.best['epoch'] + 1}: macro-F1 pair {m['f1']:.3f}  {views})")
        else:
            console.print(f"run folder: {out}")
