"""Which predict inputs are ABAW image sets (-> a submission file) rather than media to analyse.

An input is an ABAW image set when it is
  - an MTL annotation file (header `image,valence,arousal,expression,AU1,...`): its images, in
    file order (predicting the validation set as a submission, then `abaw score` against it);
  - an LSD list (header `image,expression`: the LSD test release or a labelled list);
  - another ABAW test list (a text file whose first header field is `image`, as the MTL release);
  - an LSD class-folder tree (`<root>/<CLASS>/*.jpg`, e.g. validation_set_real_images): its images
    in scan_lsd_folders order, named by their path relative to the root (`ANGER/0001.jpg`), the
    keys `abaw score --truth <root>` matches.
The images of a set are already aligned face crops: they are only resized to the model's input.
Everything else (videos, photos, folders of frames, plain path lists) goes to the faces library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from abaw_cli import labels
from abaw_cli.data.formats import (
    FormatError,
    check_listed_images,
    list_image_root,
    read_mtl_annotations,
    read_test_list,
    scan_lsd_folders,
)

SetTask = Literal["mtl", "lsd"]
LIST_SUFFIXES = (".txt", ".csv")


@dataclass(frozen=True)
class ImageSet:
    """Aligned face images to predict, keyed as the submission must name them."""

    name: str  # output stem (list file stem or tree folder name)
    task: SetTask  # which submission: MTL (VA, expression, AUs) or LSD (6 classes)
    origin: Path  # the list file or the class-folder tree
    keys: tuple[str, ...]  # image names as written in the submission, in list order
    root: Path  # images are root / key

    def paths(self) -> list[Path]:
        return [self.root / k for k in self.keys]


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.readline().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def list_task(path: Path) -> SetTask | None:
    """The submission task an ABAW list asks for, or None when `path` is no ABAW list."""
    if not path.is_file() or path.suffix.lower() not in LIST_SUFFIXES:
        return None
    header = tuple(f.strip() for f in _first_line(path).split(","))
    if header == labels.LSD_SUBMISSION_HEADER:
        return "lsd"
    if header == labels.MTL_ANNOTATION_HEADER or (header and header[0].lower() == "image"):
        return "mtl"
    return None


def is_lsd_tree(path: Path) -> bool:
    """A folder whose sub-folders are all LSD class names (aliases accepted), at least two of them."""
    if not path.is_dir():
        return False
    subs = [p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return len(subs) >= 2 and all(s.strip().upper() in labels.LSD_FOLDER_ALIASES for s in subs)


def is_image_set(path: str | os.PathLike) -> bool:
    path = Path(path)
    return list_task(path) is not None or is_lsd_tree(path)


def load_image_set(path: str | os.PathLike, images_root: str | os.PathLike | None = None) -> ImageSet:
    """Read an ABAW list or LSD tree into an ImageSet, checking that every image is on disk."""
    path = Path(path)
    if is_lsd_tree(path):
        # Absolute, so that relative_keys() gives `CLASS/file.jpg` whatever the working folder.
        samples = scan_lsd_folders(path.absolute())
        keys = samples.relative_keys()
        if not keys:
            raise FormatError(path, None, "the LSD class folders hold no images")
        return ImageSet(path.name, "lsd", path, tuple(keys), path)
    task = list_task(path)
    if task is None:
        raise FormatError(path, 1, "not an ABAW list (header must start with 'image')")
    header = tuple(f.strip() for f in _first_line(path).split(","))
    if header == labels.MTL_ANNOTATION_HEADER:
        keys = read_mtl_annotations(path).images
    else:
        keys = read_test_list(path)
    # Without --images: `cropped_aligned` (s-Aff-Wild2) or `test_set_images` (LSD) beside the list.
    root = list_image_root(path, images_root)
    if not root.is_dir():
        raise FormatError(path, None, f"image folder {root} does not exist (give it with --images)")
    check_listed_images(path, list(keys), root)  # one listing per folder, not a stat per image
    return ImageSet(path.stem, task, path, tuple(keys), root)
