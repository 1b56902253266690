"""`abaw cotrain`: Masked CoTEX on the LSD layout (synthetic training faces, real validation faces).

Run folder:
    config.yaml            resolved config (a --resume reads it back)
    log.jsonl              one row per logged step (loss, ce, js, [pseudo, pseudo_rate]) + one per epoch
    checkpoint-last.pt     both views + train state (kind "cotrain")
    best.pt                both views, selected by the pair's validation macro-F1; meta: classes
                           (labels.LSD_CLASSES), input_size, metrics, mask_rate, init
    metrics.json           engine summary + the best epoch's validation numbers (per view, pair, per class)
    confusion_matrix.png   the pair's validation confusion matrix at the best epoch
    val_curves.png         macro-F1 of view 1, view 2 and the pair per epoch; loss_curve.png

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

Beyond the paper, --unlabeled DIR (classic co-training on real faces): every training item is
paired with one random unlabelled face (data.lsd.LabelledWithUnlabelled), so a batch holds B of
each. Each view first predicts every unlabelled face with all tokens and no drop-path (no
gradient). A face is pseudo-labelled when all views predict the same class, each with probability
>= --pseudo-threshold; the class a view is taught is the one the OTHER view(s) predicted, and it is
taught on the view's own token-dropped forward of the face. The term added is
    pseudo_weight * mean_v [ sum over pseudo-labelled faces of CE(l_v(u), y_other) ] / B
i.e. normalised by the number of unlabelled faces in the batch, not by the number selected, so
the term grows with the share of confident faces and one lucky face cannot carry a full-batch
weight (as in FixMatch). Pseudo-labelling starts at epoch `pseudo_start_epoch` (default 1, i.e.
after one supervised epoch): the views start from the same weights, so early on they agree on
everything and the agreement gate selects faces the model knows nothing about. On the demo set,
threshold 0.3 from the first step pseudo-labelled ~95% of the pool and collapsed the model onto
one class (F1 0.06); 0.9 never fired within 8 epochs of a ViT trained from scratch. Started at
epoch 4 of 8, threshold 0.3 still ran away (27% selected, then 99.7% within an epoch, the model
collapsed onto SURPRISE): every pseudo-label makes the views surer of the same class. Hence, as
in classic co-training (a fixed number of new examples per class per round), at most
ceil(pseudo_class_share x B / 6) faces per class are pseudo-labelled in a batch (the most
confident ones): one class can no longer take over the unlabelled term. Under the agreement rule the other view's label equals the view's own
unmasked prediction; what co-training adds is the other view's confidence gate and the view being
taught to reach that answer from a different, partial set of patches. The JS term is not applied
to unlabelled faces. log.jsonl reports `pseudo_rate`, the share of unlabelled faces selected.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
import typer
from timm.layers import trunc_normal_
from torch.utils.data import DataLoader, Dataset

from abaw_cli.config import ConfigError, load_run_config
from abaw_cli.data.formats import FormatError, LSDSamples
from abaw_cli.data.lsd import (
    BALANCE_CHOICES,
    LabelledFaces,
    LabelledWithUnlabelled,
    UnlabelledFaces,
    balanced_class_weights,
    balanced_sample_weights,
    check_balance,
    class_counts,
    eval_transform,
    list_face_images,
    require_every_class,
    train_transform,
)
from abaw_cli.data.manifest import DatasetError, available_manifests, check_dataset
from abaw_cli.labels import LSD_CLASSES
from abaw_cli.metrics import lsd_confusion, lsd_f1
from abaw_cli.models.cotex import MaskedCoTEX, build_masked_cotex, vit_config
from abaw_cli.models.vit import EncoderLoadError, encoder_spec, load_encoder_weights
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
from abaw_cli.train.engine import Engine, EngineError, Task, TrainConfig, unwrap
from abaw_cli.train.losses import js_divergence

log = logging.getLogger(__name__)
STAGE = "cotrain"


@dataclass
class CotrainModelConfig:
    """Defaults = the paper: two ViT-B/16 views at 224, drop-path 0.1. With --init the encoder
    file fixes width, depth, heads and patch size; `input_size` stays (pos_embed is resized)."""

    size: str = "base"
    input_size: int = 224
    patch_size: int = 16
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    drop_path: float = 0.1
    num_views: int = 2  # 1 with mask_rate 0 is the single-view baseline (no JS term)
    mask_rate: float = 0.5  # token drop rate r in training (the authors' script leaves it a flag)


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
    unlabeled: str | None = None  # folder of real face crops for co-training, or None
    scale_batch_by_mask: bool = True  # batch = optim.batch_size / (1 - mask_rate) (the paper)
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
    r = cfg.model.mask_rate
    scaled = max(1, int(round(cfg.optim.batch_size / (1.0 - r))))
    log.info("batch %d scaled by 1/(1 - mask rate %.2f) -> %d per process", cfg.optim.batch_size, r, scaled)
    cfg.optim.batch_size = scaled
    cfg.data.scale_batch_by_mask = False


def check_config(cfg: CotrainConfig) -> None:
    check_balance(cfg.loss.balance)
    m = cfg.model
    if not 0.0 <= m.mask_rate < 1.0:
        raise ConfigError(f"mask rate must be in [0, 1) (got {m.mask_rate})")
    if m.num_views < 1:
        raise ConfigError(f"num_views must be >= 1 (got {m.num_views})")
    if not 0.0 <= cfg.loss.pseudo_threshold <= 1.0:
        raise ConfigError(f"pseudo threshold must be in [0, 1] (got {cfg.loss.pseudo_threshold})")
    if cfg.data.unlabeled and m.num_views < 2:
        raise ConfigError("--unlabeled co-training needs two views")


def pick_manifest(root: Path, name: str) -> str:
    """`auto`: the demo manifest for a tree made by `abaw demo-data` (OUT/lsd beside OUT/demo_summary.json)."""
    if name != "auto":
        return name
    if (root.parent / "demo_summary.json").exists() and "demo-lsd" in available_manifests():
        return "demo-lsd"
    return "abaw4-lsd"


def load_lsd(root: Path, manifest: str) -> tuple[LSDSamples, LSDSamples]:
    """(train, val) samples, after checking the tree against its manifest."""
    name = pick_manifest(root, manifest)
    report = check_dataset(root, name, splits=["train", "val"])
    train, val = report.data["train"], report.data["val"]
    require_every_class(train.labels, str(root))
    if len(val) == 0:
        raise DatasetError(f"{root}: the validation folders hold no images")
    return train, val


def model_config_for(cfg: CotrainConfig) -> dict:
    """The registry model_config: architecture from the encoder file when one is given."""
    m = cfg.model
    size, patch, dim, depth, heads = m.size, m.patch_size, m.embed_dim, m.depth, m.num_heads
    if cfg.init != INIT_NONE:
        spec = encoder_spec(cfg.init)
        size, patch = spec.get("size") or size, int(spec["patch_size"])
        dim, depth, heads = int(spec["embed_dim"]), int(spec["depth"]), int(spec["num_heads"])
    return {
        "vit": vit_config(size, m.input_size, patch, m.drop_path, dim, depth, heads),
        "num_views": m.num_views,
        "classes": list(LSD_CLASSES),
        "mask_rate": m.mask_rate,
    }


def pseudo_label_loss(
    student: torch.Tensor, teacher: torch.Tensor, threshold: float, per_class_cap: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Co-training term (see the module docstring) -> (loss, selected (B,) bool).

    student: (V, B, C) logits of the token-dropped views on the unlabelled faces (with gradient);
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

    def __init__(self, cfg: CotrainConfig, train: LSDSamples, val: LSDSamples, unlabeled: list[Path] | None = None):
        self.cfg = cfg
        self.train = train
        self.val = val
        self.unlabeled = unlabeled
        self._model_config = model_config_for(cfg)
        counts = class_counts(train.labels)
        log.info("training classes: %s", ", ".join(f"{c} {n}" for c, n in zip(LSD_CLASSES, counts)))
        self.class_weights = balanced_class_weights(train.labels) if cfg.loss.balance == "weights" else None
        self._last_confusion: np.ndarray | None = None
        self._best_f1: float | None = None

    # ---- model
    def build_model(self) -> MaskedCoTEX:
        model = build_masked_cotex(self._model_config)
        if self.cfg.init != INIT_NONE:
            for view in model.views:
                load_encoder_weights(view, self.cfg.init)
                # MAE fine-tuning: a near-zero head, so both views start from the same encoder answer.
                trunc_normal_(view.head.weight, std=2e-5)
        else:
            # Views start from the SAME weights, as they do from one encoder: only their token drops
            # tell them apart, and the JS term (x100) does not have to fight two unrelated inits.
            for view in model.views[1:]:
                view.load_state_dict(model.views[0].state_dict())
        return model

    def model_config(self) -> dict:
        return self._model_config

    # ---- data
    def train_dataset(self) -> Dataset:
        size = self.cfg.model.input_size
        labelled = LabelledFaces(self.train.paths, self.train.labels, train_transform(size))
        if self.unlabeled:
            return LabelledWithUnlabelled(labelled, UnlabelledFaces(self.unlabeled, train_transform(size)))
        return labelled

    def train_sampler_weights(self):
        return balanced_sample_weights(self.train.labels) if self.cfg.loss.balance == "sampler" else None

    # ---- loss
    def training_step(self, model, batch, device):
        cfg = self.cfg.loss
        images, labels = batch[0], batch[1]
        unlabelled = batch[2] if len(batch) > 2 else None
        n = images.shape[0]
        teacher = None
        if unlabelled is not None and self.epoch < cfg.pseudo_start_epoch:
            unlabelled = None  # too early: the views' agreement means nothing yet (see module docstring)
        if unlabelled is not None:
            teacher = self._teacher_logits(unwrap(model), unlabelled)
            logits_all = model(torch.cat([images, unlabelled]), return_views=True)
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
    def _teacher_logits(self, model: MaskedCoTEX, unlabelled: torch.Tensor) -> torch.Tensor:
        """(V, B, C) logits of every view with all tokens and no drop-path: the pseudo-labellers."""
        was_training = model.training
        model.eval()
        try:
            return model(unlabelled, return_views=True, mask_rate=0.0).float()
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
            view_logits.append(model(images.to(device), return_views=True, mask_rate=0.0).float().cpu())
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
            "mask_rate": self.cfg.model.mask_rate,
            "init": self.cfg.init,
            "normalization": "ImageNet mean/std inside the model; input float RGB in [0, 1]",
            "metrics": dict(val_metrics or {}),
        }

    def on_epoch_end(self, model, run_dir: Path, epoch: int, history: list[dict]) -> None:
        row = history[-1]
        if "val_f1" not in row:
            return
        keys = [k for k in ("val_f1_view1", "val_f1_view2", "val_f1") if k in row]
        save_curves([h for h in history if "val_f1" in h], keys, run_dir / "val_curves.png", title="validation macro-F1")
        earlier = [h["val_f1"] for h in history[:-1] if "val_f1" in h]
        # Same rule as the engine's best.pt: a strictly higher pair F1 than every earlier epoch.
        if (not earlier or row["val_f1"] > max(earlier)) and self._last_confusion is not None:
            save_confusion_matrix(
                self._last_confusion, list(LSD_CLASSES), run_dir / "confusion_matrix.png",
                title=f"validation (views summed), epoch {epoch + 1}, macro-F1 {row['val_f1']:.3f}",
            )


def best_epoch(history: list[dict]) -> dict | None:
    """The history row with the highest validation pair macro-F1 (the one best.pt holds)."""
    rows = [h for h in history if "val_f1" in h]
    return max(rows, key=lambda h: h["val_f1"]) if rows else None


def write_metrics(run_dir: Path, history: list[dict]) -> Path:
    """metrics.json: the engine's summary plus the best epoch's validation numbers."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    best = best_epoch(history)
    if best is not None:
        metrics["best_epoch"] = {k[4:] if k.startswith("val_") else k: v for k, v in best.items()
                                 if k.startswith("val_") or k in ("epoch", "step")}
    tmp = path.with_name(".metrics.json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(path)
    return path


def resolve_config(preset: str, out: Path, resume: bool, overrides: dict[str, Any]) -> CotrainConfig:
    """Preset + overrides for a new run; for --resume the run's own config.yaml + overrides."""
    if overrides.get("optim.batch_size") is not None:
        # An explicit --batch is exact (a resumed run's config has the scaling applied already).
        overrides = {**overrides, "data.scale_batch_by_mask": False}
    cfg = load_run_config(CotrainConfig, STAGE, preset, out, resume, overrides)
    check_config(cfg)
    scale_batch_for_mask(cfg)
    if cfg.init == INIT_NONE and cfg.model.num_views > 1 and cfg.model.mask_rate > 0 and cfg.loss.lambda_js > 10:
        log.warning(
            "--init none with lambda_js %g: Masked CoTEX is meant to start from an MAE encoder (--init); from random "
            "weights the JS term can hold both views at the uniform answer (seen on the demo set at 100; 10 learned)",
            cfg.loss.lambda_js,
        )
    full_lr_from_scratch(cfg)
    return cfg


def cotrain(out: Path, preset: str = "cpu-small", resume: bool = False, overrides: dict[str, Any] | None = None) -> tuple[Path, list[dict]]:
    """Python entry of the stage: returns (best.pt path, per-epoch history)."""
    cfg = resolve_config(preset, out, resume, overrides or {})
    if not cfg.data.root:
        raise DatasetError("no --data given (and no earlier run config to take it from)")
    root = Path(cfg.data.root)
    train, val = load_lsd(root, cfg.data.manifest)
    unlabeled = None
    if cfg.data.unlabeled:
        unlabeled = list_face_images(cfg.data.unlabeled)
        overlap = {p.resolve() for p in unlabeled} & {Path(p).resolve() for p in val.paths}
        if overlap:
            raise DatasetError(f"--unlabeled {cfg.data.unlabeled} holds {len(overlap)} validation image(s) (e.g. {sorted(overlap)[0]}): pseudo-labelling them would leak the validation set")
        log.info("co-training with %d unlabelled faces from %s (threshold %.2f, weight %g, from epoch %d)",
                 len(unlabeled), cfg.data.unlabeled, cfg.loss.pseudo_threshold, cfg.loss.pseudo_weight, cfg.loss.pseudo_start_epoch)
    log.info("LSD %s: %d synthetic training, %d real validation images; balance=%s; mask rate %.2f; lambda_js %g",
             root, len(train), len(val), cfg.loss.balance, cfg.model.mask_rate, cfg.loss.lambda_js)
    task = CotrainTask(cfg, train, val, unlabeled)
    history = Engine(cfg.optim, task, out, resume=resume, run_config=cfg).fit()
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 writes (the group is gone by now)
        write_metrics(out, history)
    return out / "best.pt", history


EXAMPLES = """

[bold]Examples[/bold]

  abaw cotrain --data demo/lsd --out runs/cotex --init runs/mae/encoder.pt --preset cpu-small

  abaw cotrain --data demo/lsd --out runs/cotex-u --init runs/mae/encoder.pt --unlabeled crops/ --pseudo-threshold 0.9

  abaw cotrain --data ABAW4/LSD --out runs/cotex-b16 --init mae_pretrain_vit_base.pth --preset paper --mask-rate 0.5 --device cuda

  torchrun --nproc_per_node=4 -m abaw_cli cotrain --data ABAW4/LSD --out runs/cotex-b16 --init encoder.pt --preset paper --accum 1

  abaw cotrain --out runs/cotex --resume            (continue exactly where it stopped)

  abaw predict ABAW4/LSD/validation_set_real_images --model runs/cotex/best.pt --out lsd_submission.txt   (6 classes)

The preset batch is scaled by 1/(1 - mask rate) as in the paper; an explicit --batch is used as given.
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
    def cotrain_command(
        data: Annotated[Path | None, typer.Option("--data", help="LSD root: training_set_synthetic_images/ and validation_set_real_images/ (class folders).")] = None,
        out: OutDirOption = Path("runs/cotrain"),
        init: Annotated[str | None, typer.Option("--init", help="encoder.pt (pretrain-mae) or a public MAE file for both views, or `none` (random).")] = None,
        mask_rate: Annotated[float | None, typer.Option("--mask-rate", help="Share of patch tokens each view drops in training (0 = none).")] = None,
        lambda_js: Annotated[float | None, typer.Option("--lambda-js", help="Weight of the Jensen-Shannon consistency term (paper: 100).")] = None,
        unlabeled: Annotated[Path | None, typer.Option("--unlabeled", help="Folder of real face crops (e.g. crop-faces output) for co-training.")] = None,
        pseudo_threshold: Annotated[float | None, typer.Option("--pseudo-threshold", help="Confidence both views need to pseudo-label an unlabelled face.")] = None,
        pseudo_weight: Annotated[float | None, typer.Option("--pseudo-weight", help="Weight of the pseudo-label cross-entropy.")] = None,
        pseudo_start_epoch: Annotated[int | None, typer.Option("--pseudo-start-epoch", help="First epoch (0-based) that uses pseudo-labels.")] = None,
        pseudo_class_share: Annotated[float | None, typer.Option("--pseudo-class-share", help="At most share x batch / 6 pseudo-labels per class in a batch (0 = no cap).")] = None,
        balance: Annotated[str | None, typer.Option("--balance", help=f"Class imbalance: {' | '.join(BALANCE_CHOICES)} (sampler: classes drawn equally often; weights: weighted CE).")] = None,
        manifest: Annotated[str | None, typer.Option("--manifest", help="Dataset manifest to check --data against (auto: demo-lsd for demo data, else abaw4-lsd).")] = None,
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
        if balance is not None and balance not in BALANCE_CHOICES:
            raise typer.BadParameter(f"must be one of {', '.join(BALANCE_CHOICES)}", param_hint="--balance")
        overrides = {
            "data.root": str(data) if data else None, "init": init, "model.mask_rate": mask_rate,
            "loss.lambda_js": lambda_js, "data.unlabeled": str(unlabeled) if unlabeled else None,
            "loss.pseudo_threshold": pseudo_threshold, "loss.pseudo_weight": pseudo_weight, "loss.balance": balance,
            "loss.pseudo_start_epoch": pseudo_start_epoch, "loss.pseudo_class_share": pseudo_class_share,
            "data.manifest": manifest,
        } | optim_overrides(epochs=epochs, max_steps=max_steps, batch=batch, accum=accum, lr=lr,
                            workers=workers, seed=seed, device=device, resume=resume)
        with stage_errors(DatasetError, FormatError, ConfigError, EngineError, EncoderLoadError, ValueError):
            best, history = cotrain(out, preset, resume, overrides)
        if int(os.environ.get("RANK", "0")) != 0:
            return
        row = best_epoch(history)
        if row:
            views = "  ".join(f"view {v}: {row[f'val_f1_view{v}']:.3f}" for v in (1, 2) if f"val_f1_view{v}" in row)
            console.print(f"best: {best}  (epoch {row['epoch'] + 1}: macro-F1 pair {row['val_f1']:.3f}  {views})")
        else:
            console.print(f"run folder: {out}")
