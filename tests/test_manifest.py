"""Dataset manifests: the shipped ones load, and check_dataset reports missing, malformed and far-off data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from abaw_cli import labels
from abaw_cli.data.formats import MTLAnnotations, write_mtl_annotations
from abaw_cli.data.manifest import (
    DatasetError,
    DatasetReport,
    available_manifests,
    check_dataset,
    load_manifest,
)


def test_shipped_manifests_carry_the_method_counts():
    assert {"s-aff-wild2-mtl", "abaw4-lsd"} <= set(available_manifests())
    mtl = load_manifest("s-aff-wild2-mtl")
    assert mtl.task == "mtl" and mtl.images == "cropped_aligned"
    train = mtl.splits["train"]
    assert train.kind == "annotations" and train.path == "training_set_annotations.txt"
    assert train.expected["images"] == 142333 and train.expected["expression"] == 90645
    assert sum(train.expected["expression_counts"].values()) == train.expected["expression"]
    assert list(train.expected["au_positives"]) == list(labels.AUS)
    assert mtl.splits["val"].expected["images"] == 26876
    assert mtl.splits["test"].required is False and mtl.splits["test"].expected["images"] == 51159
    lsd = load_manifest("abaw4-lsd")
    assert lsd.task == "lsd"
    assert lsd.splits["train"].expected["images"] == 277251
    assert lsd.splits["train"].expected["class_counts"]["SADNESS"] == 144631
    assert lsd.splits["val"].kind == "class_folders" and lsd.splits["val"].expected["images"] == 4670


def test_unknown_and_invalid_manifests_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="available: .*s-aff-wild2-mtl"):
        load_manifest("no-such-dataset")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "task": "lsd", "splits": {
        "train": {"class_folders": "a", "labelled_list": "b.csv"}}}))
    with pytest.raises(DatasetError, match="exactly one of"):
        load_manifest(bad)
    bad.write_text(yaml.safe_dump({"name": "bad", "task": "lsd", "splits": {
        "train": {"class_folders": "a", "expected": {"class_counts": {"CONTEMPT": 3}}}}}))
    with pytest.raises(DatasetError, match="CONTEMPT"):
        load_manifest(bad)


def _mtl_root(root: Path, n: int = 30) -> MTLAnnotations:
    rng = np.random.default_rng(0)
    images = [f"vid/{i + 1:05d}.jpg" for i in range(n)]
    (root / "cropped_aligned" / "vid").mkdir(parents=True)
    for image in images:
        (root / "cropped_aligned" / image).write_bytes(b"jpg")
    va = rng.uniform(-1, 1, (n, 2))
    va[:6] = -5
    expression = np.arange(n) % 8
    expression[:3] = -1
    ann = MTLAnnotations(images, va, expression, rng.integers(0, 2, (n, 12)))
    write_mtl_annotations(root / "train.txt", ann)
    write_mtl_annotations(root / "val.txt", ann.subset(np.arange(10)))
    return ann


def _mtl_manifest(path: Path, train_images: int) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "tiny-mtl", "task": "mtl", "images": "cropped_aligned", "tolerance": 0.1,
        "splits": {
            "train": {"annotations": "train.txt",
                      "expected": {"images": train_images, "va": 24, "expression_counts": {"Neutral": 4}}},
            "val": {"annotations": "val.txt"},
            "test": {"test_list": "test.txt", "required": False},
        },
    }))
    return path


def test_check_dataset_reports_counts_and_keeps_the_parsed_data(tmp_path, caplog):
    ann = _mtl_root(tmp_path / "data")
    manifest = _mtl_manifest(tmp_path / "tiny.yaml", train_images=30)
    with caplog.at_level(logging.WARNING):
        report = check_dataset(tmp_path / "data", manifest)
    assert isinstance(report, DatasetReport) and report.ok
    assert report.warnings == ["train: expression_counts.Neutral = 3, expected 4 (-25.0%)"]
    counts = report.counts("train")
    assert counts["images"] == 30 and counts["va"] == 24 and counts["expression"] == 27
    assert counts["expression_counts.Neutral"] == 4 - 1  # row 0 (class 0) is unlabeled
    assert report.data["train"].images == ann.images and len(report.data["val"]) == 10
    statuses = {(r.split, r.item): r.status for r in report.rows}
    assert statuses[("train", "images")] == "ok"
    assert statuses[("train", "expression_counts.Neutral")] == "far"  # 3 vs 4 is outside 10 %
    assert statuses[("test", "test_list: test.txt")] == "skipped"
    console = Console(record=True, width=160)
    console.print(report.to_table())
    text = console.export_text()
    assert "tiny-mtl" in text and "skipped" in text and "far" in text
    assert "expression_counts.Neutral" in caplog.text


def test_check_dataset_warns_on_counts_far_from_expected(tmp_path, caplog):
    _mtl_root(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        report = check_dataset(tmp_path / "data", _mtl_manifest(tmp_path / "m.yaml", train_images=300))
    assert report.ok
    assert any("images = 30, expected 300" in w for w in report.warnings)
    assert "expected 300" in caplog.text


def test_check_dataset_refuses_missing_files_and_images(tmp_path):
    _mtl_root(tmp_path / "data")
    manifest = _mtl_manifest(tmp_path / "m.yaml", train_images=30)
    (tmp_path / "data" / "val.txt").unlink()
    (tmp_path / "data" / "cropped_aligned" / "vid" / "00002.jpg").unlink()
    with pytest.raises(DatasetError) as info:
        check_dataset(tmp_path / "data", manifest)
    message = str(info.value)
    assert message.startswith("dataset tiny-mtl at")
    assert "val: annotations" in message and "val.txt is missing" in message
    assert "1 of 30 listed images are missing" in message and "vid/00002.jpg" in message
    assert info.value.report is not None and not info.value.report.ok
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset(tmp_path / "nowhere", manifest)


def test_check_lsd_folders_against_the_abaw4_manifest(tmp_path, caplog):
    root = tmp_path / "lsd"
    for split, folder in (("train", "training_set_synthetic_images"), ("val", "validation_set_real_images")):
        for name in labels.LSD_CLASSES:
            class_dir = root / folder / ("ANGRER" if name == "ANGER" else name)
            class_dir.mkdir(parents=True)
            for i in range(2 if split == "val" else 3):
                (class_dir / f"{i}.jpg").write_bytes(b"jpg")
    with caplog.at_level(logging.WARNING):
        report = check_dataset(root, "abaw4-lsd")
    assert report.ok
    assert report.counts("train")["images"] == 18 and report.counts("val")["images"] == 12
    assert report.counts("train")["class_counts.ANGER"] == 3
    assert len(report.data["val"]) == 12
    assert "expected 277,251" in caplog.text  # a tiny copy is far from the real release
