"""abaw predict: the demo video end to end (table, overlay, plot), ABAW lists -> submissions that
`abaw score` reads back, bad input refused with exit code 2, and the streaming pieces on their own."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from abaw_cli import labels
from abaw_cli.data.formats import (
    prediction_columns,
    read_lsd_labelled_list,
    read_lsd_submission,
    read_mtl_annotations,
    read_mtl_submission,
    read_prediction_table,
    read_test_list,
    scan_lsd_folders,
)
from abaw_cli.faces.detector import Detections
from abaw_cli.faces.follow import LandmarkFollower
from abaw_cli.predict.heads import OutputSpace
from abaw_cli.predict.records import FacePrediction, FramePrediction
from abaw_cli.predict.smoothing import CentredSmoother, window_frames
from abaw_cli.stages import predict as predict_stage
from abaw_cli.stages import score as score_stage
from abaw_cli.train.checkpoint import make_checkpoint, save_atomic

runner = CliRunner()


def _app() -> typer.Typer:
    """predict and score on their own app, so these tests do not depend on other stages' imports."""
    app = typer.Typer()
    predict_stage.register(app)
    score_stage.register(app)

    @app.callback()
    def main() -> None:
        pass

    return app


def _invoke(*args: str):
    return runner.invoke(_app(), [str(a) for a in args], catch_exceptions=False)


def _video_frames(path: Path) -> tuple[int, int, int]:
    """(frames actually decodable, width, height)."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    return n, *size


@pytest.fixture(scope="module")
def demo_video(demo_root: Path) -> Path:
    return sorted((demo_root / "videos").glob("*.mp4"))[0]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, demo_video: Path, tiny_mtl_model: Path) -> dict:
    """One predict run on the demo video with every video output."""
    out = tmp_path_factory.mktemp("predict-video")
    result = _invoke(
        "predict", demo_video, "--model", tiny_mtl_model, "--out", out / "table.csv",
        "--overlay", out / "overlay.mp4", "--overlay-label", "prior", "--plot", out / "timeline.png", "--smooth", "0.2", "--device", "cpu",
        "--min-face", "40",  # the demo faces are ~55 px: a shorter MTCNN pyramid, half the test time
    )
    return {"result": result, "out": out}


def test_video_table_has_one_row_per_frame_and_the_documented_columns(video_run, demo_video, tiny_mtl_model):
    assert video_run["result"].exit_code == 0, video_run["result"].output
    table = read_prediction_table(video_run["out"] / "table.csv")
    n_frames, _, _ = _video_frames(demo_video)
    assert list(table) == prediction_columns("mtl")
    assert len(table["frame"]) == n_frames
    np.testing.assert_array_equal(table["frame"], np.arange(n_frames))
    np.testing.assert_allclose(table["time_s"], np.arange(n_frames) / 25.0, atol=1e-3)
    face = table["face"] == 1
    assert face.mean() >= 0.95  # the demo face is found in (almost) every frame
    probs = np.stack([table[f"p_{e}"] for e in labels.EXPRESSIONS], 1)[face]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    names = np.asarray(labels.EXPRESSIONS)[probs.argmax(1)]
    np.testing.assert_array_equal(table["expression"][face], names)
    # AU decisions are the AU probabilities against the checkpoint's own thresholds.
    import torch

    thresholds = np.asarray(torch.load(tiny_mtl_model, weights_only=True)["meta"]["au_thresholds"])
    au_p = np.stack([table[f"p_{a}"] for a in labels.AUS], 1)[face]
    au_on = np.stack([table[a] for a in labels.AUS], 1)[face]
    # The table writes probabilities to 6 significant digits: a value this close to its threshold
    # may have been decided on either side of the written number.
    clear = np.abs(au_p - thresholds) > 5e-6
    np.testing.assert_array_equal(au_on[clear], (au_p >= thresholds).astype(float)[clear])
    assert np.isfinite(table["valence"][face]).all() and np.isfinite(table["x1"][face]).all()
    # Rows without a face carry no predictions.
    assert np.isnan(table["valence"][~face]).all()
    # The fer prior's own reading: its 7 classes in ABAW order (no Other), a distribution, its argmax named.
    prior = np.stack([table[f"prior_{e}"] for e in labels.EXPRESSIONS], 1)[face]
    assert np.isnan(prior[:, labels.EXPRESSIONS.index("Other")]).all()
    np.testing.assert_allclose(prior[:, :7].sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(table["prior_expression"][face], np.asarray(labels.EXPRESSIONS)[prior[:, :7].argmax(1)])
    assert (table["prior_expression"][~face] == "").all()
    # The demo model on demo data: no warning about rendered faces.
    assert "rendered" not in video_run["result"].output


def test_video_faces_follow_the_demo_truth_boxes(video_run, demo_video):
    table = read_prediction_table(video_run["out"] / "table.csv")
    with open(demo_video.with_suffix(".csv")) as fh:
        truth = np.genfromtxt(fh, delimiter=",", names=True)
    face = table["face"] == 1
    pred_c = np.stack([(table["x1"] + table["x2"]) / 2, (table["y1"] + table["y2"]) / 2], 1)[face]
    true_c = np.stack([(truth["x1"] + truth["x2"]) / 2, (truth["y1"] + truth["y2"]) / 2], 1)[face]
    size = (truth["x2"] - truth["x1"])[face]
    assert np.median(np.linalg.norm(pred_c - true_c, axis=1) / size) < 0.35


def test_overlay_has_the_input_frame_count_and_size_and_plot_is_written(video_run, demo_video):
    assert _video_frames(video_run["out"] / "overlay.mp4") == _video_frames(demo_video)
    png = cv2.imread(str(video_run["out"] / "timeline.png"))
    assert png is not None and png.shape[0] > 200 and png.shape[1] > 400
    assert "fps" in video_run["result"].output  # the summary reports the speed
    assert not list(video_run["out"].glob(".*tmp*"))  # no temporary files left


def test_a_briefly_trained_model_agrees_with_the_demo_video_truth(tmp_path, demo_small_root, lsd_expression_model):
    """The whole chain (decode, MTCNN, alignment, preprocessing from the checkpoint, model, table
    rows in frame order) carries what a model learned from still crops onto video frames: on the
    frames whose truth is one of the model's 6 classes, its labels agree with the truth far more
    often than chance or the best constant answer. Measured (seeds 0/1 of the fixture's recipe,
    both videos pooled): 0.545/0.579 against a majority class of 0.322 and 1/6."""
    videos = sorted((demo_small_root / "videos").glob("*.mp4"))
    result = _invoke("predict", *videos, "--model", lsd_expression_model, "--out", tmp_path, "--device", "cpu", "--min-face", "40")
    assert result.exit_code == 0, result.output
    predicted, truth = [], []
    for video in videos:
        table = read_prediction_table(tmp_path / f"{video.stem}.csv")
        with open(video.with_suffix(".csv")) as fh:
            truth_table = np.genfromtxt(fh, delimiter=",", names=True)
        assert len(table["frame"]) == len(truth_table)  # one row per frame, in frame order
        assert (table["face"] == 1).mean() >= 0.95
        predicted += [labels.expression_index(name) if name else -1 for name in table["expression"]]
        truth += truth_table["expression"].astype(int).tolist()
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    in_classes = np.isin(truth, list(labels.LSD_TO_EXPRESSION.values()))
    assert in_classes.sum() >= 150
    agreement = float((predicted[in_classes] == truth[in_classes]).mean())
    majority = np.bincount(truth[in_classes]).max() / in_classes.sum()
    assert agreement >= 2 * (1 / labels.NUM_LSD_CLASSES), agreement
    assert agreement >= majority + 0.08, (agreement, majority)


def _score(tmp_path: Path, pred: Path, truth: Path) -> dict:
    json_path = tmp_path / f"{pred.stem}.json"
    result = _invoke("score", pred, "--truth", truth, "--json", json_path)
    assert result.exit_code == 0, result.output
    return json.loads(json_path.read_text())


def test_mtl_list_gives_a_submission_that_score_reads(tmp_path, demo_root, tiny_mtl_model):
    """An annotation file as the list (its image column), and an MTL test release list."""
    mtl = demo_root / "mtl"
    truth = mtl / "validation_set_annotations.txt"
    out = tmp_path / "val.txt"
    result = _invoke("predict", truth, "--images", mtl / "cropped_aligned", "--model", tiny_mtl_model, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines()[0] == ",".join(labels.MTL_SUBMISSION_HEADER)
    sub = read_mtl_submission(out)
    assert sub.images == read_mtl_annotations(truth).images  # same images, same order
    scores = _score(tmp_path, out, truth)
    assert scores["coverage"]["coverage"] == 1.0 and scores["coverage"]["scored_images"] == len(sub.images)
    assert 0.0 <= scores["scores"]["p_mtl"] <= 3.0

    # The test release layout: a header, then one path per line; images found under --images.
    images = sub.images[::7]
    test_list = tmp_path / "MTL_Challenge_test_set_release.txt"
    test_list.write_text("image\n" + "\n".join(images) + "\n")
    out2 = tmp_path / "test_submission.txt"
    result = _invoke("predict", test_list, "--images", mtl / "cropped_aligned", "--model", tiny_mtl_model, "--out", out2, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert read_mtl_submission(out2).images == images
    # Same image, same model: the same prediction as in the full-list run.
    full = {img: i for i, img in enumerate(sub.images)}
    sub2 = read_mtl_submission(out2)
    np.testing.assert_allclose(sub2.valence_arousal, sub.valence_arousal[[full[i] for i in images]], atol=1e-5)


def test_lsd_tree_gives_a_submission_with_relative_names(tmp_path, demo_root, tiny_mtl_model):
    tree = demo_root / "lsd" / "validation_set_real_images"
    out = tmp_path / "lsd.txt"
    result = _invoke("predict", tree, "--model", tiny_mtl_model, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    images, classes = read_lsd_submission(out)
    assert images == scan_lsd_folders(tree).relative_keys()
    assert images[0].split("/")[0] in labels.LSD_FOLDER_ALIASES
    assert ((classes >= 0) & (classes < 6)).all()
    scores = _score(tmp_path, out, tree)
    assert scores["coverage"]["coverage"] == 1.0 and 0.0 <= scores["scores"]["f1"] <= 1.0


def test_lsd_test_release_gives_a_submission_that_score_reads_against_the_demo_truth(tmp_path, demo_root, tiny_cotrain_run):
    """The challenge's unlabelled test list through a cotrain model: the submission in list order,
    the same with --images and with the images found beside the list, scored against the truth."""
    _, model, _ = tiny_cotrain_run
    release = demo_root / "lsd" / "LSD_Challenge_test_set_release.txt"
    out = tmp_path / "lsd_test_submission.txt"
    result = _invoke("predict", release, "--images", demo_root / "lsd" / "test_set_images", "--model", model, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    images, classes = read_lsd_submission(out)
    assert out.read_text().splitlines()[0] == "image,expression"
    assert images == read_test_list(release) and ((classes >= 0) & (classes < 6)).all()
    beside = tmp_path / "beside.txt"
    result = _invoke("predict", release, "--model", model, "--out", beside, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert beside.read_bytes() == out.read_bytes()  # test_set_images/ beside the list, found without --images
    truth = demo_root / "truth" / "lsd_test_truth.txt"
    scores = _score(tmp_path, out, truth)
    true = read_lsd_labelled_list(truth).labels
    assert scores["coverage"]["coverage"] == 1.0 and scores["coverage"]["extra_predictions"] == 0
    assert scores["scores"]["accuracy"] == pytest.approx(float((classes == true).mean()))
    assert np.array(scores["confusion_matrix"]["counts"]).sum(axis=1).tolist() == np.bincount(true, minlength=6).tolist()


def test_wrong_kind_checkpoint_and_unreadable_video_exit_2(tmp_path, demo_video, tiny_mtl_model):
    mae = tmp_path / "mae.pt"
    save_atomic(make_checkpoint("mae", {}, {}, meta={"input_size": 32}), mae)
    encoder = tmp_path / "encoder.pt"
    save_atomic({"model": {}, "meta": {"input_size": 32}}, encoder)
    for ckpt in (mae, encoder, tmp_path / "missing.pt"):
        result = _invoke("predict", demo_video, "--model", ckpt, "--out", tmp_path / "t.csv", "--device", "cpu")
        assert result.exit_code == 2, result.output
        assert ckpt.name in result.output
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video" * 200)
    result = _invoke("predict", broken, "--model", tiny_mtl_model, "--out", tmp_path / "t.csv", "--device", "cpu")
    assert result.exit_code == 2 and "broken.mp4" in result.output
    assert not (tmp_path / "t.csv").exists()


def test_no_face_video_gives_empty_rows_and_exit_0(tmp_path, tiny_mtl_model):
    video = tmp_path / "empty_room.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 96))
    rng = np.random.default_rng(0)
    for _ in range(8):
        writer.write(cv2.GaussianBlur(rng.integers(0, 255, (96, 160, 3), dtype=np.uint8), (9, 9), 3))
    writer.release()
    result = _invoke("predict", video, "--model", tiny_mtl_model, "--out", tmp_path / "t.csv", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "no face" in result.output
    table = read_prediction_table(tmp_path / "t.csv")
    assert len(table["frame"]) == _video_frames(video)[0] == 8
    assert (table["face"] == 0).all() and np.isnan(table["valence"]).all()


def test_photo_with_two_faces_gives_two_tracked_rows(tmp_path, tiny_mtl_model):
    from skimage import data

    face = cv2.resize(data.astronaut()[:260, 120:380], (180, 180))
    photo = np.full((220, 420, 3), 120, np.uint8)
    photo[20:200, 10:190], photo[20:200, 230:410] = face, face
    cv2.imwrite(str(tmp_path / "two.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    result = _invoke("predict", tmp_path / "two.png", "--model", tiny_mtl_model, "--faces", "all", "--out", tmp_path / "t.csv", "--device", "cpu")
    assert result.exit_code == 0, result.output
    table = read_prediction_table(tmp_path / "t.csv")
    assert list(table["face"]) == [1, 1] and sorted(table["track"]) == [0, 1]
    assert all(Path(p).name == "two.png" for p in table["image"])
    assert np.isnan(table["time_s"]).all()  # a photo has no timestamp


def test_parquet_needs_pyarrow_or_round_trips(tmp_path, demo_video, tiny_mtl_model):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        result = _invoke("predict", demo_video, "--model", tiny_mtl_model, "--out", tmp_path / "t.parquet", "--device", "cpu")
        assert result.exit_code == 2 and "pyarrow" in result.output
        return
    from abaw_cli.predict.heads import OutputSpace as Space
    from abaw_cli.predict.tables import ParquetTableWriter, frame_rows, table_columns

    space = Space.from_checkpoint({"kind": "mtl", "meta": {"input_size": 32, "au_thresholds": [0.5] * 12}})
    values = np.concatenate([[0.1, -0.2], np.full(8, 1 / 8), np.full(12, 0.6), np.full(8, np.nan)]).astype(np.float32)
    with ParquetTableWriter(tmp_path / "t.parquet", table_columns(space), group_rows=2) as w:
        for i in range(5):
            faces = (FacePrediction(0, np.array([1, 2, 3, 4], np.float32), 0.9, values),) if i % 2 else ()
            for row in frame_rows("v", FramePrediction(i, i / 25, faces), space):
                w.write_row(row)
    table = pq.read_table(tmp_path / "t.parquet").to_pydict()
    assert table["frame"] == [0, 1, 2, 3, 4] and table["face"] == [0, 1, 0, 1, 0]


# ---- the streaming pieces, on their own


def _frame(i: int, values: list[float] | None, track: int = 0) -> FramePrediction:
    faces = () if values is None else (FacePrediction(track, np.zeros(4, np.float32), 1.0, np.asarray(values, np.float32)),)
    return FramePrediction(i, i / 25, faces)


def test_centred_smoothing_is_a_windowed_mean_per_track_with_bounded_lookahead():
    assert window_frames(0.0, 25) == 1 and window_frames(0.2, 25) == 5 and window_frames(0.25, 25) == 7
    rng = np.random.default_rng(0)
    series = rng.random(40).astype(np.float32)
    present = rng.random(40) > 0.2
    smoother = CentredSmoother(5)
    out = []
    for i in range(40):
        released = smoother.push(_frame(i, [series[i]] if present[i] else None))
        assert len(smoother._buffer) <= 5  # memory bounded by the window
        out += released
    out += smoother.flush()
    assert [f.frame for f in out] == list(range(40))
    for f in out:
        if not present[f.frame]:
            assert f.faces == ()
            continue
        window = [series[j] for j in range(max(0, f.frame - 2), min(40, f.frame + 3)) if present[j]]
        assert f.faces[0].values[0] == pytest.approx(np.mean(window), abs=1e-6)


def test_smoothing_keeps_tracks_apart():
    smoother = CentredSmoother(3)
    frames = []
    for i in range(4):
        faces = (
            FacePrediction(0, np.zeros(4), 1.0, np.array([0.0], np.float32)),
            FacePrediction(1, np.zeros(4), 1.0, np.array([10.0], np.float32)),
        )
        frames += smoother.push(FramePrediction(i, 0.0, faces))
    frames += smoother.flush()
    assert all(f.faces[0].values[0] == 0.0 and f.faces[1].values[0] == 10.0 for f in frames)


def test_output_space_decodes_emma_outputs_and_maps_lsd_classes():
    import torch

    space = OutputSpace.from_checkpoint({"kind": "mtl", "meta": {"input_size": 32, "au_thresholds": [0.5] * 12}})
    raw = torch.zeros(1, 22)
    raw[0, 10:] = -3.0
    raw[0, :2] = torch.tensor([0.3, -0.4])
    raw[0, 2 + labels.EXPRESSIONS.index("Happiness")] = 5.0
    raw[0, 10 + labels.AUS.index("AU12")] = 3.0
    values = space.decode(raw)
    assert values.shape == (1, 30) and np.isnan(values[0, 22:]).all()  # no prior: its columns empty
    assert values[0, :2] == pytest.approx([0.3, -0.4])
    assert space.classes[int(space.class_index(values)[0])] == "Happiness"
    assert list(np.flatnonzero(space.au_decisions(values)[0])) == [labels.AUS.index("AU12")]
    lsd = space.lsd_scores(values)
    assert labels.LSD_CLASSES[int(lsd.argmax())] == "HAPPINESS"


@pytest.mark.parametrize("order", ["fer2013", "affectnet8"])
def test_prior_probabilities_land_in_abaw_order_empty_where_the_prior_lacks_a_class(order):
    import torch

    from abaw_cli.models.priors.label_orders import LABEL_ORDERS
    from abaw_cli.predict.tables import prior_cells

    names, to_abaw = LABEL_ORDERS[order]
    ckpt = {"kind": "mtl", "meta": {"input_size": 32}, "model_config": {"prior": {"label_order": order}}}
    space = OutputSpace.from_checkpoint(ckpt)
    prior_logits = torch.full((1, len(names)), -4.0)
    prior_logits[0, names.index("happy")] = 3.0
    values = space.decode(torch.zeros(1, 22), prior_logits)[0]
    probs = torch.softmax(prior_logits, 1)[0].numpy()
    prior = values[space.prior_slice]
    for i, j in enumerate(to_abaw):
        if j is not None:
            assert prior[j] == pytest.approx(probs[i], abs=1e-6)
    # Neither has ABAW's Other (contempt is not Other): that column stays empty.
    assert np.isnan(prior[labels.EXPRESSIONS.index("Other")]) and np.isfinite(prior[:7]).all()
    cells = prior_cells(values, space)
    assert cells["prior_expression"] == "Happiness" and "prior_Other" not in cells
    # A prior class ABAW lacks (AffectNet's contempt) has no column: the rest sum to 1 - p(contempt).
    lost = probs[names.index("contempt")] if "contempt" in names else 0.0
    assert np.nansum(prior) == pytest.approx(1 - lost, abs=1e-5)


def test_landmark_follower_moves_faces_with_the_image():
    from skimage import data

    img = np.ascontiguousarray(data.astronaut())
    marks = np.array([[[180, 100], [230, 100], [205, 130], [185, 160], [225, 160]]], np.float32)
    dets = Detections(np.array([[150, 60, 260, 200]], np.float32), np.array([0.99], np.float32), marks)
    follower = LandmarkFollower()
    follower.reset(img, dets)
    shifted = np.roll(img, (4, 7), axis=(0, 1))  # 7 px right, 4 px down
    moved = follower.follow(shifted)
    assert len(moved) == 1
    np.testing.assert_allclose(moved.landmarks[0] - marks[0], [[7, 4]] * 5, atol=0.5)
    np.testing.assert_allclose(moved.boxes[0], dets.boxes[0] + [7, 4, 7, 4], atol=1.0)
    # A blank frame loses the face instead of inventing one.
    assert len(follower.follow(np.zeros_like(img))) == 0


def test_predict_is_registered_with_examples():
    from abaw_cli.cli import app

    result = runner.invoke(app, ["predict", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "Examples" in result.output and "--detect-every" in result.output


def test_detect_every_runs_the_detector_on_every_kth_frame_and_follows_between(tmp_path):
    from skimage import data

    from abaw_cli.faces.detector import FaceDetector
    from abaw_cli.faces.sources import expand_inputs
    from abaw_cli.faces.stream import iter_frame_faces

    face = cv2.cvtColor(cv2.resize(data.astronaut()[:260, 120:380], (200, 200)), cv2.COLOR_RGB2BGR)
    video = tmp_path / "moving.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, (300, 230))
    for t in range(7):
        frame = np.full((230, 300, 3), 110, np.uint8)
        frame[15:215, 20 + 3 * t : 220 + 3 * t] = face
        writer.write(frame)
    writer.release()
    detector = FaceDetector(device="cpu", min_face=40)
    detected_frames = []
    real_detect = detector.detect
    detector.detect = lambda frames, *rest: (detected_frames.extend([len(frames)]), real_detect(frames, *rest))[1]
    source = expand_inputs([video])[0][0]
    out = list(iter_frame_faces(source, detector, faces="largest", detect_every=3, keep_image=False))
    assert [ff.frame for ff in out] == list(range(7))
    assert sum(detected_frames) == 3  # frames 0, 3 and 6
    assert all(len(ff.faces) == 1 for ff in out)
    x1 = np.array([ff.faces[0].box[0] for ff in out])
    assert np.all(np.diff(x1) > 0.5)  # the followed box moves right with the face (3 px a frame)


def test_output_paths_follow_one_rule_for_files_and_folders(tmp_path, demo_root):
    from abaw_cli.faces.sources import expand_inputs
    from abaw_cli.predict.lists import load_image_set
    from abaw_cli.predict.plan import PlanError, SetJob, plan_outputs

    video = sorted((demo_root / "videos").glob("*.mp4"))[0]
    source = expand_inputs([video])[0][0]
    image_set = load_image_set(demo_root / "mtl" / "validation_set_annotations.txt")
    planned = plan_outputs([source, image_set], tmp_path / "preds", tmp_path / "ov", None, None)
    assert planned[0].outputs.table == tmp_path / "preds" / f"{source.name}.csv"
    assert planned[0].outputs.overlay == tmp_path / "ov" / f"{source.name}.mp4"
    assert isinstance(planned[1], SetJob) and planned[1].out == tmp_path / "preds" / "validation_set_annotations.submission.txt"
    assert plan_outputs([source], tmp_path / "one.csv", None, tmp_path / "t.png", None)[0].outputs.plot == tmp_path / "t.png"
    for bad in (
        lambda: plan_outputs([source, image_set], tmp_path / "one.csv", None, None, None),  # a file for two inputs
        lambda: plan_outputs([image_set], tmp_path / "x.txt", tmp_path / "o.mp4", None, None),  # overlay without video
        lambda: plan_outputs([source], tmp_path / "x.txt", None, None, None),  # a table is not .txt
    ):
        with pytest.raises(PlanError):
            bad()


def test_a_list_with_missing_images_is_refused_before_any_model_runs(tmp_path: Path):
    """load_image_set names how many listed images are missing and the first line of one; a
    missing image folder points at --images."""
    from abaw_cli.data.formats import FormatError
    from abaw_cli.predict.lists import load_image_set

    images = tmp_path / "test_set_images"
    images.mkdir()
    for name in ("a.jpg", "c.jpg"):
        (images / name).write_bytes(b"")
    release = tmp_path / "LSD_Challenge_test_set_release.txt"
    release.write_text("image,expression\na.jpg,\nb.jpg,\nc.jpg,\n")
    with pytest.raises(FormatError) as err:
        load_image_set(release)
    assert "1 of 3 listed images are missing" in str(err.value) and "b.jpg" in str(err.value)
    assert err.value.line == 3  # b.jpg is on the file's third line
    with pytest.raises(FormatError, match="give it with --images"):
        load_image_set(release, tmp_path / "nowhere")
