"""Dataset manifests: what a user's copy of a dataset must look like, checked before training.

A manifest is a small YAML file in `<repo>/data_manifests/` (schema at the top of each file):

    name: s-aff-wild2-mtl          # id = file name without .yaml
    task: mtl                      # mtl | lsd
    description: one line
    images: cropped_aligned        # mtl: folder that annotation image paths are relative to
    tolerance: 0.05                # relative deviation from an expected count reported as "far"
    splits:
      train:
        annotations: training_set_annotations.txt   # mtl annotation file, or
        # class_folders: training_set_synthetic_images   (lsd class-folder tree), or
        # labelled_list: list.csv  (lsd `image,expression`), or
        # test_list: MTL_Challenge_test_set_release.txt  (unlabeled list)
        required: true             # default true; a missing optional split is only reported
        expected:                  # every count optional
          images: 142333
          va: 103917               # mtl: frames with valence/arousal
          expression: 90645        # mtl: frames with an expression label
          au: 103316               # mtl: frames with all 12 AUs
          expression_counts: {Neutral: 23976, ...}
          au_positives: {AU1: 18713, ...}
          class_counts: {SADNESS: 144631, ...}        # lsd
    labels: {...}                  # documentation of label conventions; not read by the code

`check_dataset(root, manifest)` reads every split (with the validating readers of
abaw_cli.data.formats), compares counts with the expectations, returns a DatasetReport (which also
holds the parsed data, so loaders need not read the files twice) and raises DatasetError when
anything required is missing or malformed. Counts far from the expected ones are logged as warnings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from abaw_cli import labels
from abaw_cli.data.formats import (
    FormatError,
    LSDSamples,
    MTLAnnotations,
    read_lsd_labelled_list,
    read_mtl_annotations,
    read_test_list,
    scan_lsd_folders,
)

log = logging.getLogger(__name__)

MANIFEST_DIR = Path(__file__).resolve().parents[2] / "data_manifests"
TASKS = ("mtl", "lsd")
LOCATION_KEYS = {"mtl": ("annotations", "test_list"), "lsd": ("class_folders", "labelled_list", "test_list")}
TOTAL_KEYS = {"mtl": ("images", "va", "expression", "au"), "lsd": ("images",)}
DETAIL_KEYS = {
    "mtl": {"expression_counts": labels.EXPRESSIONS, "au_positives": labels.AUS},
    "lsd": {"class_counts": labels.LSD_CLASSES},
}
DEFAULT_TOLERANCE = 0.05


class DatasetError(ValueError):
    """A dataset copy (or a manifest) that cannot be used; the message lists every problem."""

    def __init__(self, message: str, report: DatasetReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class SplitSpec:
    name: str
    kind: str  # annotations | class_folders | labelled_list | test_list
    path: str
    required: bool = True
    expected: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    name: str
    task: str
    description: str
    splits: dict[str, SplitSpec]
    images: str | None = None
    tolerance: float = DEFAULT_TOLERANCE
    labels: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def split_path(self, root: str | os.PathLike, split: str) -> Path:
        """Where `split` lives under `root` (annotation file, list or class-folder tree)."""
        if split not in self.splits:
            raise DatasetError(f"manifest {self.name} has no split {split!r}; it has {', '.join(self.splits)}")
        return Path(root) / self.splits[split].path

    def image_root(self, root: str | os.PathLike) -> Path:
        """The folder annotation image paths are relative to (MTL), else `root`."""
        return Path(root) / self.images if self.images else Path(root)


def available_manifests() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.yaml"))


# Manifest of a task's real data, and of the demo's (`abaw demo-data` writes OUT/mtl and OUT/lsd
# beside OUT/demo_summary.json).
_AUTO_MANIFESTS = {"mtl": ("s-aff-wild2-mtl", "demo-mtl"), "lsd": ("abaw4-lsd", "demo-lsd")}
DEMO_MANIFESTS: frozenset[str] = frozenset(demo for _, demo in _AUTO_MANIFESTS.values())
# The file `abaw demo-data` leaves at the top of its output: what marks a folder as demo data.
DEMO_MARKER = "demo_summary.json"


def pick_manifest(root: str | os.PathLike, name: str, task: str) -> str:
    """`name`, or for `auto` the demo manifest of `task` (mtl | lsd) when `root` is a demo tree,
    else the manifest of the task's real data."""
    if name != "auto":
        return name
    real, demo = _AUTO_MANIFESTS[task]
    if (Path(root).parent / DEMO_MARKER).exists() and demo in available_manifests():
        return demo
    return real


def is_demo_data(path: str | os.PathLike) -> bool:
    """True when `path` lies in a tree written by `abaw demo-data` (a folder above it holds
    demo_summary.json): its faces are rendered, not real."""
    path = Path(path).absolute()
    return any((folder / DEMO_MARKER).is_file() for folder in (path, *path.parents))


def _manifest_error(source: Path, reason: str) -> DatasetError:
    return DatasetError(f"{source}: invalid manifest: {reason}")


def _parse_split(source: Path, task: str, name: str, raw: Any) -> SplitSpec:
    if not isinstance(raw, dict):
        raise _manifest_error(source, f"split {name!r} must be a mapping")
    allowed = set(LOCATION_KEYS[task]) | {"required", "expected"}
    unknown = set(raw) - allowed
    if unknown:
        raise _manifest_error(source, f"split {name!r}: unknown key(s) {sorted(unknown)}; allowed {sorted(allowed)}")
    kinds = [k for k in LOCATION_KEYS[task] if k in raw]
    if len(kinds) != 1:
        raise _manifest_error(source, f"split {name!r} needs exactly one of {', '.join(LOCATION_KEYS[task])}")
    expected = raw.get("expected") or {}
    if not isinstance(expected, dict):
        raise _manifest_error(source, f"split {name!r}: expected must be a mapping")
    allowed_expected = set(TOTAL_KEYS[task]) | set(DETAIL_KEYS[task])
    unknown = set(expected) - allowed_expected
    if unknown:
        raise _manifest_error(source, f"split {name!r}: unknown expected count(s) {sorted(unknown)}; allowed {sorted(allowed_expected)}")
    for key, names in DETAIL_KEYS[task].items():
        bad = set(expected.get(key) or {}) - set(names)
        if bad:
            raise _manifest_error(source, f"split {name!r}: {key} names unknown class(es) {sorted(bad)}")
    return SplitSpec(name=name, kind=kinds[0], path=str(raw[kinds[0]]),
                     required=bool(raw.get("required", True)), expected=expected)


def load_manifest(name_or_path: str | os.PathLike) -> Manifest:
    """A manifest by name (a file in data_manifests/) or by path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        source = candidate
    else:
        source = MANIFEST_DIR / f"{name_or_path}.yaml"
    if not source.is_file():
        raise DatasetError(
            f"dataset manifest {str(name_or_path)!r} not found (looked at {source}); "
            f"available: {', '.join(available_manifests()) or 'none'}"
        )
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise _manifest_error(source, f"not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise _manifest_error(source, "top level must be a mapping")
    for key in ("name", "task", "splits"):
        if key not in raw:
            raise _manifest_error(source, f"missing key {key!r}")
    task = raw["task"]
    if task not in TASKS:
        raise _manifest_error(source, f"task must be one of {TASKS}, found {task!r}")
    if not isinstance(raw["splits"], dict) or not raw["splits"]:
        raise _manifest_error(source, "splits must be a non-empty mapping")
    known = {"name", "task", "description", "images", "tolerance", "splits", "labels"}
    unknown = set(raw) - known
    if unknown:
        raise _manifest_error(source, f"unknown key(s) {sorted(unknown)}; allowed {sorted(known)}")
    if task == "mtl" and not raw.get("images"):
        raise _manifest_error(source, "an mtl manifest needs `images` (the image folder)")
    tolerance = float(raw.get("tolerance", DEFAULT_TOLERANCE))
    if tolerance < 0:
        raise _manifest_error(source, "tolerance must be >= 0")
    return Manifest(
        name=str(raw["name"]),
        task=task,
        description=str(raw.get("description", "")),
        splits={name: _parse_split(source, task, name, spec) for name, spec in raw["splits"].items()},
        images=raw.get("images"),
        tolerance=tolerance,
        labels=raw.get("labels") or {},
        source=source,
    )


@dataclass
class ReportRow:
    split: str
    item: str
    expected: int | None
    found: int | str | None
    status: str  # ok | far | present | missing | error | skipped
    note: str = ""
    detail: bool = False  # per-class rows, shown in the table only when off or asked for


@dataclass
class DatasetReport:
    """Outcome of check_dataset: one row per checked item, plus the parsed split data."""

    manifest: Manifest
    root: Path
    rows: list[ReportRow] = field(default_factory=list)
    data: dict[str, MTLAnnotations | LSDSamples | list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self, split: str) -> dict[str, int]:
        """Found counts of `split` as {item: count} (only numeric rows)."""
        return {r.item: r.found for r in self.rows if r.split == split and isinstance(r.found, int)}

    def to_table(self, details: bool = False) -> Table:
        """A rich table of the check; per-class rows only when `details` or when off."""
        table = Table(title=f"{self.manifest.name} at {self.root}", show_lines=False)
        for column, justify in (("split", "left"), ("item", "left"), ("expected", "right"),
                                ("found", "right"), ("status", "left"), ("note", "left")):
            table.add_column(column, justify=justify)
        style = {"ok": "green", "present": "green", "far": "yellow", "missing": "red", "error": "red", "skipped": "dim"}
        for row in self.rows:
            if row.detail and not details and row.status == "ok":
                continue
            table.add_row(
                row.split, row.item,
                "" if row.expected is None else f"{row.expected:,}",
                "" if row.found is None else (f"{row.found:,}" if isinstance(row.found, int) else str(row.found)),
                f"[{style.get(row.status, 'white')}]{row.status}[/]", row.note,
            )
        return table


def _compare(report: DatasetReport, split: str, item: str, expected: Any, found: int, detail: bool) -> None:
    if expected is None:
        report.rows.append(ReportRow(split, item, None, found, "present", detail=detail))
        return
    expected = int(expected)
    allowed = report.manifest.tolerance * expected
    if abs(found - expected) <= allowed:
        report.rows.append(ReportRow(split, item, expected, found, "ok", detail=detail))
        return
    change = (found - expected) / expected if expected else float("inf")
    note = f"{change:+.1%}" if expected else "expected none"
    report.rows.append(ReportRow(split, item, expected, found, "far", note, detail=detail))
    report.warnings.append(f"{split}: {item} = {found:,}, expected {expected:,} ({note})")


def _check_counts(report: DatasetReport, spec: SplitSpec, counts: dict[str, Any]) -> None:
    task = report.manifest.task
    for key in TOTAL_KEYS[task]:
        if key in counts:
            _compare(report, spec.name, key, spec.expected.get(key), counts[key], detail=False)
    for key, names in DETAIL_KEYS[task].items():
        if key not in counts:
            continue
        wanted = spec.expected.get(key) or {}
        for name in names:
            _compare(report, spec.name, f"{key}.{name}", wanted.get(name), counts[key][name], detail=True)


def _read_split(manifest: Manifest, root: Path, spec: SplitSpec, check_images: bool) -> tuple[Any, dict[str, Any]]:
    path = root / spec.path
    if spec.kind == "test_list":
        images = read_test_list(path)
        return images, {"images": len(images)}
    if spec.kind == "annotations":
        ann = read_mtl_annotations(path, manifest.image_root(root) if check_images else None)
        return ann, ann.label_counts()
    if spec.kind == "class_folders":
        samples = scan_lsd_folders(path)
    else:
        samples = read_lsd_labelled_list(path, image_root=root if check_images else None)
    return samples, {"images": len(samples), "class_counts": samples.class_counts()}


def check_dataset(
    root: str | os.PathLike,
    manifest: Manifest | str | os.PathLike,
    splits: list[str] | None = None,
    check_images: bool = True,
) -> DatasetReport:
    """Check the copy of a dataset under `root` against `manifest` (or a manifest name).

    Reads each split (all, or `splits`), validating file formats and, with `check_images`, that
    every listed image exists. Raises DatasetError listing every problem when a required split is
    missing or malformed; logs a warning for each count outside the manifest's tolerance.
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    root = Path(root)
    report = DatasetReport(manifest=manifest, root=root)
    if not root.is_dir():
        raise DatasetError(f"data root {root} does not exist (dataset {manifest.name})", report)
    wanted = list(manifest.splits) if splits is None else splits
    for name in wanted:
        if name not in manifest.splits:
            raise DatasetError(f"manifest {manifest.name} has no split {name!r}; it has {', '.join(manifest.splits)}", report)
    if manifest.task == "mtl":
        image_root = manifest.image_root(root)
        if not image_root.is_dir():
            report.rows.append(ReportRow("-", f"images: {manifest.images}/", None, None, "missing"))
            report.errors.append(f"image folder {image_root} is missing")
            check_images = False
    for name in wanted:
        spec = manifest.splits[name]
        path = root / spec.path
        if not path.exists():
            status = "missing" if spec.required else "skipped"
            report.rows.append(ReportRow(name, f"{spec.kind}: {spec.path}", None, None, status,
                                         "" if spec.required else "optional"))
            if spec.required:
                report.errors.append(f"{name}: {spec.kind.replace('_', ' ')} {path} is missing")
            continue
        try:
            data, counts = _read_split(manifest, root, spec, check_images)
        except FormatError as err:
            report.rows.append(ReportRow(name, f"{spec.kind}: {spec.path}", None, None, "error", err.reason))
            report.errors.append(f"{name}: {err}")
            continue
        report.data[name] = data
        report.rows.append(ReportRow(name, f"{spec.kind}: {spec.path}", None, "found", "ok"))
        _check_counts(report, spec, counts)
    if report.errors:
        lines = [f"dataset {manifest.name} at {root} cannot be used:"]
        lines += [f"  - {e}" for e in report.errors]
        lines.append(f"expected layout: see {manifest.source or manifest.name}")
        raise DatasetError("\n".join(lines), report)
    for warning in report.warnings:
        log.warning("%s: %s", manifest.name, warning)
    return report


__all__ = [
    "DatasetError", "Manifest", "SplitSpec", "DatasetReport", "ReportRow", "MANIFEST_DIR",
    "available_manifests", "load_manifest", "check_dataset",
]
