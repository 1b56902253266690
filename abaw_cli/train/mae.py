"""MAE pretraining of the ViT on unlabeled faces: the engine task behind `abaw pretrain-mae`.

Run folder (besides the engine's config.yaml, log.jsonl, checkpoint-last.pt, metrics.json and
loss_curve.png):
    encoder.pt                 {"model": encoder state dict with the official MAE key names, "meta": {...}}
                               -> `--init` of train-mtl / cotrain, or timm's VisionTransformer
    reconstructions/epoch_NNNN.png   original / masked / reconstructed rows, same faces and masks each epoch
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.utils import make_grid

from abaw_cli.atomic import atomic_open
from abaw_cli.config import load_run_config, to_dict
from abaw_cli.data.images import FaceImages, ImageSourceError, find_images
from abaw_cli.models.mae import MaskedAutoencoder
from abaw_cli.models.vit import ViTConfig
from abaw_cli.train.checkpoint import save_atomic
from abaw_cli.train.engine import Engine, FitResult, Task, TrainConfig

log = logging.getLogger(__name__)
STAGE = "pretrain_mae"
ENCODER_FILE = "encoder.pt"


@dataclass
class MAEModelConfig(ViTConfig):
    """Defaults = the paper's ViT-B/16 MAE (model_config of the "mae" registry builder)."""

    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True


def _mae_optim() -> TrainConfig:
    return TrainConfig(
        epochs=800, batch_size=256, accum_steps=16, base_lr=1.5e-4, min_lr=0.0, warmup_epochs=40,
        weight_decay=0.05, betas=(0.9, 0.95), layer_decay=1.0, clip_grad=None,
    )


@dataclass
class PretrainMAEConfig:
    model: MAEModelConfig = field(default_factory=MAEModelConfig)
    optim: TrainConfig = field(default_factory=_mae_optim)
    data: list[str] = field(default_factory=list)  # the DATA sources, recorded for the run
    recon_images: int = 8  # faces in the per-epoch reconstruction grid


class MAEPretrainData(Dataset):
    """(image, masking noise): the noise is drawn with the item (under its own seed, see
    engine.SeededDataset), so a face's mask does not depend on batch size, rank or a resume."""

    def __init__(self, images: FaceImages, num_patches: int):
        self.images = images
        self.num_patches = num_patches

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], torch.rand(self.num_patches)


def write_encoder(model: MaskedAutoencoder, path: Path) -> Path:
    return save_atomic({"model": model.encoder_state_dict(), "meta": model.encoder_meta()}, path)


def save_reconstruction_grid(model: MaskedAutoencoder, images: torch.Tensor, noise: torch.Tensor, path: Path) -> Path:
    """Rows: original / masked input / reconstruction (visible patches pasted back)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    masked, recon = model.reconstruct(images.to(device), noise=noise.to(device))
    model.train(was_training)
    grid = make_grid(torch.cat([images, masked.cpu(), recon.cpu()]), nrow=len(images), padding=2, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    with atomic_open(path, "wb") as fh:
        Image.fromarray(array).save(fh, format="PNG")
    return path


class MAETask(Task):
    kind = "mae"

    def __init__(self, cfg: PretrainMAEConfig, paths: list[Path]):
        self.cfg = cfg
        self.paths = paths
        m = cfg.model
        self.num_patches = (m.input_size // m.patch_size) ** 2
        # Fixed faces and masks for the reconstruction grid, so epochs can be compared.
        k = min(cfg.recon_images, len(paths))
        picks = np.linspace(0, len(paths) - 1, k).round().astype(int) if k else []
        shown = FaceImages([paths[i] for i in picks], m.input_size, train=False)
        self.recon_images = torch.stack([shown[i] for i in range(len(shown))]) if k else None
        self.recon_noise = torch.rand(k, self.num_patches, generator=torch.Generator().manual_seed(0))

    def build_model(self) -> MaskedAutoencoder:
        return MaskedAutoencoder(**to_dict(self.cfg.model))

    def model_config(self) -> dict:
        return to_dict(self.cfg.model)

    def train_dataset(self) -> Dataset:
        return MAEPretrainData(FaceImages(self.paths, self.cfg.model.input_size, train=True), self.num_patches)

    def image_paths(self) -> list[Path]:
        return self.paths

    def training_step(self, model, batch, device):
        imgs, noise = batch
        loss, _, _ = model(imgs, noise=noise)
        return loss, {}

    def checkpoint_meta(self, model, val_metrics) -> dict:
        return model.encoder_meta()

    def on_epoch_end(self, model, run_dir: Path, epoch: int, history: list[dict]) -> None:
        write_encoder(model, run_dir / ENCODER_FILE)
        if self.recon_images is not None:
            save_reconstruction_grid(model, self.recon_images, self.recon_noise, run_dir / "reconstructions" / f"epoch_{epoch + 1:04d}.png")


def resolve_config(
    preset: str, out: Path, resume: bool, data: list[Path] | None, overrides: dict[str, Any]
) -> PretrainMAEConfig:
    """Preset + overrides for a new run; for --resume the run's own config.yaml + overrides."""
    cfg = load_run_config(PretrainMAEConfig, STAGE, preset, out, resume, overrides)
    if data:
        cfg.data = [str(p) for p in data]
    return cfg


def pretrain_mae(
    data: list[Path] | None,
    out: Path,
    preset: str = "cpu-small",
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    check_images: bool = False,
) -> FitResult:
    """The whole stage as a function; `out / ENCODER_FILE` is the encoder it leaves."""
    cfg = resolve_config(preset, out, resume, data, overrides or {})
    if not cfg.data:
        raise ImageSourceError("no DATA given (and no earlier run config to take it from)")
    paths = find_images(cfg.data)
    log.info("%d face images from %s", len(paths), ", ".join(cfg.data))
    task = MAETask(cfg, paths)
    return Engine(cfg.optim, task, out, resume=resume, run_config=cfg, check_images=check_images).fit()
