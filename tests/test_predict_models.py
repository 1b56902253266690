"""Which model `abaw predict` uses and what it says about it: the default model ($ABAW_MODEL, then
make pipeline's), the prior's own reading of a real face, a --cnn none model, and the one warning
a demo-trained model gives on real faces."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data
from typer.testing import CliRunner

from abaw_cli import labels
from abaw_cli.cli import app
from abaw_cli.data.formats import read_prediction_table
from abaw_cli.train.checkpoint import make_checkpoint, save_atomic

runner = CliRunner()


def _predict(*args, env: dict[str, str] | None = None):
    environment = {"ABAW_MODEL": "", **(env or {})}  # the tester's own $ABAW_MODEL must not leak in
    return runner.invoke(app, ["predict", *map(str, args), "--device", "cpu"], env=environment, catch_exceptions=False)


def _flat(output: str) -> str:
    return " ".join(output.split())  # rich wraps long lines


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Two real face photos outside any demo tree: the (smiling) astronaut and its mirror image."""
    folder = tmp_path_factory.mktemp("photos")
    face = data.astronaut()
    paths = [folder / "astronaut.jpg", folder / "mirrored.jpg"]
    for path, rgb in zip(paths, (face, face[:, ::-1])):
        cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    return paths


def _train_tiny(demo_root: Path, out: Path, **model) -> Path:
    """best.pt of a 2-step test-tiny train-mtl run on the tiny demo set, with model overrides."""
    from abaw_cli.train.mtl import train_mtl

    overrides = {"data.root": str(demo_root / "mtl"), "optim.max_steps": 2, "optim.epochs": 1}
    overrides.update({f"model.{k}": v for k, v in model.items()})
    return train_mtl(out, "test-tiny", overrides=overrides).best_checkpoint


@pytest.fixture(scope="module")
def no_prior_model(demo_root, tmp_path_factory) -> Path:
    """A model trained with --cnn none."""
    return _train_tiny(demo_root, tmp_path_factory.mktemp("no-prior"), prior="none")


@pytest.fixture(scope="module")
def model_64(demo_root, tmp_path_factory) -> Path:
    """test-tiny at 64 px input: the prior sees the model's input, and the fer prior, which reads
    64 px faces, cannot read test-tiny's usual 32 px (the astronaut's smile is 'angry' 0.31 there,
    'happy' 1.00 at 64 and at 112 px)."""
    return _train_tiny(demo_root, tmp_path_factory.mktemp("tiny-64"), input_size=64)


def test_checkpoints_record_the_dataset_they_learned_from(tiny_mtl_model):
    assert torch.load(tiny_mtl_model, weights_only=True)["meta"]["dataset"] == "demo-mtl"


def test_without_model_and_without_defaults_exits_2_saying_where_models_come_from(tmp_path, photos, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _predict(photos[0], "--out", tmp_path / "t.csv")
    assert result.exit_code == 2, result.output
    text = _flat(result.output)
    for needed in ("$ABAW_MODEL", "runs/pipeline/train-mtl/best.pt", "make pipeline", "abaw train-mtl"):
        assert needed in text, text
    missing = tmp_path / "nowhere.pt"
    result = _predict(photos[0], "--out", tmp_path / "t.csv", env={"ABAW_MODEL": str(missing)})
    assert result.exit_code == 2 and "$ABAW_MODEL" in _flat(result.output) and "nowhere.pt" in _flat(result.output)
    # $ABAW_MODEL naming a checkpoint of another kind is refused as --model is.
    mae = tmp_path / "mae.pt"
    save_atomic(make_checkpoint("mae", {}, {}, meta={"input_size": 32}), mae)
    result = _predict(photos[0], "--out", tmp_path / "t.csv", env={"ABAW_MODEL": str(mae)})
    assert result.exit_code == 2 and "mae.pt" in _flat(result.output) and "'mae' checkpoint" in _flat(result.output)
    assert not (tmp_path / "t.csv").exists()


def test_abaw_model_then_the_pipeline_model_are_the_defaults_and_are_named(tmp_path, photos, tiny_mtl_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline_model = tmp_path / "runs" / "pipeline" / "train-mtl" / "best.pt"
    pipeline_model.parent.mkdir(parents=True)
    shutil.copy(tiny_mtl_model, pipeline_model)
    result = _predict(photos[0], "--out", tmp_path / "pipeline.csv", "--min-face", "60")
    assert result.exit_code == 0, result.output
    assert "runs/pipeline/train-mtl/best.pt (make pipeline's model)" in _flat(result.output)
    # $ABAW_MODEL comes before the pipeline's model.
    result = _predict(photos[0], "--out", tmp_path / "env.csv", "--min-face", "60", env={"ABAW_MODEL": str(tiny_mtl_model)})
    assert result.exit_code == 0, result.output
    assert f"{tiny_mtl_model} ($ABAW_MODEL)" in _flat(result.output)


def test_the_prior_reads_a_smile_on_a_real_face_and_a_demo_model_warns_once(tmp_path, photos, model_64):
    """The model's heads learned 2 steps of rendered faces; its frozen fer prior learned FER2013's
    real faces and reads the astronaut's smile. Two real photos: one warning, not one per photo."""
    result = _predict(*photos, "--model", model_64, "--out", tmp_path / "preds", "--min-face", "60")
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert text.count("trained on the demo data (demo-mtl)") == 1, text
    assert "expression and AU heads learned from rendered demo faces" in text and "prior_expression" in text
    for photo in photos:
        table = read_prediction_table(tmp_path / "preds" / f"{photo.stem}.csv")
        assert list(table["face"]) == [1]
        assert table["prior_expression"][0] == "Happiness"
        assert table["prior_Happiness"][0] > 0.5 and np.isnan(table["prior_Other"][0])


def test_a_model_without_prior_leaves_the_prior_columns_empty_and_refuses_a_prior_overlay(tmp_path, photos, no_prior_model, demo_root):
    result = _predict(photos[0], "--model", no_prior_model, "--out", tmp_path / "t.csv", "--min-face", "60")
    assert result.exit_code == 0, result.output
    table = read_prediction_table(tmp_path / "t.csv")
    assert table["face"][0] == 1 and np.isfinite(table["valence"][0])
    assert table["prior_expression"][0] == ""
    assert all(np.isnan(table[f"prior_{e}"][0]) for e in labels.EXPRESSIONS)
    video = sorted((demo_root / "videos").glob("*.mp4"))[0]
    result = _predict(video, "--model", no_prior_model, "--out", tmp_path / "v.csv", "--overlay", tmp_path / "o.mp4", "--overlay-label", "prior")
    assert result.exit_code == 2 and "--cnn none" in _flat(result.output)
    assert not (tmp_path / "v.csv").exists()
