"""Turn command-line INPUT paths into typed sources, reporting (never raising on) what cannot be used.

    sources, skipped = expand_inputs(["clip.mp4", "photos/", "list.txt"])

- a video file (any container OpenCV decodes: mp4 avi mov flv mkv webm ...) -> one `video` source;
- an image file -> one `images` source of one frame;
- a folder -> searched recursively: each video in it is a source, and each folder that directly
  holds images is ONE `images` source whose frames are its images in natural name order (a folder
  of extracted frames is a video in s-Aff-Wild2's layout); other files are skipped and reported;
- a text file (.txt/.lst/.list) -> a list of paths, one per line (blank lines and `#` comments
  ignored, relative paths resolved against the list's folder), each expanded as above.

Each source gets a unique, stable `name` (file stem or folder name; `-2`, `-3` ... appended in
input order on a clash) that becomes its output folder name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

import cv2

from abaw_cli.image_files import is_image_file

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .avi .mov .qt .flv .f4v .mkv .webm .wmv .asf .mpg .mpeg .m2v .ts .mts .m2ts .3gp .3g2 "
    ".ogv .mxf .vob .dv .y4m .gif".split()
)
LIST_EXTENSIONS = frozenset(".txt .lst .list".split())

SourceKind = Literal["video", "images"]


@dataclass(frozen=True)
class Source:
    """One unit of work: a video, or an ordered sequence of image files (frames)."""

    name: str
    kind: SourceKind
    path: Path  # the video file, or the image file / folder the images came from
    images: tuple[Path, ...] = field(default=())  # kind == "images": the frames, in order

    def __str__(self) -> str:
        return f"{self.name} ({self.path})"


@dataclass(frozen=True)
class Skipped:
    """An input that is not used, and why (shown to the user and in the summary)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def approximate_bytes(paths: Sequence[Path]) -> float:
    """About how many bytes reading `paths` takes: their count times the first one's size (one
    stat however many frames). What crop-faces and predict deal sources to torchrun ranks by."""
    if not paths or not paths[0].is_file():
        return 0.0
    return float(len(paths) * paths[0].stat().st_size)


def natural_key(path: Path) -> list:
    """Sort key so that frame2.jpg comes before frame10.jpg."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _safe_name(text: str) -> str:
    name = re.sub(r"[^\w.+-]+", "_", text).strip("._")
    return name or "source"


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _probe_kind(path: Path) -> SourceKind | None:
    """For a file with an unfamiliar extension: can OpenCV read it as an image, or as a video?"""
    if cv2.haveImageReader(str(path)):
        return "images"
    cap = cv2.VideoCapture(str(path))
    try:
        if cap.isOpened() and cap.read()[0]:
            return "video"
    finally:
        cap.release()
    return None


class _Collector:
    def __init__(self) -> None:
        self.sources: list[Source] = []
        self.skipped: list[Skipped] = []
        self._names: set[str] = set()
        self._seen: set[Path] = set()

    def add(self, kind: SourceKind, path: Path, name: str, images: tuple[Path, ...] = ()) -> None:
        key = path.resolve()
        if key in self._seen:
            log.debug("%s given more than once; used once", path)
            return
        self._seen.add(key)
        base = _safe_name(name)
        unique, n = base, 1
        while unique.lower() in self._names:
            n += 1
            unique = f"{base}-{n}"
        self._names.add(unique.lower())
        self.sources.append(Source(unique, kind, path, images))

    def skip(self, path: Path | str, reason: str) -> None:
        entry = Skipped(str(path), reason)
        if entry not in self.skipped:  # a file named twice (itself and in its folder): said once
            self.skipped.append(entry)


def expand_inputs(inputs: Iterable[str | Path]) -> tuple[list[Source], list[Skipped]]:
    """Sources in input order, plus every input (or file inside a folder) that was left out."""
    out = _Collector()
    for raw in inputs:
        _expand(Path(raw), out, from_list=None)
    return out.sources, out.skipped


def _expand(path: Path, out: _Collector, from_list: str | None) -> None:
    def skip(reason: str) -> None:
        # An entry of a list is reported by list file and line, so that it can be fixed there.
        out.skip(from_list or path, f"{path}: {reason}" if from_list else reason)

    if not path.exists():
        skip("no such file or folder")
    elif path.is_dir():
        _expand_folder(path, out)
    elif not path.is_file():
        skip("not a regular file")
    elif is_video_file(path):
        out.add("video", path, path.stem)
    elif is_image_file(path):
        _add_image(path, out, skip)
    elif path.suffix.lower() in LIST_EXTENSIONS:
        if from_list:
            skip("lists inside lists are not followed")
        else:
            _expand_list(path, out)
    else:
        kind = _probe_kind(path)
        if kind == "video":
            out.add("video", path, path.stem)
        elif kind == "images":
            _add_image(path, out, skip)
        else:
            skip("not a video, an image or a list of paths that OpenCV can read")


def _add_image(path: Path, out: _Collector, skip) -> None:
    # The header check is cheap and catches non-images with an image extension; a file whose
    # header is fine but whose data is broken is caught when it is decoded.
    if not cv2.haveImageReader(str(path)):
        skip("not a readable image (unknown or corrupt header)")
        return
    out.add("images", path, path.stem, (path,))


def _expand_folder(folder: Path, out: _Collector) -> None:
    for sub in sorted([folder, *(p for p in folder.rglob("*") if p.is_dir())], key=lambda p: str(p)):
        files = sorted((p for p in sub.iterdir() if p.is_file()), key=natural_key)
        images, others = [], []
        for f in files:
            if f.name.startswith("."):
                continue
            if is_video_file(f):
                out.add("video", f, f.stem)
            elif is_image_file(f):
                if cv2.haveImageReader(str(f)):
                    images.append(f)
                else:
                    out.skip(f, "not a readable image (unknown or corrupt header)")
            else:
                others.append(f)
        if images:
            rel = sub.relative_to(folder)
            name = folder.name if rel == Path(".") else f"{folder.name}_{'_'.join(rel.parts)}"
            out.add("images", sub, name, tuple(images))
        if others:
            shown = ", ".join(f.name for f in others[:5]) + (" ..." if len(others) > 5 else "")
            out.skip(sub, f"{len(others)} file(s) neither video nor image: {shown}")


def _expand_list(list_file: Path, out: _Collector) -> None:
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        out.skip(list_file, f"cannot be read as a text list of paths ({exc.__class__.__name__}: {exc})")
        return
    before_sources, before_skipped = len(out.sources), len(out.skipped)
    entries = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        entries += 1
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = list_file.parent / path
        _expand(path, out, from_list=f"{list_file}:{line_no}")
    if entries and len(out.sources) == before_sources:
        # Nothing in it was usable: most likely not a list of paths at all. One message, not one
        # per line of prose.
        first = out.skipped[before_skipped]
        del out.skipped[before_skipped:]
        out.skip(list_file, f"not a list of video/image paths (first entry, {first.path}: {first.reason})")
    elif not entries:
        out.skip(list_file, "empty list of paths")
