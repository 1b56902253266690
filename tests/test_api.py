"""The Python API (abaw_cli.predict_frames / read_table): the per-frame table as a pandas DataFrame
with the CLI table's columns, the default model, column groups, and bad input refused."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage import data

import abaw_cli
from abaw_cli import labels
from abaw_cli.data.formats import prediction_columns

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("api-photo") / "astronaut.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def test_a_video_gives_the_saved_tables_frame_with_typed_columns(tmp_path, demo_root, tiny_mtl_model):
    video = sorted((demo_root / "videos").glob("*.mp4"))[0]
    df = abaw_cli.predict_frames(video, model=tiny_mtl_model, device="cpu", min_face=40, out=tmp_path)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == prediction_columns("mtl")
    cap = cv2.VideoCapture(str(video))
    assert len(df) == int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) and (df["frame"] == np.arange(len(df))).all()
    cap.release()
    assert df["face"].dtype == "Int64" and df["AU12"].dtype == "Int64" and df["valence"].dtype == np.float64
    # The frame is the saved table, read back by the reader.
    pd.testing.assert_frame_equal(df, abaw_cli.read_table(tmp_path / f"{video.stem}.csv"))
    assert df.attrs["model"] == str(tiny_mtl_model) and df.attrs["model_origin"] == "--model"
    faces = df.abaw.faces
    assert len(faces) >= 0.95 * len(df)
    assert list(faces.abaw.expressions.columns) == [f"p_{e}" for e in labels.EXPRESSIONS]
    np.testing.assert_allclose(faces.abaw.expressions.sum(axis=1), 1.0, atol=1e-4)
    assert list(df.abaw.aus.columns) == list(labels.AUS) and df.abaw.au_probabilities.shape == (len(df), 12)
    assert list(df.abaw.prior.columns) == [f"prior_{e}" for e in labels.EXPRESSIONS]
    assert list(df.abaw.valence_arousal.columns) == ["valence", "arousal"] and df.abaw.boxes.shape[1] == 5
    no_face = df[df["face"] == 0]
    assert no_face["expression"].isna().all() and no_face["track"].isna().all()


def test_photos_with_the_default_model_and_a_frame_per_input(tmp_path, photo, tiny_mtl_model, monkeypatch):
    monkeypatch.setenv("ABAW_MODEL", str(tiny_mtl_model))
    mirrored = tmp_path / "mirrored.png"
    cv2.imwrite(str(mirrored), cv2.imread(str(photo))[:, ::-1])
    df = abaw_cli.predict_frames([photo, mirrored], device="cpu", min_face=60)
    assert list(df.columns) == prediction_columns("mtl") + ["image"]
    assert list(df["source"]) == ["astronaut", "mirrored"] and list(df["face"]) == [1, 1]
    assert df["time_s"].isna().all() and [Path(p).name for p in df["image"]] == ["astronaut.jpg", "mirrored.png"]
    assert df.attrs["model_origin"] == "$ABAW_MODEL"


def test_bad_input_raises_the_clis_exit_2_errors(tmp_path, demo_root, tiny_mtl_model, monkeypatch):
    monkeypatch.delenv("ABAW_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(abaw_cli.PredictInputError, match="ABAW_MODEL"):
        abaw_cli.predict_frames(tmp_path / "x.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video" * 200)
    with pytest.raises(abaw_cli.PredictInputError, match="broken.mp4"):
        abaw_cli.predict_frames(broken, model=tiny_mtl_model, device="cpu")
    with pytest.raises(abaw_cli.PredictInputError, match="ABAW lists"):
        abaw_cli.predict_frames(demo_root / "mtl" / "validation_set_annotations.txt", model=tiny_mtl_model)


def test_read_table_reads_parquet_with_pyarrow_or_says_it_needs_it(tmp_path):
    from abaw_cli.data.formats import PredictionTableWriter

    csv_path = tmp_path / "t.csv"
    with PredictionTableWriter(csv_path, prediction_columns("lsd")) as table:
        table.write_row({"source": "clip", "frame": 0, "time_s": 0.0, "face": 0})
        table.write_row({"source": "clip", "frame": 1, "time_s": 0.04, "track": 0, "face": 1, "expression": "FEAR", "p_FEAR": 0.7})
    df = abaw_cli.read_table(csv_path)
    assert list(df.columns) == prediction_columns("lsd") and list(df.abaw.expressions.columns)[0] == "p_ANGER"
    assert df["expression"].isna().tolist() == [True, False] and df["track"].isna().tolist() == [True, False]
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(abaw_cli.api.TableFormatError, match="pyarrow"):
            abaw_cli.read_table(tmp_path / "t.parquet")
        return
    df.to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(abaw_cli.read_table(tmp_path / "t.parquet"), df)
