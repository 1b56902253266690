"""Unlabeled face images for MAE pretraining: from folders or manifests, with MAE's augmentation.

Sources (any mix, in the order given; duplicates are kept once):
- a folder: every image below it, recursively (crop-faces output, the demo pool, CelebA-like
  folders such as img_align_celeba/);
- a crop-faces `faces.csv`: the `crop` column of the rows with face=1, relative to the CSV's folder;
- another CSV with an `image`, `path` or `crop` column (relative paths: to the CSV's folder);
- a .txt list: one image path per line (relative to the list's folder; blank lines and # comments skipped);
- an ABAW list (a .txt whose header starts with `image`: a test release such as
  LSD_Challenge_test_set_release.txt, an annotation file): its images, found where predict finds
  them without --images (`cropped_aligned/` or `test_set_images/` beside the list, else beside it);
- a single image file.

Items are float32 RGB tensors in [0, 1], (3, S, S): RandomResizedCrop(S, scale 0.2-1.0, bicubic)
+ horizontal flip for training (MAE's pretraining augmentation); a plain resize for display.
Image decoding and folder listing are the project's one pair (`abaw_cli.image_files`).

Decoding, not the model, bounded MAE on a small CPU (the cpu-small step alone ran at 384 img/s,
the whole loop at 230 with two loader workers decoding JPEGs), so `DecodedFaces` decodes each face
once and holds it in memory as uint8 while the set fits in `cache_bytes` (2 GiB by default: 7,000
112 px faces are 260 MB; a set past the budget keeps its first faces in memory and decodes the rest
per item). `FaceImages` (MAE) and data.mtl.MTLDataset (EMMA) read their faces through it. A decoded
face is stored as the uncached path would read it (for MAE shrunk first when its shorter side
exceeds 5/4 of the model's input size, `decode_face`), so cached and uncached items
are identical and only the speed differs; augmentation still runs per item, under the item's own
seed (engine.SeededDataset), so a resumed run repeats its crops exactly. A face that does not
decode is left out of the cache and raises when drawn, so the engine skips it as it skips any
unreadable image.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from abaw_cli.data.formats import LIST_IMAGE_FOLDERS, FormatError, check_listed_images, list_image_root, read_test_list
from abaw_cli.image_files import IMAGE_EXTENSIONS, UnreadableImageError, is_image_file, list_images, read_rgb
from abaw_cli.faces.manifest import FACES_COLUMNS

_PATH_COLUMNS = ("crop", "image", "path")
# Decoded faces are kept at most this much above the model's input size (shorter side).
CACHE_MAX_SCALE = 1.25
DEFAULT_CACHE_BYTES = 2 * 2**30


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


def _from_abaw_list(path: Path) -> list[Path]:
    try:
        images = read_test_list(path)
        root = list_image_root(path)
        check_listed_images(path, images, root)
    except FormatError as err:
        raise ImageSourceError(
            f"{err} (an ABAW list's images are looked for in {' or '.join(f'{f}/' for f in LIST_IMAGE_FOLDERS)} "
            "beside the list, else in the list's folder: pass the folder that holds them instead)"
        ) from None
    return [root / image for image in images]


def _from_list(path: Path) -> list[Path]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if lines and lines[0].split(",", 1)[0].strip().lower() == "image":
        return _from_abaw_list(path)
    out = []
    for line, text in enumerate(lines, start=1):
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


def decode_face(path: str | Path, size: int) -> torch.Tensor:
    """uint8 (3, H, W) of an image file, shrunk (area interpolation) so that its shorter side is at
    most CACHE_MAX_SCALE x `size`; smaller images come back exactly as read_rgb reads them."""
    image = read_rgb(path)
    limit = math.ceil(size * CACHE_MAX_SCALE)
    h, w = image.shape[1:]
    if min(h, w) <= limit:
        return image
    scale = limit / min(h, w)
    out = cv2.resize(image.permute(1, 2, 0).numpy(), (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()


def _decode_or_none(decode: Callable[[str], torch.Tensor], path: str) -> torch.Tensor | None:
    try:
        return decode(path)
    except UnreadableImageError:
        return None


class DecodedFaces:
    """Image files decoded once by `decode` (uint8 (3, H, W); read_rgb: as read, decode_face:
    shrunk for a model size) and held in memory up to `cache_bytes` (None: DEFAULT_CACHE_BYTES; 0:
    no cache), in path order, with a few threads at construction; a face past the budget is decoded
    when asked for. `faces[i]` raises UnreadableImageError for a face that does not decode (the
    engine skips it)."""

    def __init__(self, paths: Sequence[str | Path], decode: Callable[[str], torch.Tensor] = read_rgb,
                 cache_bytes: int | None = None):
        self.paths = [str(p) for p in paths]
        self.decode = decode
        budget = DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes
        self.cache: list[torch.Tensor | None] = self._decode_all(budget) if budget > 0 else []

    def _decode_all(self, budget: int) -> list[torch.Tensor | None]:
        """The first faces in path order whose decoded bytes fit in `budget` (all of a small set);
        None for a face that does not decode (asking for it raises)."""
        cache: list[torch.Tensor | None] = []
        used, chunk = 0, 256
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:  # cv2 decodes outside the GIL
            for start in range(0, len(self.paths), chunk):
                for face in pool.map(partial(_decode_or_none, self.decode), self.paths[start:start + chunk]):
                    used += 0 if face is None else face.numel()
                    if used > budget:
                        return cache
                    cache.append(face)
        return cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        face = self.cache[index] if index < len(self.cache) else None
        return face if face is not None else self.decode(self.paths[index])


class FaceImages(Dataset):
    """Unlabeled face images -> float [0, 1] tensors (3, size, size), decoded once (DecodedFaces)."""

    def __init__(self, paths: Sequence[str | Path], size: int, train: bool = True, cache_bytes: int | None = None):
        self.faces = DecodedFaces(paths, partial(decode_face, size=size), cache_bytes)
        self.paths = self.faces.paths
        self.size = size
        self.transform = pretrain_transform(size) if train else display_transform(size)

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.faces[index])
