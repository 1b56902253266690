"""ABAW file formats: read (with validation) and write (atomically).

Formats handled here, and nowhere else:
- MTL annotation files (`training_set_annotations.txt`, `validation_set_annotations.txt`):
  header `image,valence,arousal,expression,AU1,...,AU26`, missing codes -5 / -1 / -1.
- ABAW test lists (`MTL_Challenge_test_set_release.txt`, `LSD_Challenge_test_set_release.txt`)
  and where their images are (`list_image_root`).
- MTL submissions (header `image,valence,arousal,expression,aus`; rows carry 16 fields:
  image, v, a, expression, then the 12 AUs as 0/1) and LSD submissions (`image,expression`).
- LSD class-folder trees (`<root>/<CLASS>/*.jpg`, folder spelling aliases accepted) and labelled
  lists (`image,expression` with a class index 0..5 or a class name).
- The project's own per-frame prediction table (one row per face per frame, see
  `prediction_columns`).

Every reader refuses a bad file with a `FormatError` that names the file, the line and the reason.
Every writer goes through `abaw_cli.atomic`, so no half-written file is ever left under the final name.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from abaw_cli import labels
from abaw_cli.atomic import AtomicWriter, PendingFile, atomic_open
from abaw_cli.image_files import is_image_file, list_images

log = logging.getLogger(__name__)

# How many offending items an error message lists before it says "...".
_SHOW_FIRST = 5
# Folders beside an ABAW list that hold its images (list_image_root).
LIST_IMAGE_FOLDERS: tuple[str, ...] = ("cropped_aligned", "test_set_images")


class FormatError(ValueError):
    """A file that does not follow its format. `str()` reads `<path>:<line>: <reason>`."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str):
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        super().__init__(f"{where}: {reason}")


# ---------------------------------------------------------------------------------------------
# Shared CSV machinery
# ---------------------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    """The file's lines, without trailing blank lines; refuses missing and non-text files."""
    return _read_text_and_lines(path)[1]


def _read_text_and_lines(path: Path) -> tuple[str, list[str]]:
    if not path.exists():
        raise FormatError(path, None, "file not found")
    if path.is_dir():
        raise FormatError(path, None, "is a directory, expected a text file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise FormatError(path, None, f"not UTF-8 text (byte {err.start}: {err.reason})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise FormatError(path, 1, "file is empty (no header line)")
    return text, lines


def _check_header(path: Path, first_line: str, expected: Sequence[str]) -> None:
    found = [f.strip() for f in first_line.split(",")]
    if tuple(found) != tuple(expected):
        raise FormatError(
            path, 1, f"wrong header: expected '{','.join(expected)}', found '{first_line.strip()}'"
        )


def _show(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOW_FIRST])
    return shown + (", ..." if len(items) > _SHOW_FIRST else "")


def _parse_numeric_rows(
    path: Path, body: list[str], n_fields: int, field_names: Sequence[str], body_commas: int
) -> tuple[list[str], np.ndarray]:
    """Split `image,<numbers...>` rows into image names and a float64 (N, n_fields-1) array.

    Line i of `body` is line i+2 of the file (line 1 is the header). `body_commas` is the number
    of commas in `body` (counted on the whole text, in C). The common case costs one split per
    line plus numpy's C reader; only when something is off does a per-line pass find the first
    bad line and say what is wrong with it.
    """
    n = len(body)
    n_numeric = n_fields - 1
    if body_commas != n * (n_fields - 1):
        _raise_first_bad_row(path, body, n_fields, field_names)
    split = [ln.split(",", 1) for ln in body]
    if n == 0:
        return [], np.zeros((0, n_numeric), dtype=np.float64)
    try:
        images = [s[0].strip() for s in split]
        numeric_text = [s[1] for s in split]
        values = np.loadtxt(numeric_text, delimiter=",", dtype=np.float64, ndmin=2)
    except (ValueError, IndexError):
        values = None
    if values is None or values.shape != (n, n_numeric) or not np.isfinite(values).all():
        _raise_first_bad_row(path, body, n_fields, field_names)
    empty = [i for i, img in enumerate(images) if not img]
    if empty:
        raise FormatError(path, empty[0] + 2, "empty image path")
    return images, values


def _raise_first_bad_row(path: Path, body: list[str], n_fields: int, field_names: Sequence[str]) -> None:
    """The slow, exact pass: the first line with a wrong column count, else a non-numeric field."""
    for i, line in enumerate(body):
        found = line.count(",") + 1
        if found != n_fields:
            if not line.strip():
                raise FormatError(path, i + 2, "empty line")
            raise FormatError(path, i + 2, f"wrong column count: expected {n_fields}, found {found}")
    _raise_first_non_numeric(path, [ln.split(",", 1)[1] for ln in body], field_names[1:])


def _raise_first_non_numeric(path: Path, rows: list[str], names: Sequence[str]) -> None:
    for i, row in enumerate(rows):
        for name, raw in zip(names, row.split(",")):
            try:
                value = float(raw)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value):
                raise FormatError(path, i + 2, f"non-numeric {name} value {raw.strip()!r}")
    raise FormatError(path, None, "could not parse the numeric columns")  # pragma: no cover


def _first_row(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _check_range(
    path: Path, values: np.ndarray, bad: np.ndarray, names: Sequence[str], rule: str
) -> None:
    """Raise for the first row where `bad` (N, k) is true, naming the column and its value."""
    row = _first_row(bad.any(axis=1))
    if row is None:
        return
    col = int(np.flatnonzero(bad[row])[0])
    raw = values[row, col]
    shown = int(raw) if float(raw).is_integer() else float(raw)
    raise FormatError(path, row + 2, f"{names[col]} = {shown} is outside {rule}")


def _check_duplicates(path: Path, images: list[str]) -> None:
    if len(set(images)) == len(images):
        return
    first_line: dict[str, int] = {}
    for i, img in enumerate(images):
        if img in first_line:
            raise FormatError(
                path, i + 2, f"duplicate image {img!r} (first listed on line {first_line[img]})"
            )
        first_line[img] = i + 2


def check_listed_images(path: str | os.PathLike, images: list[str], image_root: str | os.PathLike) -> None:
    """Refuse (FormatError) when images listed in `path` are missing under `image_root`: how
    many, and the first few.

    Lists each folder once instead of stat-ing every file: fast on 100k+ images."""
    path, image_root = Path(path), Path(image_root)
    if not image_root.is_dir():
        raise FormatError(path, None, f"image folder {image_root} does not exist")
    listing: dict[str, set[str]] = {}
    missing: list[int] = []
    for i, img in enumerate(images):
        folder, _, name = img.replace("\\", "/").rpartition("/")
        names = listing.get(folder)
        if names is None:
            try:
                names = set(os.listdir(image_root / folder)) if folder else set(os.listdir(image_root))
            except (FileNotFoundError, NotADirectoryError):
                names = set()
            listing[folder] = names
        if name not in names:
            missing.append(i)
    if missing:
        raise FormatError(
            path,
            missing[0] + 2,
            f"{len(missing)} of {len(images)} listed images are missing under {image_root}: "
            f"{_show([images[i] for i in missing])}",
        )


def _as_int_column(values: np.ndarray) -> np.ndarray:
    return values.astype(np.int64)


def _is_integer(values: np.ndarray) -> np.ndarray:
    return values == np.round(values)


# ---------------------------------------------------------------------------------------------
# MTL annotations and submissions
# ---------------------------------------------------------------------------------------------


@dataclass
class MTLAnnotations:
    """Per-image MTL labels (or predictions) in file order.

    images: N relative paths like `12-24-1920x1080/00001.jpg`.
    valence_arousal: float32 (N, 2); -5 marks a missing value.
    expression: int64 (N,) in 0..7; -1 marks a missing label.
    aus: int64 (N, 12) of 0/1 in labels.AUS order; -1 marks a missing label.
    """

    images: list[str]
    valence_arousal: np.ndarray
    expression: np.ndarray
    aus: np.ndarray

    def __post_init__(self) -> None:
        self.valence_arousal = np.asarray(self.valence_arousal, dtype=np.float32).reshape(-1, 2)
        self.expression = np.asarray(self.expression, dtype=np.int64).reshape(-1)
        self.aus = np.asarray(self.aus, dtype=np.int64).reshape(-1, labels.NUM_AUS)
        n = len(self.images)
        if not (len(self.valence_arousal) == len(self.expression) == len(self.aus) == n):
            raise ValueError(
                f"MTLAnnotations: lengths differ (images {n}, valence_arousal "
                f"{len(self.valence_arousal)}, expression {len(self.expression)}, aus {len(self.aus)})"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_valence(self) -> np.ndarray:
        return self.valence_arousal[:, 0] != labels.MISSING_VA

    @property
    def has_arousal(self) -> np.ndarray:
        return self.valence_arousal[:, 1] != labels.MISSING_VA

    @property
    def has_va(self) -> np.ndarray:
        """Rows whose valence AND arousal are both labelled."""
        return self.has_valence & self.has_arousal

    @property
    def has_expression(self) -> np.ndarray:
        return self.expression >= 0

    @property
    def has_aus(self) -> np.ndarray:
        """Rows whose 12 AUs are all labelled (a row's AUs are missing when any is negative)."""
        return (self.aus >= 0).all(axis=1)

    def subset(self, index: np.ndarray | Sequence[int]) -> MTLAnnotations:
        """Rows `index` (integer indices or a boolean mask), in that order."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return MTLAnnotations(
            images=[self.images[i] for i in index],
            valence_arousal=self.valence_arousal[index],
            expression=self.expression[index],
            aus=self.aus[index],
        )

    def label_counts(self) -> dict[str, Any]:
        """Counts as method.md states them: labelled frames per task, class counts, AU positives."""
        has_aus = self.has_aus
        expr = self.expression[self.has_expression]
        return {
            "images": len(self),
            "va": int(self.has_va.sum()),
            "expression": int(self.has_expression.sum()),
            "au": int(has_aus.sum()),
            "expression_counts": {
                name: int((expr == i).sum()) for i, name in enumerate(labels.EXPRESSIONS)
            },
            "au_positives": {
                name: int((self.aus[has_aus, j] == 1).sum()) for j, name in enumerate(labels.AUS)
            },
        }


def read_mtl_annotations(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> MTLAnnotations:
    """Read and validate an s-Aff-Wild2 annotation file.

    Refuses (FormatError with file, line, reason): a header other than labels.MTL_ANNOTATION_HEADER,
    a wrong column count, non-numeric fields, VA outside [-1, 1] other than -5, expression outside
    -1..7, AU outside {-1, 0, 1}, duplicate images and, when `image_root` is given, listed images
    that are not on disk (how many, and the first few).
    """
    path = Path(path)
    text, lines = _read_text_and_lines(path)
    header = labels.MTL_ANNOTATION_HEADER
    _check_header(path, lines[0], header)
    body_commas = text.count(",") - lines[0].count(",")
    images, values = _parse_numeric_rows(path, lines[1:], len(header), header, body_commas)
    va = values[:, 0:2]
    bad_va = ((va < -1.0) | (va > 1.0)) & (va != labels.MISSING_VA)
    _check_range(path, va, bad_va, header[1:3], f"[-1, 1] (or {labels.MISSING_VA:g} for missing)")
    expr = values[:, 2:3]
    bad_expr = (expr < labels.MISSING_EXPRESSION) | (expr > labels.NUM_EXPRESSIONS - 1) | ~_is_integer(expr)
    _check_range(path, expr, bad_expr, header[3:4], f"the integers -1..{labels.NUM_EXPRESSIONS - 1}")
    aus = values[:, 3:]
    bad_aus = (aus != -1) & (aus != 0) & (aus != 1)
    _check_range(path, aus, bad_aus, header[4:], "{-1, 0, 1}")
    _check_duplicates(path, images)
    if image_root is not None:
        check_listed_images(path, images, Path(image_root))
    return MTLAnnotations(
        images=images,
        valence_arousal=va.astype(np.float32),
        expression=_as_int_column(expr[:, 0]),
        aus=_as_int_column(aus),
    )


def _format_floats(values: np.ndarray) -> list[str]:
    """Shortest text that reads back to the same float32 (so -5 stays `-5`, 0.25 stays `0.25`)."""
    return [
        np.format_float_positional(v, unique=True, trim="-")
        for v in np.asarray(values, dtype=np.float32).reshape(-1)
    ]


def _mtl_rows(images: Sequence[str], va: np.ndarray, expression: np.ndarray, aus: np.ndarray) -> Iterator[str]:
    va_text = _format_floats(va)
    expr_list = np.asarray(expression, dtype=np.int64).reshape(-1).tolist()
    au_list = np.asarray(aus, dtype=np.int64).reshape(-1, labels.NUM_AUS).tolist()
    for i, img in enumerate(images):
        au_text = ",".join(str(a) for a in au_list[i])
        yield f"{img},{va_text[2 * i]},{va_text[2 * i + 1]},{expr_list[i]},{au_text}\n"


def _check_lengths(images: Sequence[str], **arrays: np.ndarray) -> None:
    for name, arr in arrays.items():
        if len(arr) != len(images):
            raise ValueError(f"{name} has {len(arr)} rows but there are {len(images)} images")


def write_mtl_annotations(path: str | os.PathLike, ann: MTLAnnotations) -> Path:
    """Write `ann` as an s-Aff-Wild2 annotation file (atomic)."""
    with atomic_open(path) as fh:
        fh.write(",".join(labels.MTL_ANNOTATION_HEADER) + "\n")
        fh.writelines(_mtl_rows(ann.images, ann.valence_arousal, ann.expression, ann.aus))
    return Path(path)


def write_mtl_submission(
    path: str | os.PathLike,
    images: Sequence[str],
    valence_arousal: np.ndarray,
    expression: np.ndarray,
    aus: np.ndarray,
) -> Path:
    """Write an ABAW MTL submission: header `image,valence,arousal,expression,aus`, then
    `video/frame.jpg,v,a,expr,au1,...,au12` per image (AUs as 0/1). VA is clipped to [-1, 1]."""
    va = np.clip(np.asarray(valence_arousal, dtype=np.float32).reshape(-1, 2), -1.0, 1.0)
    expression = np.asarray(expression, dtype=np.int64).reshape(-1)
    aus = np.asarray(aus, dtype=np.int64).reshape(-1, labels.NUM_AUS)
    _check_lengths(images, valence_arousal=va, expression=expression, aus=aus)
    if ((expression < 0) | (expression >= labels.NUM_EXPRESSIONS)).any():
        raise ValueError("submission expressions must be class indices 0..7")
    if ((aus != 0) & (aus != 1)).any():
        raise ValueError("submission AUs must be 0 or 1")
    with atomic_open(path) as fh:
        fh.write(",".join(labels.MTL_SUBMISSION_HEADER) + "\n")
        fh.writelines(_mtl_rows(images, va, expression, aus))
    return Path(path)


def read_mtl_submission(path: str | os.PathLike) -> MTLAnnotations:
    """Read and validate an ABAW MTL submission (VA in [-1, 1], expression 0..7, AUs 0/1)."""
    path = Path(path)
    text, lines = _read_text_and_lines(path)
    _check_header(path, lines[0], labels.MTL_SUBMISSION_HEADER)
    names = labels.MTL_ANNOTATION_HEADER  # the 16 fields of a row, for messages
    body_commas = text.count(",") - lines[0].count(",")
    images, values = _parse_numeric_rows(path, lines[1:], len(names), names, body_commas)
    va = values[:, 0:2]
    _check_range(path, va, (va < -1.0) | (va > 1.0), names[1:3], "[-1, 1]")
    expr = values[:, 2:3]
    bad_expr = (expr < 0) | (expr > labels.NUM_EXPRESSIONS - 1) | ~_is_integer(expr)
    _check_range(path, expr, bad_expr, names[3:4], f"the integers 0..{labels.NUM_EXPRESSIONS - 1}")
    aus = values[:, 3:]
    _check_range(path, aus, (aus != 0) & (aus != 1), names[4:], "{0, 1}")
    _check_duplicates(path, images)
    return MTLAnnotations(images, va.astype(np.float32), _as_int_column(expr[:, 0]), _as_int_column(aus))


# ---------------------------------------------------------------------------------------------
# Test lists and LSD submissions
# ---------------------------------------------------------------------------------------------


def _looks_like_image(field_text: str) -> bool:
    return is_image_file(field_text.strip())


def read_test_list(path: str | os.PathLike) -> list[str]:
    """Image paths of an ABAW test list, in file order.

    Accepts the MTL release (`MTL_Challenge_test_set_release.txt`: a header, then one image path
    per line, possibly followed by empty fields) and the LSD release
    (`LSD_Challenge_test_set_release.txt`: header `image,expression`). The first line is taken as
    a header unless its first field is an image path; the image is the first field of each row.
    """
    path = Path(path)
    lines = _read_lines(path)
    start = 0 if _looks_like_image(lines[0].split(",", 1)[0]) else 1
    images: list[str] = []
    for i in range(start, len(lines)):
        image = lines[i].split(",", 1)[0].strip()
        if not image:
            raise FormatError(path, i + 1, "empty line" if not lines[i].strip() else "empty image path")
        images.append(image)
    if not images:
        raise FormatError(path, 1, "no images listed after the header")
    # _check_duplicates counts lines from 2 (after a header); shift when there is none.
    try:
        _check_duplicates(path, images)
    except FormatError as err:
        if start == 0 and err.line is not None:
            raise FormatError(path, err.line - 1, err.reason) from None
        raise
    return images


def list_image_root(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> Path:
    """The folder the images of the ABAW list `path` are relative to: `image_root` when given,
    else the first folder of LIST_IMAGE_FOLDERS beside the list (s-Aff-Wild2's `cropped_aligned`,
    the LSD test images `test_set_images` as `abaw demo-data` lays them out), else the list's folder."""
    if image_root is not None:
        return Path(image_root)
    path = Path(path)
    beside = (path.parent / name for name in LIST_IMAGE_FOLDERS)
    return next((folder for folder in beside if folder.is_dir()), path.parent)


def write_lsd_test_release(path: str | os.PathLike, images: Sequence[str]) -> Path:
    """Write an LSD test list as the challenge releases it (`LSD_Challenge_test_set_release.txt`):
    header `image,expression`, then `image,` per image, the expression withheld."""
    with atomic_open(path) as fh:
        fh.write(",".join(labels.LSD_SUBMISSION_HEADER) + "\n")
        fh.writelines(f"{img},\n" for img in images)
    return Path(path)


def write_lsd_submission(path: str | os.PathLike, images: Sequence[str], classes: np.ndarray) -> Path:
    """Write an ABAW LSD submission: header `image,expression`, then `image,class index 0..5`.
    The same file is a labelled list (`read_lsd_labelled_list`): the demo's test truth is one."""
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    _check_lengths(images, classes=classes)
    if ((classes < 0) | (classes >= labels.NUM_LSD_CLASSES)).any():
        raise ValueError(f"LSD classes must be indices 0..{labels.NUM_LSD_CLASSES - 1}")
    with atomic_open(path) as fh:
        fh.write(",".join(labels.LSD_SUBMISSION_HEADER) + "\n")
        fh.writelines(f"{img},{c}\n" for img, c in zip(images, classes.tolist()))
    return Path(path)


def _read_image_class_list(path: Path, allow_names: bool) -> tuple[list[str], np.ndarray]:
    lines = _read_lines(path)
    _check_header(path, lines[0], labels.LSD_SUBMISSION_HEADER)
    images: list[str] = []
    classes = np.empty(len(lines) - 1, dtype=np.int64)
    top = labels.NUM_LSD_CLASSES - 1
    for i, line in enumerate(lines[1:]):
        fields = line.split(",")
        if len(fields) != 2:
            reason = "empty line" if not line.strip() else f"wrong column count: expected 2, found {len(fields)}"
            raise FormatError(path, i + 2, reason)
        image, raw = fields[0].strip(), fields[1].strip()
        if not image:
            raise FormatError(path, i + 2, "empty image path")
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None and not raw:
            raise FormatError(path, i + 2, "no expression: an unlabelled list (such as the test release) holds no truth")
        if value is None:
            if allow_names and raw.upper() in labels.LSD_FOLDER_ALIASES:
                value = labels.lsd_class_index(raw)
            else:
                what = "an LSD class index or name" if allow_names else "an LSD class index"
                raise FormatError(path, i + 2, f"expression {raw!r} is not {what} (0..{top})")
        if not 0 <= value <= top:
            raise FormatError(path, i + 2, f"expression = {value} is outside the integers 0..{top}")
        images.append(image)
        classes[i] = value
    _check_duplicates(path, images)
    return images, classes


def read_lsd_submission(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read and validate an ABAW LSD submission -> (images, class indices int64 0..5)."""
    return _read_image_class_list(Path(path), allow_names=False)


# ---------------------------------------------------------------------------------------------
# LSD class folders and labelled lists
# ---------------------------------------------------------------------------------------------


@dataclass
class LSDSamples:
    """Labelled LSD images: `paths` (openable: `root / <key>`) and class indices into
    labels.LSD_CLASSES. `root` is the folder that `relative_keys()` are relative to."""

    paths: list[Path]
    labels: np.ndarray
    root: Path | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self.paths):
            raise ValueError(f"LSDSamples: {len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(labels.LSD_CLASSES)}

    def relative_keys(self) -> list[str]:
        """Image keys as a submission names them: POSIX paths relative to `root` (the class-folder
        tree or the labelled list's image root), e.g. `ANGER/0001.jpg`, whatever the working
        folder and whether `root` is relative or absolute."""
        if self.root is None:
            return [p.as_posix() for p in self.paths]
        return [
            (p.relative_to(self.root) if p.is_relative_to(self.root) else p).as_posix()
            for p in self.paths
        ]


def scan_lsd_folders(root: str | os.PathLike) -> LSDSamples:
    """All images of an LSD class-folder tree `<root>/<CLASS>/**.{jpg,jpeg,png}`.

    Folder names map to classes through labels.lsd_class_index (ANGRER/ANGERE -> ANGER ...).
    Refuses an unknown class folder and a tree that lacks one of the 6 classes. Paths are sorted
    per class, classes in labels.LSD_CLASSES order, so the order is the same on every machine.
    """
    root = Path(root)
    if not root.is_dir():
        raise FormatError(root, None, "LSD class-folder tree not found (expected a directory)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    by_class: dict[int, list[Path]] = {}
    for folder in folders:
        try:
            index = labels.lsd_class_index(folder.name)
        except ValueError as err:
            raise FormatError(folder, None, str(err)) from None
        if index in by_class:
            log.warning("%s: several folders map to class %s; merging them", root, labels.LSD_CLASSES[index])
        by_class.setdefault(index, []).extend(list_images(folder))
    missing = [labels.LSD_CLASSES[i] for i in range(labels.NUM_LSD_CLASSES) if i not in by_class]
    if missing:
        raise FormatError(
            root, None,
            f"missing LSD class folder(s): {', '.join(missing)} "
            f"(found: {', '.join(f.name for f in folders) or 'none'})",
        )
    paths: list[Path] = []
    classes: list[int] = []
    for index in range(labels.NUM_LSD_CLASSES):
        files = sorted(by_class[index])
        if not files:
            log.warning("%s: class %s has no images", root, labels.LSD_CLASSES[index])
        paths.extend(files)
        classes.extend([index] * len(files))
    return LSDSamples(paths=paths, labels=np.asarray(classes, dtype=np.int64), root=root)


def read_lsd_labelled_list(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> LSDSamples:
    """A labelled LSD list: header `image,expression`, expression a class index 0..5 or a class
    name (aliases accepted). Listed images are relative to `image_root` (default: the list's
    folder); `paths` are `image_root / image` and `relative_keys()` the images as listed. With
    `image_root` given, listed images missing on disk are refused."""
    path = Path(path)
    images, classes = _read_image_class_list(path, allow_names=True)
    if image_root is not None:
        check_listed_images(path, images, Path(image_root))
    root = Path(image_root) if image_root is not None else path.parent
    return LSDSamples(paths=[root / i for i in images], labels=classes, root=root)


# ---------------------------------------------------------------------------------------------
# The project's per-frame prediction table
# ---------------------------------------------------------------------------------------------

# One row per face per frame (py-feat style). `face` is 1 when a face was found (box and model
# columns filled) and 0 for a frame without a face (those columns left empty).
PREDICTION_BASE_COLUMNS: tuple[str, ...] = (
    "source", "frame", "time_s", "track", "face", "x1", "y1", "x2", "y2", "det_score",
)
# Columns that hold text; every other column holds a number (empty = missing).
PREDICTION_TEXT_COLUMNS: tuple[str, ...] = ("source", "expression", "prior_expression", "image")
# EMMA's frozen expression prior read on its own (predict.heads): its most likely ABAW expression
# and its probabilities in ABAW order, empty where the prior has no such class or no prior exists.
PRIOR_COLUMNS: tuple[str, ...] = ("prior_expression", *(f"prior_{e}" for e in labels.EXPRESSIONS))


def prediction_columns(task: str) -> list[str]:
    """Columns of the prediction table for a model of `task`:
    mtl: base + valence, arousal, expression (name), p_<Expression> x8, p_<AU> x12, <AU> (0/1) x12,
         prior_expression (name), prior_<Expression> x8 (every EMMA table has them; empty for a
         model trained with --cnn none);
    lsd: base + expression (name), p_<CLASS> x6."""
    base = list(PREDICTION_BASE_COLUMNS)
    if task == "mtl":
        return (
            base
            + ["valence", "arousal", "expression"]
            + [f"p_{e}" for e in labels.EXPRESSIONS]
            + [f"p_{a}" for a in labels.AUS]
            + list(labels.AUS)
            + list(PRIOR_COLUMNS)
        )
    if task == "lsd":
        return base + ["expression"] + [f"p_{c}" for c in labels.LSD_CLASSES]
    raise ValueError(f"unknown task {task!r}; expected 'mtl' or 'lsd'")


def prediction_table_task(columns: Iterable[str]) -> str | None:
    """'mtl' or 'lsd' from a prediction table's columns, None when neither model's columns are there."""
    columns = set(columns)
    if {"valence", "arousal", *labels.AUS} <= columns and "expression" in columns:
        return "mtl"
    if {f"p_{c}" for c in labels.LSD_CLASSES} <= columns and "expression" in columns:
        return "lsd"
    return None


def prediction_image_key(source: str, frame: int) -> str:
    """The image name a prediction-table row stands for: `<source>/<frame:05d>.jpg`, the
    s-Aff-Wild2 `cropped_aligned` naming (annotation files and submissions use it)."""
    return f"{source}/{int(frame):05d}.jpg"


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(float(value)) else f"{float(value):.6g}"
    return str(value)


class PredictionTableWriter(AtomicWriter):
    """Streams prediction rows to CSV; the file appears under `path` only on a clean close.

        with PredictionTableWriter(out / "predictions.csv", prediction_columns("mtl")) as table:
            table.write_row({"source": "video1", "frame": 1, "face": 0})

    Keys missing from a row are written as empty fields; keys not among `columns` are refused
    (a typo would otherwise silently drop a column). Floats are written with 6 significant digits.
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str]):
        self.path = Path(path)
        self.columns = list(columns)
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"duplicate column names in {self.columns}")
        self._known = set(self.columns)
        self._pending = PendingFile(self.path)
        self._fh: IO[str] | None = open(self._pending.tmp, "w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._fh, lineterminator="\n")
        self._writer.writerow(self.columns)
        self.rows_written = 0

    def write_row(self, row: dict[str, Any]) -> None:
        if self._fh is None:
            raise ValueError(f"{self.path}: writer already closed")
        unknown = set(row) - self._known
        if unknown:
            raise KeyError(f"{self.path}: unknown column(s) {sorted(unknown)}")
        self._writer.writerow([_format_cell(row.get(c)) for c in self.columns])
        self.rows_written += 1

    def close(self) -> Path:
        """Finish the file and move it into place."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._pending.commit()
        return self.path

    def abort(self) -> None:
        """Drop the partial file; nothing appears under `path`."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._pending.abort()



def read_prediction_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a prediction table into a column dict of numpy arrays, in file column order.

    Text columns (source, expression, prior_expression and image when present) are `str` arrays; every other column is
    float64 with NaN for an empty field (`frame`, `face`, `track` are whole numbers stored as
    floats so that empty fields can be NaN). Refuses a file without the base columns, rows with
    the wrong field count and non-numeric values in numeric columns (file, line, reason).
    """
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        # predict can also write Parquet (with pyarrow); reading it back here is CSV-only.
        raise FormatError(path, None, "Parquet prediction tables are not read here; write the table as CSV")
    lines = _read_lines(path)
    rows = list(csv.reader(lines))
    header = [h.strip() for h in rows[0]]
    missing = [c for c in PREDICTION_BASE_COLUMNS if c not in header]
    if missing:
        raise FormatError(path, 1, f"not a prediction table: header lacks {', '.join(missing)}")
    if len(set(header)) != len(header):
        raise FormatError(path, 1, "duplicate column names in the header")
    body = rows[1:]
    for i, row in enumerate(body):
        if len(row) != len(header):
            reason = "empty line" if not row else f"wrong column count: expected {len(header)}, found {len(row)}"
            raise FormatError(path, i + 2, reason)
    table: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        cells = [row[j] for row in body]
        if name in PREDICTION_TEXT_COLUMNS:
            table[name] = np.asarray(cells, dtype=str)
            continue
        column = np.full(len(cells), np.nan, dtype=np.float64)
        for i, cell in enumerate(cells):
            cell = cell.strip()
            if cell:
                try:
                    column[i] = float(cell)
                except ValueError:
                    raise FormatError(path, i + 2, f"non-numeric {name} value {cell!r}") from None
        table[name] = column
    return table


__all__ = [
    "FormatError",
    "MTLAnnotations", "read_mtl_annotations", "write_mtl_annotations",
    "read_mtl_submission", "write_mtl_submission", "read_test_list", "list_image_root",
    "check_listed_images", "write_lsd_test_release", "write_lsd_submission", "read_lsd_submission",
    "LSDSamples", "scan_lsd_folders",
    "read_lsd_labelled_list", "PREDICTION_BASE_COLUMNS", "PREDICTION_TEXT_COLUMNS", "PRIOR_COLUMNS",
    "prediction_columns", "prediction_table_task", "prediction_image_key",
    "PredictionTableWriter", "read_prediction_table",
]
