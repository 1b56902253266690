"""Masked CoTEX on the LSD layout (synthetic training faces, real validation faces): the engine
task behind `abaw cotrain`.

Run folder (besides the engine's config.yaml, log.jsonl, checkpoint-last.pt, metrics.json and
loss_curve.png):
    best.pt                both views, selected by the pair's validation macro-F1; meta: classes
                           (labels.LSD_CLASSES), input_size, metrics, mask_ratio, init, dataset
                           (the data manifest, e.g. demo-lsd)
    confusion_matrix.png   the pair's validation confusion matrix at the best epoch
    val_curves.png         macro-F1 of view 1, view 2 and the pair per epoch

Initialisation: with --init both views load the same encoder file (ours or a public MAE one) and
get a near-zero head (MAE fine-tuning); with --init none both start from the SAME random weights,
so in either case only their token drops tell the views apart at the start.

Loss per batch of B labelled synthetic faces (x, y), logits l_v of view v (its own token drop):
    L = mean_v CE(l_v, y) + lambda_js * JS(softmax l_1, ..., softmax l_V)
with JS the generalised Jensen-Shannon divergence (mean_v KL(p_v || mean p)); CE carries class
weights when --balance weights.

Batch size: the paper trains with batch 64 / (1 - r): dropping a fraction r of the tokens makes a
sample cheaper by about that much, so the batch grows to keep the work per step. With
`data.scale_batch_by_mask` (all presets) the preset's `optim.batch_size` is the batch BEFORE this
scaling; the resolved config.yaml records the scaled batch and the flag off, so a --resume does not
scale twice. An explicit --batch is taken as is (no scaling). Learning rate: the engine's rule is
lr = base_lr x effective batch / 256, so a larger batch also raises the lr; the presets instead set
an absolute `optim.lr` (5e-4 in `paper`, as the authors' script does by default: its lr zoom is
off), so the 1/(1-r) scaling changes the batch only. Set `optim.lr: null` to use the linear rule.

Beyond the paper, --unlabeled SOURCE (classic co-training on real faces: a folder of faces, an
image list, or the challenge's unlabelled test release LSD_Challenge_test_set_release.txt): every
training item is paired with one random unlabeled face (data.lsd.LabelledWithUnlabeled), so a
batch holds B of each. Each view first predicts every unlabeled face with all tokens and no drop-path (no
gradient). A face is pseudo-labelled when all views predict the same class, each with probability
>= --pseudo-threshold; the class a view is taught is the one the OTHER view(s) predicted, and it is
taught on the view's own token-dropped forward of the face. The term added is
    pseudo_weight * mean_v [ sum over pseudo-labelled faces of CE(l_v(u), y_other) ] / B
i.e. normalised by the number of unlabeled faces in the batch, not by the number selected, so
the term grows with the share of confident faces and one lucky face cannot carry a full-batch
weight (as in FixMatch). Pseudo-labelling starts at epoch `pseudo_start_epoch`: views that start
from the same weights agree on everything at first, so the agreement gate would select faces the
model knows nothing about. At most ceil(pseudo_class_share x B / 6) faces per class are
pseudo-labelled in a batch (the most confident ones), as classic co-training adds a fixed number of
examples per class per round: every pseudo-label makes the views surer of the same class, and
without the cap one class can take over the unlabeled term (measured: docs/experiments.md).
Under the agreement rule the other view's label equals the view's own unmasked prediction; what
co-training adds is the other view's confidence gate and the view being taught to reach that
answer from a different, partial set of patches. The JS term is not applied to unlabeled faces.
log.jsonl reports `pseudo_rate`, the share of unlabeled faces selected.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch.utils.data import DataLoader, Dataset

from abaw_cli.config import ConfigError, load_run_config
from abaw_cli.data.formats import LSDSamples
from abaw_cli.data.lsd import (
    LabelledFaces,
    LabelledWithUnlabeled,
    UnlabeledFaces,
    balanced_class_weights,
    balanced_sample_weights,
    check_balance,
    class_counts,
    eval_transform,
    require_every_class,
    train_transform,
)
from abaw_cli.data.images import ImageSourceError, find_images
from abaw_cli.data.manifest import DatasetError, check_dataset, pick_manifest
from abaw_cli.labels import LSD_CLASSES
from abaw_cli.metrics import lsd_confusion, lsd_f1
from abaw_cli.models.cotex import MaskedCoTEX, build_masked_cotex
from abaw_cli.models.vit import FineTuneViTConfig, load_encoder_weights, resolve_vit_config
from abaw_cli.plots import save_confusion_matrix
from abaw_cli.train.engine import Engine, FitResult, Task, TrainConfig, unwrap
from abaw_cli.train.finetune import INIT_NONE, data_root, full_lr_from_scratch, read_init
from abaw_cli.train.losses import js_divergence

log = logging.getLogger(__name__)
STAGE = "cotrain"


@dataclass
class CotrainModelConfig(FineTuneViTConfig):
    """Defaults = the paper: two ViT-B/16 views at 224, drop-path 0.1. With --init the encoder
    file fixes width, depth, heads and patch size (models.vit.resolve_vit_config)."""

    num_views: int = 2  # 1 with mask_ratio 0 is the single-view baseline (no JS term)
    mask_ratio: float = 0.5  # share r of patch tokens each view drops in training (the authors' script leaves it a flag)


@dataclass
class CotrainLossConfig:
    lambda_js: float = 100.0
    balance: str = "sampler"  # sampler | weights | none (the authors' script used none)
    pseudo_threshold: float = 0.9  # --unlabeled: both views agree, each at least this confident
    pseudo_weight: float = 1.0
    pseudo_start_epoch: int = 1  # no pseudo-labels before this epoch (0-based): the views must learn first
    pseudo_class_share: float = 1.0  # per batch at most share x B / 6 pseudo-labels per class (0 = no cap)


@dataclass
class CotrainDataConfig:
    root: str = ""  # LSD root: training_set_synthetic_images/ + validation_set_real_images/
    manifest: str = "auto"  # data_manifests name; auto = demo-lsd for demo data, else abaw4-lsd
    unlabeled: str | None = None  # real face crops for co-training (folder, image list, LSD test release), or None
    scale_batch_by_mask: bool = True  # batch = optim.batch_size / (1 - mask_ratio) (the paper)
    style_augment: bool = False  # colour, blur, JPEG and noise on training faces (data.lsd.style_transforms)
    eval_batch_size: int = 256


def _cotrain_optim() -> TrainConfig:
    # The authors' Masked CoTEX script defaults: 6 epochs, 5 warm-up epochs, accumulation 4,
    # absolute lr 5e-4 (no batch zoom), min lr 1e-6, clip 0.05, torch AdamW betas; MAE's
    # fine-tuning recipe: layer decay 0.65, weight decay 0.05.
    return TrainConfig(
        epochs=6, batch_size=64, accum_steps=4, base_lr=5e-4, lr=5e-4, min_lr=1e-6, warmup_epochs=5,
        weight_decay=0.05, betas=(0.9, 0.999), layer_decay=0.65, clip_grad=0.05, num_workers=8,
    )


@dataclass
class CotrainConfig:
    init: str = INIT_NONE  # encoder.pt (ours or a public MAE file) for both views, or "none"
    model: CotrainModelConfig = field(default_factory=CotrainModelConfig)
    loss: CotrainLossConfig = field(default_factory=CotrainLossConfig)
    data: CotrainDataConfig = field(default_factory=CotrainDataConfig)
    optim: TrainConfig = field(default_factory=_cotrain_optim)


def scale_batch_for_mask(cfg: CotrainConfig) -> None:
    """Apply the paper's batch 64 / (1 - r) once; record it in the config (flag off afterwards)."""
    if not cfg.data.scale_batch_by_mask:
        return
    r = cfg.model.mask_ratio
    scaled = max(1, int(round(cfg.optim.batch_size / (1.0 - r))))
    log.info("batch %d scaled by 1/(1 - mask ratio %.2f) -> %d per process", cfg.optim.batch_size, r, scaled)
    cfg.optim.batch_size = scaled
    cfg.data.scale_batch_by_mask = False


def check_config(cfg: CotrainConfig) -> None:
    try:
        check_balance(cfg.loss.balance)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    m = cfg.model
    if not 0.0 <= m.mask_ratio < 1.0:
        raise ConfigError(f"mask ratio must be in [0, 1) (got {m.mask_ratio})")
    if m.num_views < 1:
        raise ConfigError(f"num_views must be >= 1 (got {m.num_views})")
    if not 0.0 <= cfg.loss.pseudo_threshold <= 1.0:
        raise ConfigError(f"pseudo threshold must be in [0, 1] (got {cfg.loss.pseudo_threshold})")
    if cfg.data.unlabeled and m.num_views < 2:
        raise ConfigError("--unlabeled co-training needs two views")


def load_lsd(root: Path, manifest: str) -> tuple[LSDSamples, LSDSamples]:
    """(train, val) samples, after checking the tree against its manifest."""
    report = check_dataset(root, pick_manifest(root, manifest, "lsd"), splits=["train", "val"])
    train, val = report.data["train"], report.data["val"]
    require_every_class(train.labels, str(root))
    if len(val) == 0:
        raise DatasetError(f"{root}: the validation folders hold no images")
    return train, val


def load_unlabeled(source: str, val: LSDSamples) -> list[Path]:
    """The --unlabeled faces: a folder, an image list or an ABAW test list such as the LSD release
    (data.images.find_images); refuses a source without images and one that holds validation images."""
    try:
        faces = find_images([source])
    except ImageSourceError as err:
        raise DatasetError(f"--unlabeled: {err}") from None
    overlap = {p.resolve() for p in faces} & {Path(p).resolve() for p in val.paths}
    if overlap:
        raise DatasetError(f"--unlabeled {source} holds {len(overlap)} validation image(s) (e.g. {sorted(overlap)[0]}): pseudo-labelling them would leak the validation set")
    return faces


def pseudo_label_loss(
    student: torch.Tensor, teacher: torch.Tensor, threshold: float, per_class_cap: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Co-training term (see the module docstring) -> (loss, selected (B,) bool).

    student: (V, B, C) logits of the token-dropped views on the unlabeled faces (with gradient);
    teacher: (V, B, C) logits of the same views with all tokens (no gradient). A face is selected
    when every view predicts the same class with probability >= threshold; view v is taught the
    class predicted by view v+1 (cyclically: the other view when V = 2). With `per_class_cap`, at
    most that many faces per class are kept, the most confident ones (lowest view confidence
    first out), as classic co-training labels a fixed number of examples per class per round.
    """
    confidence, predicted = teacher.softmax(dim=-1).max(dim=-1)  # (V, B)
    selected = (predicted == predicted[:1]).all(dim=0) & (confidence >= threshold).all(dim=0)
    if per_class_cap is not None:
        score = torch.where(selected, confidence.min(dim=0).values, torch.full_like(confidence[0], -1.0))
        for c in predicted[0][selected].unique():
            members = (selected & (predicted[0] == c)).nonzero().squeeze(1)
            if members.numel() > per_class_cap:
                drop = members[score[members].argsort(descending=True)[per_class_cap:]]
                selected[drop] = False
    n_views, batch = predicted.shape
    terms = []
    for v in range(n_views):
        target = predicted[(v + 1) % n_views]
        per_face = F.cross_entropy(student[v], target, reduction="none")
        terms.append((per_face * selected).sum() / batch)
    return torch.stack(terms).mean(), selected


class CotrainTask(Task):
    kind = "cotrain"
    selection_metric = "f1"
    curve_keys = ("val_f1_view1", "val_f1_view2", "val_f1")
    curve_title = "validation macro-F1"

    def __init__(self, cfg: CotrainConfig, train: LSDSamples, val: LSDSamples, unlabeled: list[Path] | None = None,
                 preset: str = ""):
        self.cfg = cfg
        self.train = train
        self.val = val
        self.unlabeled = unlabeled
        self.init = read_init(cfg.init)
        m = cfg.model
        self._model_config = {
            "vit": resolve_vit_config(m, self.init, preset),
            "num_views": m.num_views,
            "classes": list(LSD_CLASSES),
            "mask_ratio": m.mask_ratio,
        }
        counts = class_counts(train.labels)
        log.info("training classes: %s", ", ".join(f"{c} {n}" for c, n in zip(LSD_CLASSES, counts)))
        self.class_weights = balanced_class_weights(train.labels) if cfg.loss.balance == "weights" else None
        self._last_confusion: np.ndarray | None = None

    # ---- model
    def build_model(self) -> MaskedCoTEX:
        model = build_masked_cotex(self._model_config)
        if self.init is not None:
            for view in model.views:
                load_encoder_weights(view, self.init)
                # MAE fine-tuning: a near-zero head, so both views start from the same encoder answer.
                trunc_normal_(view.head.weight, std=2e-5)
            self.init = None  # the weights are in the model now; the file's copy can go
        else:
            # Views start from the SAME weights, as they do from one encoder: only their token drops
            # tell them apart, and the JS term does not have to fight two unrelated inits.
            for view in model.views[1:]:
                view.load_state_dict(model.views[0].state_dict())
        return model

    def model_config(self) -> dict:
        return self._model_config

    # ---- data
    def train_dataset(self) -> Dataset:
        transform = train_transform(self.cfg.model.input_size, self.cfg.data.style_augment)
        labelled = LabelledFaces(self.train.paths, self.train.labels, transform)
        if self.unlabeled:
            return LabelledWithUnlabeled(labelled, UnlabeledFaces(self.unlabeled, transform))
        return labelled

    def image_paths(self) -> list[Path]:
        return [Path(p) for p in self.train.paths] + list(self.unlabeled or [])

    def train_sampler_weights(self):
        return balanced_sample_weights(self.train.labels) if self.cfg.loss.balance == "sampler" else None

    # ---- loss
    def training_step(self, model, batch, device):
        cfg = self.cfg.loss
        images, labels = batch[0], batch[1]
        unlabeled = batch[2] if len(batch) > 2 and self.epoch >= cfg.pseudo_start_epoch else None
        n = images.shape[0]
        teacher = None
        if unlabeled is not None:
            teacher = self._teacher_logits(unwrap(model), unlabeled)
            logits_all = model(torch.cat([images, unlabeled]), return_views=True)
            logits, logits_u = logits_all[:, :n], logits_all[:, n:]
        else:
            logits = model(images, return_views=True)
        logits = logits.float()
        weight = None if self.class_weights is None else self.class_weights.to(device)
        ce = torch.stack([F.cross_entropy(view_logits, labels, weight=weight) for view_logits in logits]).mean()
        if logits.shape[0] > 1:
            js = js_divergence(list(logits.softmax(dim=-1)))
        else:
            js = logits.sum() * 0.0
        loss = ce + cfg.lambda_js * js
        with torch.no_grad():
            accuracy = (logits.sum(0).argmax(-1) == labels).float().mean()
        logs = {"ce": float(ce.detach()), "js": float(js.detach()), "train_acc": float(accuracy)}
        if teacher is not None:
            cap = math.ceil(cfg.pseudo_class_share * n / logits.shape[-1]) if cfg.pseudo_class_share > 0 else None
            pseudo, selected = pseudo_label_loss(logits_u.float(), teacher, cfg.pseudo_threshold, cap)
            loss = loss + cfg.pseudo_weight * pseudo
            logs.update({"pseudo": float(pseudo.detach()), "pseudo_rate": float(selected.float().mean())})
        elif self.unlabeled:
            logs.update({"pseudo": 0.0, "pseudo_rate": 0.0})
        return loss, logs

    @torch.no_grad()
    def _teacher_logits(self, model: MaskedCoTEX, unlabeled: torch.Tensor) -> torch.Tensor:
        """(V, B, C) logits of every view with all tokens and no drop-path: the pseudo-labellers."""
        was_training = model.training
        model.eval()
        try:
            return model(unlabeled, return_views=True, mask_ratio=0.0).float()
        finally:
            model.train(was_training)

    # ---- validation
    def validate(self, model, device, epoch) -> dict[str, float]:
        loader = DataLoader(
            LabelledFaces(self.val.paths, self.val.labels, eval_transform(self.cfg.model.input_size)),
            batch_size=self.cfg.data.eval_batch_size, shuffle=False, num_workers=self.cfg.optim.num_workers,
        )
        view_logits, truth = [], []
        for images, labels in loader:
            view_logits.append(model(images.to(device), return_views=True, mask_ratio=0.0).float().cpu())
            truth.append(labels)
        logits = torch.cat(view_logits, dim=1)  # (V, N, C)
        y = torch.cat(truth).numpy()
        pair = logits.sum(0).argmax(-1).numpy()
        f1, per_class = lsd_f1(pair, y)
        out = {"f1": f1, "accuracy": float((pair == y).mean())}
        for v in range(logits.shape[0]):
            out[f"f1_view{v + 1}"] = lsd_f1(logits[v].argmax(-1).numpy(), y)[0]
        out.update({f"f1_{name}": float(value) for name, value in zip(LSD_CLASSES, per_class)})
        self._last_confusion = lsd_confusion(pair, y)
        return out

    def checkpoint_meta(self, model, val_metrics) -> dict:
        return {
            "input_size": self.cfg.model.input_size,
            "classes": list(LSD_CLASSES),
            "num_views": self.cfg.model.num_views,
            "mask_ratio": self.cfg.model.mask_ratio,
            "init": self.cfg.init,
            # The data manifest it learned from: predict warns when a demo model meets real faces.
            "dataset": pick_manifest(data_root(self.cfg), self.cfg.data.manifest, "lsd"),
            "normalization": "ImageNet mean/std inside the model; input float RGB in [0, 1]",
            "metrics": dict(val_metrics or {}),
        }

    def on_best(self, model, run_dir: Path, epoch: int, metrics: dict[str, float]) -> None:
        if self._last_confusion is not None:
            title = f"validation (views summed), epoch {epoch + 1}, macro-F1 {metrics['f1']:.3f}"
            save_confusion_matrix(self._last_confusion, list(LSD_CLASSES), run_dir / "confusion_matrix.png", title)


def resolve_config(preset: str, out: Path, resume: bool, overrides: dict[str, Any]) -> CotrainConfig:
    """Preset + overrides for a new run; for --resume the run's own config.yaml + overrides."""
    if overrides.get("optim.batch_size") is not None:
        # An explicit --batch is exact (a resumed run's config has the scaling applied already).
        overrides = {**overrides, "data.scale_batch_by_mask": False}
    cfg = load_run_config(CotrainConfig, STAGE, preset, out, resume, overrides)
    check_config(cfg)
    scale_batch_for_mask(cfg)
    if cfg.init == INIT_NONE and cfg.model.num_views > 1 and cfg.model.mask_ratio > 0 and cfg.loss.lambda_js > 10:
        log.warning(
            "--init none with lambda_js %g: Masked CoTEX is meant to start from an MAE encoder (--init); from random "
            "weights the JS term can hold both views at the uniform answer (seen on the demo set at 100; 10 learned)",
            cfg.loss.lambda_js,
        )
    full_lr_from_scratch(cfg)
    return cfg


def cotrain(out: Path, preset: str = "cpu-small", resume: bool = False, overrides: dict[str, Any] | None = None,
            check_images: bool = False) -> FitResult:
    """The whole stage as a function; `result.best_checkpoint` is the best.pt it leaves."""
    cfg = resolve_config(preset, out, resume, overrides or {})
    root = data_root(cfg)
    train, val = load_lsd(root, cfg.data.manifest)
    unlabeled = None
    if cfg.data.unlabeled:
        unlabeled = load_unlabeled(cfg.data.unlabeled, val)
        log.info("co-training with %d unlabeled faces from %s (threshold %.2f, weight %g, from epoch %d)",
                 len(unlabeled), cfg.data.unlabeled, cfg.loss.pseudo_threshold, cfg.loss.pseudo_weight, cfg.loss.pseudo_start_epoch)
    log.info("LSD %s: %d synthetic training, %d real validation images; balance=%s; mask ratio %.2f; lambda_js %g",
             root, len(train), len(val), cfg.loss.balance, cfg.model.mask_ratio, cfg.loss.lambda_js)
    task = CotrainTask(cfg, train, val, unlabeled, preset)
    return Engine(cfg.optim, task, out, resume=resume, run_config=cfg, check_images=check_images).fit()
