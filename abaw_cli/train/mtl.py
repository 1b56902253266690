"""EMMA on the s-Aff-Wild2 layout (valence/arousal + 8 expressions + 12 AUs): the engine task
behind `abaw train-mtl`.

Run folder (besides the engine's config.yaml, log.jsonl, checkpoint-last.pt, metrics.json and
loss_curve.png):
    best.pt              the epoch with the highest validation P_MTL (AUs at 0.5, not tuned on validation);
                         meta: input_size, expressions (labels.EXPRESSIONS), aus (labels.AUS),
                         au_thresholds (12 sigmoid-probability thresholds, used by `abaw predict`:
                         0.5, or tuned on validation with `au_thresholds: validation`),
                         normalization, prior (the --cnn spec), prior_classes, output_layout, init,
                         metrics (P_MTL with AUs at 0.5 and with validation-tuned thresholds),
                         metrics_detail (per class / AU, both threshold sets), dataset (the data
                         manifest it learned from, e.g. demo-mtl)
    val_curves.png       P_MTL (tuned / 0.5), VA CCC, expression F1, AU F1 per epoch
    confusion_matrix.png validation expression confusion matrix of the best epoch
metrics.json's best_epoch.details holds the per-class / per-AU F1s and the AU thresholds.

Training (the paper's recipe in preset `paper`): loss = [(1 - CCC_V) + (1 - CCC_A)] + CE(expression)
+ BCE(AUs, pos_weight = negatives / positives of the TRAINING labels), every term over the frames
that carry its label (train/losses.py); AdamW with MAE's layer-wise lr decay (0.65), weight decay
0.05, lr = 5e-4 x effective batch / 256, 5 warm-up epochs then cosine to 1e-6, gradient clipping.
Deviation from the authors' script, on purpose: their VA head had its own Adam (lr 1e-4, stepped
every micro-batch); here it is one more top-layer group of the same AdamW and schedule.

Validation (every epoch, every validation frame in file order, no shuffling, no dropped batch):
CCC of V and A, macro-F1 of the 8 expressions, mean F1 of the 12 AUs, P_MTL = mean CCC + expr F1 +
AU F1. AU decisions threshold sigmoid probabilities (not logits) at 0.5: `p_mtl` and `au_f1`, which
select best.pt, use no threshold tuned on the set they score. Beside them, `p_mtl_val_tuned` and
`au_f1_val_tuned` use per-AU thresholds tuned on validation itself (metrics.tune_au_thresholds):
the thresholds a challenge entry would take to the test set, and an optimistic score of validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from abaw_cli.config import ConfigError, load_run_config
from abaw_cli.data.formats import MTLAnnotations
from abaw_cli.data.manifest import pick_manifest
from abaw_cli.data.mtl import IMAGE_DIR, MTLDataset, class_balanced_weights, load_mtl_splits
from abaw_cli.labels import AUS, EXPRESSIONS
from abaw_cli.metrics import expression_confusion, mtl_scores, tune_au_thresholds
from abaw_cli.models.emma import EMMA, VA_INPUTS, emma_model_config, split_outputs
from abaw_cli.models.priors import build_prior
from abaw_cli.models.vit import (
    IMAGENET_MEAN, IMAGENET_STD, FineTuneViTConfig, load_encoder_weights, resolve_vit_config, vit_from_config,
)
from abaw_cli.plots import save_confusion_matrix
from abaw_cli.train.engine import Engine, EngineError, FitResult, Task, TrainConfig
from abaw_cli.train.finetune import INIT_NONE, data_root, full_lr_from_scratch, read_init
from abaw_cli.train.losses import MTLLoss, MTLLossWeights, au_pos_weight

log = logging.getLogger(__name__)
STAGE = "train_mtl"
# AU decisions of the selection metric (and of best.pt unless `au_thresholds: validation`).
FIXED_AU_THRESHOLD = 0.5
AU_THRESHOLD_CHOICES = ("fixed", "validation")
OUTPUT_LAYOUT = "[valence, arousal, 8 expression logits (expressions order), 12 AU logits (aus order)]"


@dataclass
class MTLModelConfig(FineTuneViTConfig):
    """Defaults = the paper: ViT-B/16 at 224, drop-path 0.1, head 768 -> 512 -> 20, VA head 256.
    With --init the encoder file fixes width, depth, heads and patch (models.vit.resolve_vit_config)."""

    head_hidden: int | None = None  # None: 2/3 of the encoder width (512 for ViT-B)
    va_hidden: int = 256
    va_input: str = "logits"  # logits (the paper) | features (ablation: ViT CLS features to the VA head)
    feature_norm: str = "none"  # none (the paper) | batch (BatchNorm without affine on the pooled features, before the heads)
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
    # The AU thresholds best.pt gives `abaw predict`: fixed (0.5) or validation (tuned on the
    # validation set: for test-set submissions; predictions of validation itself then flatter).
    au_thresholds: str = "fixed"
    model: MTLModelConfig = field(default_factory=MTLModelConfig)
    loss: MTLLossConfig = field(default_factory=MTLLossConfig)
    data: MTLDataConfig = field(default_factory=MTLDataConfig)
    optim: TrainConfig = field(default_factory=_paper_optim)


def check_config(cfg: TrainMTLConfig) -> None:
    if cfg.model.va_input not in VA_INPUTS:
        raise ConfigError(f"--va-input must be one of {', '.join(VA_INPUTS)} (got {cfg.model.va_input!r})")
    if cfg.au_thresholds not in AU_THRESHOLD_CHOICES:
        raise ConfigError(f"--au-thresholds must be one of {', '.join(AU_THRESHOLD_CHOICES)} (got {cfg.au_thresholds!r})")
    if not 0.0 <= cfg.loss.label_smoothing < 1.0:
        raise ConfigError(f"--label-smoothing must be in [0, 1) (got {cfg.loss.label_smoothing})")


def resolve_config(preset: str, out: Path, resume: bool, overrides: dict[str, Any]) -> TrainMTLConfig:
    """Preset + overrides for a new run; for --resume the run's own config.yaml + overrides."""
    cfg = load_run_config(TrainMTLConfig, STAGE, preset, out, resume, overrides)
    full_lr_from_scratch(cfg)
    check_config(cfg)
    return cfg


class MTLTask(Task):
    kind = "mtl"
    selection_metric = "p_mtl"
    curve_keys = ("val_p_mtl", "val_p_mtl_val_tuned", "val_va", "val_expression_f1", "val_au_f1", "train_loss")
    curve_title = "EMMA validation (every frame)"

    def __init__(self, cfg: TrainMTLConfig, train: MTLAnnotations, val: MTLAnnotations, preset: str = ""):
        self.cfg = cfg
        self.train = train
        self.val = val
        self.root = Path(cfg.data.root)
        self.init = read_init(cfg.init)
        vit = resolve_vit_config(cfg.model, self.init, preset)
        # Built once with its pretrained weights; the model_config records only its architecture.
        self.prior = build_prior(cfg.model.prior)
        m = cfg.model
        self._model_config = emma_model_config(vit, self.prior, m.head_hidden, m.va_hidden, m.va_input, m.feature_norm)
        self.pos_weight = au_pos_weight(train.aus)
        log.info("AU pos_weight (neg/pos, training set): %s", ", ".join(f"{a} {w:.2f}" for a, w in zip(AUS, self.pos_weight.tolist())))
        lw = cfg.loss
        self.loss_fn = MTLLoss(self.pos_weight, lw.label_smoothing, MTLLossWeights(lw.weight_va, lw.weight_expression, lw.weight_au))
        self.thresholds = np.full(len(AUS), 0.5, dtype=np.float32)
        self.details: dict[str, Any] = {}
        self._confusion: np.ndarray | None = None
        self._val_dataset: MTLDataset | None = None

    # ---- model
    def build_model(self) -> EMMA:
        m = self.cfg.model
        encoder = vit_from_config(self._model_config["vit"])
        if self.init is not None:
            report = load_encoder_weights(encoder, self.init)
            log.info("--init: %s", report.summary())
            self.init = None  # the weights are in the model now; the file's copy can go
        return EMMA(encoder, self.prior, self._model_config["head_hidden"], m.va_hidden, m.va_input, m.feature_norm)

    def model_config(self) -> dict:
        return self._model_config

    # ---- data
    def train_dataset(self) -> Dataset:
        return MTLDataset(self.root, self.train, self.cfg.model.input_size, train=True)

    def image_paths(self) -> list[Path]:
        return [self.root / IMAGE_DIR / name for name in self.train.images]

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
        if self._val_dataset is None:  # built once: its frames are decoded once for the whole run
            self._val_dataset = MTLDataset(self.root, self.val, self.cfg.model.input_size, train=False)
        loader = DataLoader(
            self._val_dataset,
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
        tuned_thresholds = tune_au_thresholds(au_probs, self.val.aus)
        fixed = mtl_scores(va, expression, (au_probs >= FIXED_AU_THRESHOLD).astype(np.int64), self.val)
        tuned = mtl_scores(va, expression, (au_probs >= tuned_thresholds).astype(np.int64), self.val)
        fixed_thresholds = np.full(len(AUS), FIXED_AU_THRESHOLD, dtype=np.float32)
        self.thresholds = tuned_thresholds if self.cfg.au_thresholds == "validation" else fixed_thresholds
        self.details = {
            "au_thresholds": {a: float(t) for a, t in zip(AUS, self.thresholds)},
            "au_thresholds_val_tuned": {a: float(t) for a, t in zip(AUS, tuned_thresholds)},
            "expression_f1_per_class": fixed["expression_f1_per_class"],
            "au_f1_per_au": fixed["au_f1_per_au"],
            "au_f1_per_au_val_tuned": tuned["au_f1_per_au"],
            "warnings": fixed["warnings"],
        }
        self._confusion = expression_confusion(expression, self.val.expression) if self.val.has_expression.any() else None
        return {
            "p_mtl": fixed["p_mtl"],
            "p_mtl_val_tuned": tuned["p_mtl"],
            "va": fixed["va"],
            "ccc_valence": fixed["ccc_valence"],
            "ccc_arousal": fixed["ccc_arousal"],
            "expression_f1": fixed["expression_f1"],
            "au_f1": fixed["au_f1"],
            "au_f1_val_tuned": tuned["au_f1"],
            "n_frames": fixed["n_frames"],
        }

    def validation_details(self) -> dict:
        return self.details

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
            # The data manifest it learned from: predict warns when a demo model meets real faces.
            "dataset": pick_manifest(self.root, self.cfg.data.manifest, "mtl"),
            "metrics": dict(val_metrics or {}),
            "metrics_detail": self.details,
        }

    def on_best(self, model, run_dir: Path, epoch: int, metrics: dict[str, float]) -> None:
        if self._confusion is not None:
            title = f"validation expressions, epoch {epoch + 1}, P_MTL {metrics['p_mtl']:.3f}"
            save_confusion_matrix(self._confusion, list(EXPRESSIONS), run_dir / "confusion_matrix.png", title)


def train_mtl(out: Path, preset: str = "cpu-small", resume: bool = False, overrides: dict[str, Any] | None = None,
              check_images: bool = False) -> FitResult:
    """The whole stage as a function; `result.best_checkpoint` is the best.pt it leaves."""
    cfg = resolve_config(preset, out, resume, overrides or {})
    root = data_root(cfg)
    train, val = load_mtl_splits(root, pick_manifest(root, cfg.data.manifest, "mtl"))
    log.info("MTL %s: %d training frames (VA %d, expression %d, AU %d), %d validation frames", root, len(train),
             int(train.has_va.sum()), int(train.has_expression.sum()), int(train.has_aus.sum()), len(val))
    task = MTLTask(cfg, train, val, preset)
    return Engine(cfg.optim, task, out, resume=resume, run_config=cfg, check_images=check_images).fit()
