"""Image files: the one list of image extensions, the one recursive lister, decoding, and the
pre-flight check that decodes a whole training set.

A file that cannot be decoded raises `UnreadableImageError` (a ValueError naming the file); the
training engine skips such items and counts them (train/engine.py), so one corrupt JPEG among
142,000 does not end a run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import torch
from PIL import Image

# What OpenCV (and mostly PIL) decodes; compared against the lower-cased suffix.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .png .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .pxm .jp2 .sr .ras .exr .hdr .pic".split()
)


class UnreadableImageError(ValueError):
    """An image file that does not exist or cannot be decoded."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: cannot read image ({reason})")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every image file below `root`, recursively, sorted by path. Hidden files and folders
    (a leading dot: work in progress such as crop-faces' `.crop-faces/partial/`) are skipped."""
    found: list[Path] = []
    stack = [Path(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif is_image_file(entry.name) and entry.is_file():
                    found.append(Path(entry.path))
    return sorted(found)


def read_rgb(path: str | os.PathLike) -> torch.Tensor:
    """uint8 RGB tensor (3, H, W); OpenCV decodes (torchvision's decoders are deprecated since
    0.29), grey and BGRA files come out RGB."""
    if not Path(path).is_file():
        raise UnreadableImageError(path, "no such file")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UnreadableImageError(path, "not a decodable image")
    return torch.from_numpy(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).contiguous()


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """A fully decoded PIL RGB image (for torchvision's PIL transforms)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UnreadableImageError(path, "no such file") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unknown, truncated or broken files
        raise UnreadableImageError(path, f"{type(exc).__name__}: {exc}") from None


def _decode_problem(path: str) -> str | None:
    try:
        open_rgb(path)
    except UnreadableImageError as exc:
        return exc.reason
    return None


def check_images(
    paths: Sequence[str | os.PathLike], on_done: Callable[[int], None] | None = None, threads: int | None = None
) -> list[tuple[str, str]]:
    """Decode every image (PIL: also catches truncated JPEGs that OpenCV fills with grey) and
    return `(path, reason)` for each one that fails, in input order. `on_done(n)` reports progress.
    Decoding releases the GIL, so a thread per core keeps them all busy."""
    problems: list[tuple[str, str]] = []
    names = [str(p) for p in paths]
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        for path, reason in zip(names, pool.map(_decode_problem, names, chunksize=64)):
            if reason is not None:
                problems.append((path, reason))
            if on_done is not None:
                on_done(1)
    return problems


def show_paths(paths: Iterable[str], first: int = 5) -> str:
    """`a, b, c, ...`: the first few of a list of paths for an error message."""
    items = list(paths)
    return ", ".join(items[:first]) + (", ..." if len(items) > first else "")
