"""ABAW file formats: round trips, and one refusal per kind of bad file (file, line and reason)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from abaw_cli import labels
from abaw_cli.atomic import atomic_open, atomic_path, atomic_write_text
from abaw_cli.data.formats import (
    FormatError,
    LSDSamples,
    MTLAnnotations,
    PredictionTableWriter,
    prediction_columns,
    prediction_image_key,
    prediction_table_task,
    read_lsd_labelled_list,
    read_lsd_submission,
    read_mtl_annotations,
    read_mtl_submission,
    read_prediction_table,
    read_test_list,
    scan_lsd_folders,
    write_lsd_submission,
    write_mtl_annotations,
    write_mtl_submission,
)

HEADER = ",".join(labels.MTL_ANNOTATION_HEADER)
GOOD_ROW = "vid/00001.jpg,0.5,-0.25,3,0,1,0,1,0,1,0,1,0,1,0,1"


def make_annotations(n: int = 40, seed: int = 0) -> MTLAnnotations:
    rng = np.random.default_rng(seed)
    va = np.round(rng.uniform(-1, 1, (n, 2)), 3)
    va[:5] = labels.MISSING_VA
    expression = rng.integers(-1, 8, n)
    aus = rng.integers(0, 2, (n, 12))
    aus[5:9] = labels.MISSING_AU
    images = [f"video{i // 20}/{i % 20 + 1:05d}.jpg" for i in range(n)]
    return MTLAnnotations(images, va, expression, aus)


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def refusal(path: Path, reader=read_mtl_annotations, **kwargs) -> FormatError:
    with pytest.raises(FormatError) as info:
        reader(path, **kwargs)
    return info.value


def assert_names(err: FormatError, path: Path, line: int | None, *words: str) -> None:
    assert err.path == path
    assert err.line == line
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(err).startswith(where), str(err)
    for word in words:
        assert word in err.reason, (word, err.reason)


# --- MTL annotations -------------------------------------------------------------------------


def test_expression_index_reads_mtl_and_lsd_names():
    assert labels.expression_index("Happiness") == labels.expression_index("HAPPINESS") == 4
    assert [labels.expression_index(c) for c in labels.LSD_CLASSES] == list(labels.LSD_TO_EXPRESSION.values())
    assert labels.LSD_TO_EXPRESSION == {0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 5: 6}
    with pytest.raises(ValueError, match="unknown expression"):
        labels.expression_index("Contempt")


def test_annotations_round_trip_keeps_values_and_missing_codes(tmp_path):
    ann = make_annotations()
    path = write_mtl_annotations(tmp_path / "train.txt", ann)
    back = read_mtl_annotations(path)
    assert back.images == ann.images
    assert back.valence_arousal.dtype == np.float32 and back.expression.dtype == np.int64
    np.testing.assert_array_equal(back.valence_arousal, ann.valence_arousal)
    np.testing.assert_array_equal(back.expression, ann.expression)
    np.testing.assert_array_equal(back.aus, ann.aus)
    assert len(back) == 40
    assert not back.has_va[:5].any() and back.has_va[5:].all()
    assert not back.has_aus[5:9].any() and back.has_aus[9:].all()
    np.testing.assert_array_equal(back.has_expression, ann.expression >= 0)
    assert path.read_text().splitlines()[0] == HEADER
    assert "-5" in path.read_text().splitlines()[1].split(",")[1]
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind


def test_a_single_negative_au_marks_the_row_missing():
    ann = make_annotations(12)
    ann.aus[10, 3] = -1
    assert not ann.has_aus[10] and ann.has_aus[11]
    counts = ann.label_counts()
    assert counts["au"] == int(ann.has_aus.sum())
    assert sum(counts["expression_counts"].values()) == counts["expression"]


def test_subset_by_mask_and_index():
    ann = make_annotations(10)
    sub = ann.subset([3, 1])
    assert sub.images == [ann.images[3], ann.images[1]]
    np.testing.assert_array_equal(sub.aus, ann.aus[[3, 1]])
    assert len(ann.subset(ann.has_expression)) == int(ann.has_expression.sum())


def test_images_exist_under_image_root(tmp_path):
    ann = make_annotations(6)
    for image in ann.images:
        (tmp_path / "crops" / image).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "crops" / image).write_bytes(b"jpg")
    path = write_mtl_annotations(tmp_path / "a.txt", ann)
    assert read_mtl_annotations(path, image_root=tmp_path / "crops").images == ann.images


def test_refuses_wrong_header(tmp_path):
    path = write_lines(tmp_path / "a.txt", HEADER.replace("AU4", "AU5"), GOOD_ROW)
    assert_names(refusal(path), path, 1, "wrong header", "AU5")


def test_refuses_wrong_column_count(tmp_path):
    path = write_lines(tmp_path / "a.txt", HEADER, GOOD_ROW, GOOD_ROW.replace("00001", "00002") + ",1")
    assert_names(refusal(path), path, 3, "column count", "expected 16", "found 17")


def test_refuses_non_numeric_field(tmp_path):
    path = write_lines(tmp_path / "a.txt", HEADER, GOOD_ROW, "vid/00002.jpg,0.1,abc,3,0,1,0,1,0,1,0,1,0,1,0,1")
    assert_names(refusal(path), path, 3, "non-numeric", "arousal", "'abc'")


def test_refuses_nan_as_non_numeric(tmp_path):
    path = write_lines(tmp_path / "a.txt", HEADER, "vid/00002.jpg,nan,0,3,0,1,0,1,0,1,0,1,0,1,0,1")
    assert_names(refusal(path), path, 2, "non-numeric", "valence")


def test_refuses_va_out_of_range(tmp_path):
    path = write_lines(tmp_path / "a.txt", HEADER, GOOD_ROW, "vid/00002.jpg,-5,-5,3,0,1,0,1,0,1,0,1,0,1,0,1",
                       "vid/00003.jpg,1.5,0,3,0,1,0,1,0,1,0,1,0,1,0,1")
    assert_names(refusal(path), path, 4, "valence = 1.5", "[-1, 1]")


def test_refuses_expression_out_of_range(tmp_path):
    path = write_lines(tmp_path / "a.txt", HEADER, "vid/00002.jpg,0,0,8,0,1,0,1,0,1,0,1,0,1,0,1")
    assert_names(refusal(path), path, 2, "expression = 8", "-1..7")


def test_refuses_fractional_expression(tmp_path):
    path = write_lines(tmp_path / "a.txt", HEADER, GOOD_ROW, "vid/00002.jpg,0,0,2.5,0,1,0,1,0,1,0,1,0,1,0,1")
    assert_names(refusal(path), path, 3, "expression = 2.5")


def test_refuses_au_out_of_range(tmp_path):
    path = write_lines(tmp_path / "a.txt", HEADER, "vid/00002.jpg,0,0,1,0,1,0,1,0,1,0,2,0,1,0,1")
    assert_names(refusal(path), path, 2, "AU15 = 2", "{-1, 0, 1}")


def test_refuses_duplicate_images(tmp_path):
    path = write_lines(tmp_path / "a.txt", HEADER, GOOD_ROW, GOOD_ROW.replace("00001", "00002"), GOOD_ROW)
    assert_names(refusal(path), path, 4, "duplicate image", "vid/00001.jpg", "line 2")


def test_refuses_missing_images_with_count_and_first_few(tmp_path):
    ann = make_annotations(10)
    (tmp_path / "crops" / "video0").mkdir(parents=True)
    for image in ann.images[:3]:
        (tmp_path / "crops" / image).write_bytes(b"jpg")
    path = write_mtl_annotations(tmp_path / "a.txt", ann)
    err = refusal(path, image_root=tmp_path / "crops")
    assert_names(err, path, 5, "7 of 10 listed images are missing", ann.images[3], ann.images[7], "...")
    assert ann.images[8] not in err.reason  # only the first few are named


def test_refuses_empty_line_and_empty_file(tmp_path):
    path = write_lines(tmp_path / "a.txt", HEADER, GOOD_ROW, "", GOOD_ROW.replace("00001", "00002"))
    assert_names(refusal(path), path, 3, "empty line")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_names(refusal(empty), empty, 1, "empty")
    assert_names(refusal(tmp_path / "absent.txt"), tmp_path / "absent.txt", None, "not found")


def test_crlf_and_trailing_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes((HEADER + "\r\n" + GOOD_ROW + "\r\n\r\n").encode())
    ann = read_mtl_annotations(path)
    assert ann.images == ["vid/00001.jpg"] and ann.expression[0] == 3


# --- submissions and test lists ----------------------------------------------------------------


def test_mtl_submission_round_trip(tmp_path):
    ann = make_annotations(8)
    rng = np.random.default_rng(1)
    va = rng.uniform(-1.2, 1.2, (8, 2)).astype(np.float32)
    expr = rng.integers(0, 8, 8)
    path = write_mtl_submission(tmp_path / "sub.txt", ann.images, va, expr, rng.integers(0, 2, (8, 12)))
    lines = path.read_text().splitlines()
    assert lines[0] == "image,valence,arousal,expression,aus"
    assert len(lines[1].split(",")) == 16
    back = read_mtl_submission(path)
    assert back.images == ann.images
    np.testing.assert_array_equal(back.valence_arousal, np.clip(va, -1, 1))
    np.testing.assert_array_equal(back.expression, expr)


def test_mtl_submission_refuses_missing_codes(tmp_path):
    path = write_lines(tmp_path / "sub.txt", "image,valence,arousal,expression,aus",
                       "vid/00001.jpg,0.1,0.2,3,0,1,0,1,0,1,0,1,0,1,0,-1")
    assert_names(refusal(path, read_mtl_submission), path, 2, "AU26 = -1", "{0, 1}")
    path = write_lines(tmp_path / "sub2.txt", "image,valence,arousal,expression,aus",
                       "vid/00001.jpg,-5,0.2,3,0,1,0,1,0,1,0,1,0,1,0,1")
    assert_names(refusal(path, read_mtl_submission), path, 2, "valence = -5")


def test_lsd_submission_round_trip_and_refusal(tmp_path):
    images = [f"{i:06d}.jpg" for i in range(7)]
    classes = np.arange(7) % 6
    path = write_lsd_submission(tmp_path / "lsd.txt", images, classes)
    back_images, back_classes = read_lsd_submission(path)
    assert back_images == images and back_classes.dtype == np.int64
    np.testing.assert_array_equal(back_classes, classes)
    bad = write_lines(tmp_path / "bad.txt", "image,expression", "a.jpg,1", "b.jpg,6")
    assert_names(refusal(bad, read_lsd_submission), bad, 3, "expression = 6", "0..5")
    named = write_lines(tmp_path / "named.txt", "image,expression", "a.jpg,FEAR")
    assert_names(refusal(named, read_lsd_submission), named, 2, "'FEAR'", "class index")


def test_test_lists_of_both_challenges(tmp_path):
    mtl = write_lines(tmp_path / "MTL_Challenge_test_set_release.txt",
                      "image,valence,arousal,expression,aus", "v1/00001.jpg", "v1/00002.jpg,,,,")
    assert read_test_list(mtl) == ["v1/00001.jpg", "v1/00002.jpg"]
    lsd = write_lines(tmp_path / "LSD_Challenge_test_set_release.txt", "image,expression", "000001.jpg,", "000002.jpg,")
    assert read_test_list(lsd) == ["000001.jpg", "000002.jpg"]
    bare = write_lines(tmp_path / "bare.txt", "a/1.jpg", "a/2.jpg", "a/1.jpg")
    assert_names(refusal(bare, read_test_list), bare, 3, "duplicate image")


# --- LSD folders and lists ---------------------------------------------------------------------


def make_lsd_tree(root: Path, per_class: int = 2, anger_folder: str = "ANGRER") -> Path:
    for name in labels.LSD_CLASSES:
        folder = root / (anger_folder if name == "ANGER" else name)
        folder.mkdir(parents=True)
        for i in range(per_class):
            (folder / f"{name.lower()}_{i}.{'png' if i % 2 else 'jpg'}").write_bytes(b"img")
        (folder / "notes.txt").write_text("not an image")
    return root


def test_scan_lsd_folders_accepts_aliases_and_image_types(tmp_path):
    samples = scan_lsd_folders(make_lsd_tree(tmp_path / "val", per_class=3))
    assert isinstance(samples, LSDSamples) and len(samples) == 18
    assert samples.class_counts() == {name: 3 for name in labels.LSD_CLASSES}
    assert samples.labels.dtype == np.int64
    assert samples.relative_keys()[0] == "ANGRER/anger_0.jpg"
    assert samples.paths[0] == tmp_path / "val" / "ANGRER" / "anger_0.jpg"


def test_lsd_keys_do_not_depend_on_a_relative_root(tmp_path, monkeypatch):
    make_lsd_tree(tmp_path / "data" / "val")
    monkeypatch.chdir(tmp_path)
    samples = scan_lsd_folders("data/val")
    assert samples.relative_keys()[:2] == ["ANGRER/anger_0.jpg", "ANGRER/anger_1.png"]
    assert all(p.is_file() for p in samples.paths)
    assert all(p.suffix in (".jpg", ".png") for p in samples.paths)


def test_scan_lsd_folders_refuses_unknown_and_missing_classes(tmp_path):
    root = make_lsd_tree(tmp_path / "a")
    (root / "CONTEMPT").mkdir()
    err = refusal(root, scan_lsd_folders)
    assert "CONTEMPT" in str(err) and "unknown LSD class folder" in err.reason
    root = make_lsd_tree(tmp_path / "b")
    for f in (root / "FEAR").iterdir():
        f.unlink()
    (root / "FEAR").rmdir()
    assert_names(refusal(root, scan_lsd_folders), root, None, "missing LSD class folder", "FEAR")


def test_labelled_lsd_list_takes_indices_and_names(tmp_path):
    path = write_lines(tmp_path / "list.csv", "image,expression", "x/a.jpg,0", "x/b.jpg,SADNESS", "x/c.jpg,angrer")
    samples = read_lsd_labelled_list(path)
    np.testing.assert_array_equal(samples.labels, [0, 4, 0])
    assert samples.relative_keys() == ["x/a.jpg", "x/b.jpg", "x/c.jpg"]
    assert samples.paths[0] == tmp_path / "x" / "a.jpg"  # openable: relative to the list's folder
    bad = write_lines(tmp_path / "bad.csv", "image,expression", "x/a.jpg,CONTEMPT")
    assert_names(refusal(bad, read_lsd_labelled_list), bad, 2, "'CONTEMPT'")


# --- prediction table --------------------------------------------------------------------------


def test_prediction_columns():
    mtl = prediction_columns("mtl")
    assert mtl[:10] == ["source", "frame", "time_s", "track", "face", "x1", "y1", "x2", "y2", "det_score"]
    assert {"valence", "arousal", "expression", "p_Neutral", "p_AU26", "AU26"} <= set(mtl)
    assert len(mtl) == 10 + 3 + 8 + 12 + 12 + 1 + 8  # ... + prior_expression, prior_<Expression> x8
    assert mtl[-9:] == ["prior_expression", *(f"prior_{e}" for e in labels.EXPRESSIONS)]
    lsd = prediction_columns("lsd")
    assert lsd[10:] == ["expression", *(f"p_{c}" for c in labels.LSD_CLASSES)]
    assert prediction_table_task(mtl) == "mtl" and prediction_table_task(lsd) == "lsd"
    assert prediction_image_key("12-24-1920x1080", 7.0) == "12-24-1920x1080/00007.jpg"
    with pytest.raises(ValueError):
        prediction_columns("va")


def test_prediction_table_round_trip(tmp_path):
    path = tmp_path / "pred.csv"
    with PredictionTableWriter(path, prediction_columns("lsd")) as table:
        table.write_row({"source": "clip", "frame": 0, "time_s": 0.0, "face": 0})
        table.write_row({"source": "clip", "frame": 1, "time_s": 1 / 30, "track": 0, "face": 1,
                         "x1": 10.5, "y1": 20, "x2": 50, "y2": 60, "det_score": np.float32(0.99),
                         "expression": "FEAR", "p_FEAR": 0.7, "p_ANGER": 0.3})
        assert not path.exists()  # only the temp file exists while writing
    back = read_prediction_table(path)
    assert list(back) == prediction_columns("lsd")
    assert back["source"].tolist() == ["clip", "clip"]
    np.testing.assert_array_equal(back["frame"], [0, 1])
    assert np.isnan(back["x1"][0]) and back["x1"][1] == 10.5
    assert back["expression"].tolist() == ["", "FEAR"]
    assert back["time_s"][1] == pytest.approx(1 / 30, rel=1e-5)
    assert back["det_score"][1] == pytest.approx(0.99, rel=1e-6)


def test_prediction_writer_leaves_nothing_on_error_and_refuses_unknown_columns(tmp_path):
    path = tmp_path / "pred.csv"
    with pytest.raises(KeyError):
        with PredictionTableWriter(path, prediction_columns("mtl")) as table:
            table.write_row({"source": "a", "frame": 1, "valence_typo": 0.3})
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_prediction_table_refusals(tmp_path):
    header = ",".join(prediction_columns("lsd"))
    blanks = "," * (len(prediction_columns("lsd")) - 3)
    bad = write_lines(tmp_path / "p.csv", header, f"clip,1,abc{blanks}")
    assert_names(refusal(bad, read_prediction_table), bad, 2, "non-numeric time_s", "'abc'")
    short = write_lines(tmp_path / "s.csv", header, "clip,1")
    assert_names(refusal(short, read_prediction_table), short, 2, "column count")
    other = write_lines(tmp_path / "o.csv", "image,valence", "a.jpg,0.1")
    assert_names(refusal(other, read_prediction_table), other, 1, "not a prediction table")
    parquet = tmp_path / "p.parquet"
    parquet.write_bytes(b"PAR1")
    assert_names(refusal(parquet, read_prediction_table), parquet, None, "Parquet", "CSV")


def test_atomic_write_text_replaces_whole_file(tmp_path):
    path = tmp_path / "out" / "x.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as fh:
            fh.write("half")
            raise RuntimeError("writer died")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
    # A writer that needs a file name with the target's container suffix (OpenCV video).
    with atomic_path(tmp_path / "v.mp4", suffix=".mp4") as tmp:
        assert tmp.name.endswith(".mp4") and tmp.name.startswith(".") and tmp.parent == tmp_path
        tmp.write_bytes(b"video")
    assert (tmp_path / "v.mp4").read_bytes() == b"video"
    # Default temporary names do not end in the target's suffix: a `*.json` glob sees finished files only.
    with atomic_path(path) as tmp:
        tmp.write_text("new")
        assert not tmp.name.endswith(".json")
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["x.json"]
