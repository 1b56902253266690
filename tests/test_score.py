"""`abaw score` end to end on files the test writes, checked against an independent computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from sklearn.metrics import f1_score
from typer.testing import CliRunner

from abaw_cli import labels
from abaw_cli.data.formats import (
    MTLAnnotations,
    PredictionTableWriter,
    prediction_columns,
    write_lsd_submission,
    write_lsd_test_release,
    write_mtl_annotations,
    write_mtl_submission,
)
from abaw_cli.stages import score as score_stage

runner = CliRunner()

# The score subcommand on an app of its own, so these tests do not depend on other stages importing
# cleanly; test_score_is_listed_with_help_and_examples checks the real `abaw` app.
app = typer.Typer()
score_stage.register(app)


@app.callback()
def _root() -> None:
    """Keeps `score` a subcommand, as in `abaw`."""


def independent_p_mtl(pred_va, pred_expr, pred_aus, va, expr, aus) -> float:
    """P_MTL straight from method.md, sharing no code with abaw_cli.metrics."""

    def concordance(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        cov = ((x - x.mean()) * (y - y.mean())).mean()
        return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)

    has_v, has_a = va[:, 0] != -5, va[:, 1] != -5
    ccc_v = concordance(pred_va[has_v, 0], va[has_v, 0])
    ccc_a = concordance(pred_va[has_a, 1], va[has_a, 1])
    has_e = expr >= 0
    f1_expr = f1_score(expr[has_e], pred_expr[has_e], labels=list(range(8)), average="macro", zero_division=0)
    has_au = (aus >= 0).all(axis=1)
    f1_au = np.mean([f1_score(aus[has_au, j], pred_aus[has_au, j], zero_division=0) for j in range(12)])
    return (ccc_v + ccc_a) / 2 + f1_expr + f1_au


def make_mtl(tmp_path: Path, n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [f"vid{i // 40}/{i % 40 + 1:05d}.jpg" for i in range(n)]
    va = np.round(rng.uniform(-1, 1, (n, 2)), 3)
    va[:10] = -5
    va[10:20, 1] = -5
    expr = np.concatenate([np.arange(8), rng.integers(-1, 8, n - 8)])
    aus = rng.integers(0, 2, (n, 12))
    aus[20:30, 4] = -1
    truth = write_mtl_annotations(tmp_path / "validation_set_annotations.txt", MTLAnnotations(images, va, expr, aus))
    pred_va = np.round(np.clip(va + rng.normal(0, 0.4, (n, 2)), -1, 1), 3)
    pred_va[va == -5] = np.round(rng.uniform(-1, 1, int((va == -5).sum())), 3)
    pred_expr = np.where(rng.random(n) < 0.5, np.maximum(expr, 0), rng.integers(0, 8, n))
    pred_aus = np.where(rng.random((n, 12)) < 0.7, np.maximum(aus, 0), 1 - np.maximum(aus, 0))
    expected = independent_p_mtl(pred_va, pred_expr, pred_aus, va, expr, aus)
    return truth, images, (pred_va, pred_expr, pred_aus), expected


def test_score_mtl_submission_matches_independent_p_mtl(tmp_path):
    truth, images, (pred_va, pred_expr, pred_aus), expected = make_mtl(tmp_path)
    order = np.random.default_rng(1).permutation(len(images))  # a submission may list any order
    extra = ["other/00001.jpg"]  # predictions outside the truth are ignored
    sub = write_mtl_submission(
        tmp_path / "val.submission.txt", [images[i] for i in order] + extra,
        np.vstack([pred_va[order], [[0.0, 0.0]]]), np.append(pred_expr[order], 0),
        np.vstack([pred_aus[order], np.zeros((1, 12), int)]),
    )
    result = runner.invoke(app, ["score", str(sub), "--truth", str(truth)])
    assert result.exit_code == 0, result.output
    assert "P_MTL" in result.stdout and "CCC valence" in result.stdout and "AU26" in result.stdout
    report = json.loads((tmp_path / "val.submission.scores.json").read_text())
    assert abs(report["scores"]["p_mtl"] - expected) < 1e-6
    assert report["task"] == "mtl" and report["prediction_kind"] == "submission"
    assert report["coverage"]["coverage"] == 1.0 and report["coverage"]["extra_predictions"] == 1
    assert report["scores"]["n_valence"] == 110 and report["scores"]["n_arousal"] == 100
    counts = np.array(report["confusion_matrix"]["counts"])
    assert counts.shape == (8, 8) and counts.sum() == report["scores"]["n_expression"]
    png = tmp_path / report["confusion_png"]
    assert png.name == "val.submission.scores.confusion.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_prediction_table_uses_face_rows_and_source_frame_keys(tmp_path):
    truth, images, (pred_va, pred_expr, pred_aus), expected = make_mtl(tmp_path, seed=2)
    table = tmp_path / "predictions.csv"
    with PredictionTableWriter(table, prediction_columns("mtl")) as out:
        for i, image in enumerate(images):
            source, frame = image.split("/")
            base = {"source": source, "frame": int(frame[:5]), "time_s": i / 30, "face": 1, "track": 0,
                    "x1": 0, "y1": 0, "x2": 10, "y2": 10}
            row = base | {"det_score": 0.9, "valence": pred_va[i, 0], "arousal": pred_va[i, 1],
                          "expression": labels.EXPRESSIONS[pred_expr[i]]}
            row |= {au: int(pred_aus[i, j]) for j, au in enumerate(labels.AUS)}
            out.write_row(row)
            if i % 10 == 0:  # a second, less confident face in the same frame must not count
                out.write_row(base | {"track": 1, "det_score": 0.5, "valence": -1.0, "arousal": 1.0,
                                      "expression": "Other"} | {au: 1 for au in labels.AUS})
        out.write_row({"source": "vid0", "frame": 999, "face": 0})  # a frame without a face
    json_path = tmp_path / "scores" / "mine.json"
    result = runner.invoke(app, ["score", str(table), "--truth", str(truth), "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(json_path.read_text())
    assert report["prediction_kind"] == "prediction_table"
    assert abs(report["scores"]["p_mtl"] - expected) < 1e-6
    assert (json_path.parent / "mine.confusion.png").is_file()


def test_score_prediction_table_with_au_probabilities_adds_truth_tuned_figures(tmp_path):
    truth, images, (pred_va, pred_expr, pred_aus), expected = make_mtl(tmp_path, seed=4)
    rng = np.random.default_rng(4)
    # Probabilities whose 0.5 decisions are the table's AU columns; other thresholds can do better.
    probs = np.where(pred_aus == 1, rng.uniform(0.5, 1.0, pred_aus.shape), rng.uniform(0.0, 0.5, pred_aus.shape))
    table = tmp_path / "predictions.csv"
    with PredictionTableWriter(table, prediction_columns("mtl")) as out:
        for i, image in enumerate(images):
            source, frame = image.split("/")
            row = {"source": source, "frame": int(frame[:5]), "face": 1, "det_score": 0.9, "valence": pred_va[i, 0],
                   "arousal": pred_va[i, 1], "expression": labels.EXPRESSIONS[pred_expr[i]]}
            row |= {au: int(pred_aus[i, j]) for j, au in enumerate(labels.AUS)}
            row |= {f"p_{au}": probs[i, j] for j, au in enumerate(labels.AUS)}
            out.write_row(row)
    json_path = tmp_path / "scores.json"
    result = runner.invoke(app, ["score", str(table), "--truth", str(truth), "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    scores = json.loads(json_path.read_text())["scores"]
    assert abs(scores["p_mtl"] - expected) < 1e-6  # the table's own decisions are what is scored
    assert scores["au_f1_tuned_on_truth"] >= scores["au_f1"] - 1e-9
    assert scores["p_mtl_tuned_on_truth"] == pytest.approx(scores["p_mtl"] - scores["au_f1"] + scores["au_f1_tuned_on_truth"])
    assert "optimistic" in result.output


def test_score_lsd_against_class_folders_and_labelled_list(tmp_path):
    rng = np.random.default_rng(3)
    keys, true = [], []
    for c, name in enumerate(labels.LSD_CLASSES):
        folder = tmp_path / "val" / ("ANGERE" if name == "ANGER" else name)
        folder.mkdir(parents=True)
        for i in range(5):
            (folder / f"{i:04d}.jpg").write_bytes(b"jpg")
            keys.append(f"{folder.name}/{i:04d}.jpg")
            true.append(c)
    true = np.array(true)
    pred = np.where(rng.random(len(true)) < 0.6, true, rng.integers(0, 6, len(true)))
    sub = write_lsd_submission(tmp_path / "lsd.txt", keys, pred)
    result = runner.invoke(app, ["score", str(sub), "--truth", str(tmp_path / "val"), "--task", "lsd"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "lsd.scores.json").read_text())
    assert abs(report["scores"]["f1"] - f1_score(true, pred, average="macro")) < 1e-9
    assert np.array(report["confusion_matrix"]["counts"]).shape == (6, 6)
    listed = tmp_path / "val_list.csv"
    listed.write_text("image,expression\n" + "".join(f"{k},{labels.LSD_CLASSES[c]}\n" for k, c in zip(keys, true)))
    result = runner.invoke(app, ["score", str(sub), "--truth", str(listed), "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b.json").read_text())["scores"]["f1"] == report["scores"]["f1"]


def test_missing_predictions_are_an_error_unless_partial(tmp_path):
    truth, images, (pred_va, pred_expr, pred_aus), _ = make_mtl(tmp_path)
    keep = np.arange(len(images)) >= 7  # the first 7 truth images get no prediction
    sub = write_mtl_submission(tmp_path / "part.txt", [im for im, k in zip(images, keep) if k],
                               pred_va[keep], pred_expr[keep], pred_aus[keep])
    result = runner.invoke(app, ["score", str(sub), "--truth", str(truth)])
    assert result.exit_code == 2
    assert "7 of 120 images" in result.stderr and images[0] in result.stderr and "--allow-partial" in result.stderr
    assert not (tmp_path / "part.scores.json").exists()
    result = runner.invoke(app, ["score", str(sub), "--truth", str(truth), "--allow-partial"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "part.scores.json").read_text())
    assert report["coverage"]["scored_images"] == 113 and report["coverage"]["partial"] is True
    assert report["coverage"]["coverage"] == pytest.approx(113 / 120)
    assert "coverage" in result.stdout


def test_lsd_truth_of_other_images_or_without_labels_exits_2(tmp_path):
    """A test-set truth must name the submission's images: one of another set (no name in common,
    or some names missing) and the release list itself (labels withheld) are refused."""
    images = [f"test_{k:06d}.jpg" for k in range(12)]
    true = np.arange(12) % 6
    sub = write_lsd_submission(tmp_path / "lsd_test_submission.txt", images, (true + 1) % 6)
    truth = write_lsd_submission(tmp_path / "truth.txt", images, true)
    result = runner.invoke(app, ["score", str(sub), "--truth", str(truth), "--task", "lsd", "--json", str(tmp_path / "ok" / "ok.json")])
    assert result.exit_code == 0, result.output
    other = write_lsd_submission(tmp_path / "other_truth.txt", [f"img_{k:06d}.jpg" for k in range(12)], true)
    result = runner.invoke(app, ["score", str(sub), "--truth", str(other), "--task", "lsd"])
    assert result.exit_code == 2
    assert "none of the 12 images of" in result.stderr and "img_000000.jpg" in result.stderr and "test_000000.jpg" in result.stderr
    more = write_lsd_submission(tmp_path / "more_truth.txt", images + ["test_000012.jpg"], np.append(true, 0))
    result = runner.invoke(app, ["score", str(sub), "--truth", str(more), "--task", "lsd"])
    assert result.exit_code == 2 and "1 of 13 images" in result.stderr and "test_000012.jpg" in result.stderr
    release = write_lsd_test_release(tmp_path / "LSD_Challenge_test_set_release.txt", images)
    result = runner.invoke(app, ["score", str(sub), "--truth", str(release), "--task", "lsd"])
    assert result.exit_code == 2 and ":2: no expression" in result.stderr and "Traceback" not in result.output
    assert not list(tmp_path.glob("*.scores.json"))


def _bad_files(tmp_path: Path):
    truth, images, (va, expr, aus), _ = make_mtl(tmp_path)
    good = write_mtl_submission(tmp_path / "good.txt", images, va, expr, aus)
    lines = good.read_text().splitlines()

    def variant(name: str, header: str | None = None, row3: str | None = None) -> Path:
        out = list(lines)
        if header is not None:
            out[0] = header
        if row3 is not None:
            out[2] = row3
        path = tmp_path / name
        path.write_text("\n".join(out) + "\n")
        return path

    bad_truth = tmp_path / "bad_truth.txt"
    truth_lines = truth.read_text().splitlines()
    truth_lines[4] = images[3] + ",0.1,1.7,1,0,0,0,0,0,0,0,0,0,0,0,0"
    bad_truth.write_text("\n".join(truth_lines) + "\n")
    return truth, good, {
        "header": (variant("h.txt", header="image,valence,arousal,expr,aus"), truth, ":1: ", "header"),
        "non-numeric": (variant("n.txt", row3=images[1] + ",0.1,x,1,0,0,0,0,0,0,0,0,0,0,0,0"), truth, ":3: ", "non-numeric arousal"),
        "columns": (variant("c.txt", row3=images[1] + ",0.1,0.2,1,0,0"), truth, ":3: ", "column count"),
        "au": (variant("a.txt", row3=images[1] + ",0.1,0.2,1,0,0,0,0,0,0,0,0,0,0,0,-1"), truth, ":3: ", "AU26 = -1"),
        "truth-va": (good, bad_truth, ":5: ", "arousal = 1.7"),
        "no-truth": (good, tmp_path / "absent.txt", "absent.txt: ", "file not found"),
    }


@pytest.mark.parametrize("case", ["header", "non-numeric", "columns", "au", "truth-va", "no-truth"])
def test_malformed_files_exit_2_with_their_own_message(tmp_path, case):
    _, _, cases = _bad_files(tmp_path)
    pred, truth, where, reason = cases[case]
    result = runner.invoke(app, ["score", str(pred), "--truth", str(truth)])
    assert result.exit_code == 2, result.output
    assert where in result.stderr and reason in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert not list(tmp_path.glob("*.scores.json"))


def test_task_mismatch_and_bad_task_exit_2(tmp_path):
    truth, good, _ = _bad_files(tmp_path)
    result = runner.invoke(app, ["score", str(good), "--truth", str(truth), "--task", "lsd"])
    assert result.exit_code == 2 and "MTL predictions" in result.stderr
    result = runner.invoke(app, ["score", str(good), "--truth", str(truth), "--task", "va"])
    assert result.exit_code == 2


def test_score_is_listed_with_help_and_examples():
    from abaw_cli.cli import app as abaw_app

    result = runner.invoke(abaw_app, ["--help"])
    assert result.exit_code == 0 and "score" in result.stdout
    result = runner.invoke(abaw_app, ["score", "--help"])
    assert result.exit_code == 0
    assert "Examples" in result.stdout and "--allow-partial" in result.stdout and "--truth" in result.stdout


def test_pipeline_summary_labels_how_the_au_thresholds_were_chosen(tmp_path, capsys):
    from abaw_cli import pipeline_summary

    truth, images, (pred_va, pred_expr, pred_aus), _ = make_mtl(tmp_path, seed=5)
    sub = write_mtl_submission(tmp_path / "sub.txt", images, pred_va, pred_expr, pred_aus)
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["score", str(sub), "--truth", str(truth), "--json", str(runs / "score" / "mtl.json")])
    assert result.exit_code == 0, result.output
    fixed = {a: 0.5 for a in labels.AUS}
    metrics = {"best_epoch": {"metrics": {"au_f1_val_tuned": 0.777, "p_mtl_val_tuned": 1.234}, "details": {"au_thresholds": fixed}}}
    (runs / "train-mtl").mkdir()
    (runs / "train-mtl" / "metrics.json").write_text(json.dumps(metrics))
    assert pipeline_summary.main(runs) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "AU mean F1 (AUs at 0.5)" in text and "P_MTL (AUs at 0.5)" in text
    assert "tuned on validation (optimistic" in text and "0.777" in text and "1.234" in text


def test_pipeline_summary_shows_the_lsd_test_set_against_the_demo_truth(tmp_path, capsys):
    from abaw_cli import pipeline_summary

    images = [f"test_{k:06d}.jpg" for k in range(12)]
    true = np.arange(12) % 6
    sub = write_lsd_submission(tmp_path / "lsd_test_submission.txt", images, np.where(true < 3, true, 0))
    truth = write_lsd_submission(tmp_path / "lsd_test_truth.txt", images, true)
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["score", str(sub), "--truth", str(truth), "--json", str(runs / "score" / "lsd_test.json")])
    assert result.exit_code == 0, result.output
    assert pipeline_summary.main(runs) == 0
    text = " ".join(capsys.readouterr().out.split())
    f1 = f1_score(true, np.where(true < 3, true, 0), average="macro")
    assert "LSD test set (demo truth" in text and f"macro-F1 │ {f1:.3f}" in text
    assert "LSD validation" not in text  # no lsd.json: only what was scored is shown
