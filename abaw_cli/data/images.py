"""Unlabeled face images for MAE pretraining: from folders or manifests, with MAE's augmentation.

Sources (any mix, in the order given; duplicates are kept once):
- a folder: every image below it, recursively (crop-faces output, the demo pool, CelebA-like
  folders such as img_align_celeba/);
- a crop-faces `faces.csv`: the `crop` column of the rows with face=1, relative to the CSV's folder;
- another CSV with an `image`, `path` or `crop` column (relative paths: to the CSV's folder);
- a .txt list: one image path per line (relative to the list's folder; blank lines and # comments skipped);
- a single image file.

Items are float32 RGB tensors in [0, 1], (3, S, S): RandomResizedCrop(S, scale 0.2-1.0, bicubic)
+ horizontal flip for training (MAE's pretraining augmentation); a plain resize for display.
Image decoding and folder listing are the project's one pair (`abaw_cli.image_files`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from abaw_cli.image_files import IMAGE_EXTENSIONS, is_image_file, list_images, read_rgb
from abaw_cli.faces.manifest import FACES_COLUMNS

_PATH_COLUMNS = ("crop", "image", "path")


class ImageSourceError(ValueError):
    """A DATA argument that is not a usable folder, manifest or image."""


def _from_csv(path: Path) -> list[Path]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = tuple(reader.fieldnames or ())
        is_faces = header == FACES_COLUMNS
        column = next((c for c in _PATH_COLUMNS if c in header), None)
        if column is None:
            raise ImageSourceError(f"{path}: line 1: no image column (expected one of {', '.join(_PATH_COLUMNS)}; got {', '.join(header) or 'nothing'})")
        out = []
        for line, row in enumerate(reader, start=2):
            if is_faces and row.get("face") != "1":
                continue  # frames without a face have no crop
            value = (row.get(column) or "").strip()
            if not value:
                raise ImageSourceError(f"{path}: line {line}: empty {column!r}")
            out.append((line, path.parent / value))
    return _existing(path, out)


def _from_list(path: Path) -> list[Path]:
    out = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = text.strip()
        if text and not text.startswith("#"):
            out.append((line, path.parent / text))
    return _existing(path, out)


def _existing(manifest: Path, items: list[tuple[int, Path]]) -> list[Path]:
    for line, p in items:
        if not p.is_file():
            raise ImageSourceError(f"{manifest}: line {line}: image {p} does not exist")
    if not items:
        raise ImageSourceError(f"{manifest}: lists no images")
    return [p for _, p in items]


def find_images(sources: Sequence[str | Path]) -> list[Path]:
    """Every image named by `sources` (see module doc); refuses a bad source naming it and why."""
    if not sources:
        raise ImageSourceError("no DATA given: pass folders of face images or manifests")
    seen: dict[Path, None] = {}
    for src in map(Path, sources):
        if src.is_dir():
            found = list_images(src)
            if not found:
                raise ImageSourceError(f"{src}: no images in it or below it (hidden folders are skipped)")
        elif src.is_file() and src.suffix.lower() == ".csv":
            found = _from_csv(src)
        elif src.is_file() and src.suffix.lower() == ".txt":
            found = _from_list(src)
        elif src.is_file() and is_image_file(src):
            found = [src]
        elif not src.exists():
            raise ImageSourceError(f"{src}: no such folder or file")
        else:
            raise ImageSourceError(f"{src}: not a folder, a .csv/.txt manifest or an image ({' '.join(sorted(IMAGE_EXTENSIONS))})")
        seen.update(dict.fromkeys(found))
    return list(seen)


def pretrain_transform(size: int) -> v2.Transform:
    """MAE pretraining augmentation: random resized crop (scale 0.2-1.0, bicubic) + horizontal flip."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.ToDtype(torch.float32, scale=True),
    ])


def display_transform(size: int) -> v2.Transform:
    return v2.Compose([v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)])


class FaceImages(Dataset):
    """Unlabeled face images -> float [0, 1] tensors (3, size, size)."""

    def __init__(self, paths: Sequence[str | Path], size: int, train: bool = True):
        self.paths = [str(p) for p in paths]
        self.size = size
        self.transform = pretrain_transform(size) if train else display_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(read_rgb(self.paths[index]))
