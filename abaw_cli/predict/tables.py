"""Per-frame prediction tables: CSV (formats.PredictionTableWriter) or Parquet (pyarrow, optional).

Both writers stream rows to a temporary file and rename it on a clean close, so memory stays flat
and a crash leaves no half-written table. The rows are built from FramePredictions here, in one
place: every frame gives at least one row (`face=0` and empty model columns when no face).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from abaw_cli.atomic import AtomicWriter, PendingFile
from abaw_cli.data.formats import PREDICTION_TEXT_COLUMNS, PredictionTableWriter, prediction_columns
from abaw_cli.labels import EXPRESSIONS, LSD_CLASSES
from abaw_cli.predict.heads import OutputSpace
from abaw_cli.predict.records import FramePrediction

TABLE_FORMATS = ("csv", "parquet")


class TableFormatError(ValueError):
    """A table format that cannot be written here (e.g. Parquet without pyarrow)."""


def table_format_for(path: Path, requested: str | None = None) -> str:
    """csv or parquet: --format wins, else the file suffix, else csv."""
    fmt = (requested or ("parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv")).lower()
    if fmt not in TABLE_FORMATS:
        raise TableFormatError(f"--format must be one of {', '.join(TABLE_FORMATS)} (got {fmt!r})")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise TableFormatError(
                "Parquet output needs pyarrow, which is not installed: `pip install pyarrow`, or write CSV"
            ) from exc
    return fmt


class ParquetTableWriter(AtomicWriter):
    """The PredictionTableWriter interface, writing Parquet row groups of `group_rows` rows."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], group_rows: int = 4096) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.path = Path(path)
        self.columns = list(columns)
        self._known = set(self.columns)
        self._schema = pa.schema(
            [(c, pa.string() if c in PREDICTION_TEXT_COLUMNS else pa.float64()) for c in self.columns]
        )
        self._file = PendingFile(self.path)
        self._writer = pq.ParquetWriter(str(self._file.tmp), self._schema)
        self._group_rows = group_rows
        self._pending: list[dict[str, Any]] = []
        self.rows_written = 0

    def write_row(self, row: dict[str, Any]) -> None:
        unknown = set(row) - self._known
        if unknown:
            raise KeyError(f"{self.path}: unknown column(s) {sorted(unknown)}")
        self._pending.append(row)
        self.rows_written += 1
        if len(self._pending) >= self._group_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        arrays = []
        for c in self.columns:
            cells = [r.get(c) for r in self._pending]
            if c in PREDICTION_TEXT_COLUMNS:
                arrays.append(self._pa.array([None if v is None else str(v) for v in cells], self._pa.string()))
            else:
                arrays.append(self._pa.array([np.nan if v is None else float(v) for v in cells], self._pa.float64()))
        self._writer.write_table(self._pa.Table.from_arrays(arrays, schema=self._schema))
        self._pending = []

    def close(self) -> Path:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None
            self._file.commit()
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._file.abort()



def table_columns(space: OutputSpace, with_image: bool = False) -> list[str]:
    """The prediction-table columns for this model (formats.prediction_columns), plus `image`
    (the file of each row) for folders of photos."""
    return prediction_columns(space.table_task) + (["image"] if with_image else [])


def open_table(path: Path, space: OutputSpace, fmt: str = "csv", with_image: bool = False):
    columns = table_columns(space, with_image)
    if fmt == "parquet":
        return ParquetTableWriter(path, columns)
    return PredictionTableWriter(path, columns)


def frame_rows(source: str, prediction: FramePrediction, space: OutputSpace, image: str | None = None) -> list[dict[str, Any]]:
    """The table rows of one frame: one per face, or one `face=0` row without predictions."""
    base: dict[str, Any] = {"source": source, "frame": prediction.frame, "time_s": prediction.time_s}
    if image is not None:
        base["image"] = image
    if not prediction.faces:
        return [{**base, "face": 0}]
    rows = []
    for face in prediction.faces:
        v = face.values
        x1, y1, x2, y2 = (float(c) for c in face.box)
        row = {**base, "track": face.track, "face": 1, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "det_score": face.score}
        probs = v[space.class_slice]
        k = int(np.argmax(probs))
        if space.kind == "mtl":
            # EMMA's VA head is linear (as the paper's); the table reports the ABAW range.
            row["valence"], row["arousal"] = (float(np.clip(x, -1.0, 1.0)) for x in v[:2])
            row["expression"] = space.classes[k]
            row.update({f"p_{name}": float(p) for name, p in zip(space.classes, probs)})
            row.update({f"p_{name}": float(p) for name, p in zip(space.aus, v[space.au_slice])})
            row.update({name: int(on) for name, on in zip(space.aus, space.au_decisions(v))})
            row.update(prior_cells(v, space))
        else:
            # LSD tables name the classes canonically (an ANGRER folder is still ANGER).
            scores = space.lsd_scores(v)
            row["expression"] = LSD_CLASSES[int(np.argmax(scores))]
            row.update({f"p_{name}": float(p) for name, p in zip(LSD_CLASSES, scores)})
        rows.append(row)
    return rows


def prior_cells(values: np.ndarray, space: OutputSpace) -> dict[str, Any]:
    """prior_expression and the prior_<Expression> probabilities of one face; none where the
    prior has no reading (such cells stay empty)."""
    k = int(space.prior_index(values))
    if k < 0:
        return {}
    probs = values[space.prior_slice]
    cells: dict[str, Any] = {"prior_expression": EXPRESSIONS[k]}
    cells.update({f"prior_{name}": float(p) for name, p in zip(EXPRESSIONS, probs) if np.isfinite(p)})
    return cells
