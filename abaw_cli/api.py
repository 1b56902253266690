"""The Python API, for notebooks: per-frame predictions as a pandas DataFrame.

    import abaw_cli

    df = abaw_cli.predict_frames("clip.mp4")          # model: $ABAW_MODEL, else runs/pipeline/train-mtl/best.pt
    df = abaw_cli.predict_frames(["a.jpg", "b.jpg"], model="runs/emma/best.pt", faces="all")
    df = abaw_cli.read_table("predictions/clip.csv")  # a table `abaw predict` wrote (.parquet with pyarrow)

The DataFrame has the columns of `abaw predict`'s table (data.formats.prediction_columns; `image`
for photos), one row per face per frame and a `face == 0` row for a frame without a face. Column
groups, as py-feat's detector output has them, through the `.abaw` accessor:

    df.abaw.faces              rows with a face
    df.abaw.boxes              x1 y1 x2 y2 det_score
    df.abaw.valence_arousal    valence arousal                      (EMMA)
    df.abaw.expressions        p_Neutral ... p_Other, or p_ANGER ... p_SURPRISE (cotrain)
    df.abaw.aus                AU1 ... AU26 decisions (0/1)          (EMMA)
    df.abaw.au_probabilities   p_AU1 ... p_AU26                      (EMMA)
    df.abaw.prior              prior_Neutral ... prior_Other: EMMA's frozen prior on its own

`predict_frames` runs exactly `abaw predict` (predict.run.run_predict) into a temporary folder (or `out`)
and reads the tables back with `read_table`, so the frame is what the saved table holds. Bad
input raises PredictInputError (the CLI's exit code 2). `df.attrs` names the model used.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from abaw_cli import labels
from abaw_cli.data.formats import PREDICTION_TEXT_COLUMNS, PRIOR_COLUMNS, read_prediction_table
from abaw_cli.predict.lists import is_image_set
from abaw_cli.predict.run import PredictInputError, PredictRequest, run_predict
from abaw_cli.predict.tables import TableFormatError, table_format_for

log = logging.getLogger(__name__)

__all__ = ["PredictInputError", "TableFormatError", "predict_frames", "read_table"]

PathLike = str | os.PathLike
# Whole numbers in the table; nullable, since a frame without a face leaves track and AUs empty.
INTEGER_COLUMNS: tuple[str, ...] = ("frame", "track", "face", *labels.AUS)


def predict_frames(
    inputs: PathLike | Sequence[PathLike],
    model: PathLike | None = None,
    *,
    faces: str = "largest",
    detect_every: int = 1,
    smooth: float = 0.0,
    min_face: int = 20,
    batch: int | None = None,
    device: str = "auto",
    out: PathLike | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Predict videos, photos or folders of them; the per-frame table of all of them as one
    DataFrame (in input order; the `source` column says which input a row is from).

    model: a train-mtl or cotrain best.pt; None = $ABAW_MODEL, else runs/pipeline/train-mtl/best.pt
    under the current folder. faces, detect_every, smooth (seconds), min_face, batch, device: as
    `abaw predict`'s options. out: a folder to keep the CSV tables in (default: none kept).
    ABAW lists (submission files) are `abaw predict`'s job, not this function's."""
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    lists = [str(p) for p in paths if is_image_set(p)]
    if lists:
        raise PredictInputError(f"{', '.join(lists)}: ABAW lists give submission files; use `abaw predict` for them")
    with tempfile.TemporaryDirectory(prefix="abaw-predict-") as tmp:
        request = PredictRequest(
            inputs=[str(p) for p in paths], model=Path(model) if model is not None else None,
            out=Path(out) if out is not None else Path(tmp), faces=faces, detect_every=detect_every,
            smooth_s=smooth, min_face=min_face, batch=batch, device=device, show_progress=progress,
        )
        report = run_predict(request)
        for warning in report.warnings:
            log.warning("%s", warning)
        frames = [read_table(source.written[0]) for source in report.sources]
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    table.attrs.update(model=str(report.model), model_origin=report.model_origin, kind=report.kind)
    return table


def read_table(path: PathLike) -> pd.DataFrame:
    """A per-frame table that `abaw predict` wrote: CSV (checked by data.formats'
    read_prediction_table: file, line and reason on a malformed one), or Parquet (needs pyarrow).
    Whole-number columns are nullable integers, empty text cells missing values."""
    path = Path(path)
    if table_format_for(path) == "parquet":  # raises TableFormatError without pyarrow
        table = pd.read_parquet(path)
    else:
        table = pd.DataFrame(read_prediction_table(path))
    for column in INTEGER_COLUMNS:
        if column in table:
            table[column] = table[column].astype("Int64")
    for column in PREDICTION_TEXT_COLUMNS:
        if column in table:
            table[column] = table[column].mask(table[column] == "")
    return table


@pd.api.extensions.register_dataframe_accessor("abaw")
class PredictionColumns:
    """Column groups of a prediction table (`df.abaw.expressions`, ...); see the module docstring."""

    def __init__(self, table: pd.DataFrame) -> None:
        self._table = table

    def _columns(self, names) -> pd.DataFrame:
        return self._table[[c for c in names if c in self._table]]

    @property
    def faces(self) -> pd.DataFrame:
        return self._table[self._table["face"] == 1]

    @property
    def boxes(self) -> pd.DataFrame:
        return self._columns(("x1", "y1", "x2", "y2", "det_score"))

    @property
    def valence_arousal(self) -> pd.DataFrame:
        return self._columns(("valence", "arousal"))

    @property
    def expressions(self) -> pd.DataFrame:
        names = labels.EXPRESSIONS if "valence" in self._table else labels.LSD_CLASSES
        return self._columns(f"p_{n}" for n in names)

    @property
    def aus(self) -> pd.DataFrame:
        return self._columns(labels.AUS)

    @property
    def au_probabilities(self) -> pd.DataFrame:
        return self._columns(f"p_{a}" for a in labels.AUS)

    @property
    def prior(self) -> pd.DataFrame:
        return self._columns(PRIOR_COLUMNS[1:])

