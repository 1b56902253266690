"""The faces library: detection, alignment, readers, input expansion, tracking, streaming."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from abaw_cli.faces.align import align_face, template_points, transform_points
from abaw_cli.faces.detector import Detections, FaceDetector
from abaw_cli.faces.sources import expand_inputs
from abaw_cli.faces.stream import iter_frame_faces
from abaw_cli.faces.tracker import FaceTracker
from abaw_cli.faces.video import ImageSequenceReader, SourceError, VideoReader, open_source
from abaw_cli.runtime import cpu_threads


@pytest.fixture(scope="module")
def detector():
    # As crop-faces runs it: torch on every core of the process (runtime.cpu_threads).
    det = FaceDetector(device="cpu", min_face=20, batch=4)
    with cpu_threads(det.device):
        yield det


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()  # 512x512 RGB, one face


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """An mp4 (mp4v) from RGB frames."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def face_scene(astronaut: np.ndarray, x: int, width: int = 320, height: int = 240, face: bool = True) -> np.ndarray:
    """A small grey frame with the astronaut photo (shrunk to 160 px) at column x, or empty."""
    frame = np.full((height, width, 3), 96, np.uint8)
    if face:
        frame[40:200, x : x + 160] = cv2.resize(astronaut, (160, 160), interpolation=cv2.INTER_AREA)
    return frame


def test_astronaut_face_is_found_and_aligned(detector, astronaut):
    dets = detector.detect([astronaut])[0]
    assert len(dets) == 1 and dets.scores[0] > 0.99
    x1, y1, x2, y2 = dets.boxes[0]
    assert 150 < x1 < x2 < 300 and 40 < y1 < y2 < 200  # the face, not the suit or the flag
    assert dets.boxes.dtype == np.float32 and dets.landmarks.shape == (1, 5, 2)

    for size in (112, 224):
        crop, matrix = align_face(astronaut, dets.landmarks[0], size)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
        template = template_points(size)
        # The fit itself: where the alignment matrix sends the detected eyes.
        fitted = transform_points(dets.landmarks[0], matrix)
        assert np.linalg.norm(fitted[:2] - template[:2], axis=1).max() < 2.0 * size / 112
        # The honest check: find the face again in the aligned PIXELS and compare its eyes with the
        # template. This would catch a wrong warp direction, swapped x/y or a channel mix-up,
        # which the fitted points above cannot see.
        again = detector.detect([crop])[0]
        assert len(again) == 1
        eye_error = np.linalg.norm(again.landmarks[0, :2] - template[:2], axis=1)
        assert eye_error.max() < 2.0 * size / 112, eye_error  # 2 px at 112, the same share at 224


def test_alignment_is_the_weighted_least_squares_similarity():
    """cv2's refined estimate equals scikit-image's closed-form Umeyama fit on the weighted points."""
    from skimage.transform import SimilarityTransform

    from abaw_cli.faces.align import LANDMARK_WEIGHTS, alignment_matrix

    rows = np.repeat(np.arange(5), LANDMARK_WEIGHTS)
    rng = np.random.default_rng(0)
    for _ in range(20):
        marks = template_points(112) * rng.uniform(0.5, 3) + rng.uniform(0, 300, 2) + rng.normal(0, 3, (5, 2))
        if hasattr(SimilarityTransform, "from_estimate"):
            reference = SimilarityTransform.from_estimate(marks[rows], template_points(112)[rows]).params[:2]
        else:
            tform = SimilarityTransform()
            tform.estimate(marks[rows], template_points(112)[rows])
            reference = tform.params[:2]
        ours = alignment_matrix(marks, 112)
        assert np.abs(transform_points(marks, ours) - transform_points(marks, reference)).max() < 1e-3
    with pytest.raises(ValueError, match="degenerate"):
        alignment_matrix(np.zeros((5, 2)), 112)


def test_template_scales_and_is_symmetric():
    t112, t224 = template_points(112), template_points(224)
    assert np.allclose(t224, 2 * t112)
    assert abs((t112[0, 0] + t112[1, 0]) / 2 - 56) < 0.5  # eyes centred horizontally
    assert t112[:, 1].min() > 40 and t112[:, 1].max() < 90  # forehead and chin margins inside the crop


def test_detect_batches_mixed_sizes_in_order(detector, astronaut):
    half = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    blank = np.full((200, 300, 3), 128, np.uint8)
    results = detector.detect([astronaut, blank, half, astronaut])
    assert [len(r) for r in results] == [1, 0, 1, 1]
    assert np.allclose(results[2].boxes[0] * 2, results[0].boxes[0], atol=8)
    assert np.allclose(results[3].boxes, results[0].boxes, atol=0.5)
    assert results[1].boxes.shape == (0, 4) and results[1].landmarks.shape == (0, 5, 2)


def test_detector_refuses_bad_settings():
    with pytest.raises(ValueError, match="min-face"):
        FaceDetector(device="cpu", min_face=5)


def _dets(boxes: list[list[float]]) -> Detections:
    boxes_a = np.asarray(boxes, np.float32).reshape(-1, 4)
    # Landmarks inside each box at fixed relative places.
    rel = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32)
    wh = boxes_a[:, 2:] - boxes_a[:, :2]
    marks = boxes_a[:, None, :2] + rel[None] * wh[:, None]
    return Detections(boxes_a, np.ones(len(boxes_a), np.float32), marks)


def test_tracker_keeps_ids_and_opens_new_ones():
    tracker = FaceTracker(max_age=3)
    seen = []
    for step in range(10):  # two faces drifting right; the detector order flips every other frame
        a = [10 + 4 * step, 10, 60 + 4 * step, 70]
        b = [200 + 2 * step, 20, 250 + 2 * step, 80]
        order = [a, b] if step % 2 == 0 else [b, a]
        ids = tracker.update(_dets(order))
        seen.append(ids if step % 2 == 0 else ids[::-1])
    assert all(s == [0, 1] for s in seen)
    # A fast move (more than the box width, landmarks close relative to size) is still the same face.
    assert tracker.update(_dets([[60, 10, 110, 70]])) == [0]
    for _ in range(4):  # gone for longer than max_age
        tracker.update(Detections.empty())
    assert tracker.update(_dets([[60, 10, 110, 70]])) == [2]  # a new id, never a reused one


def test_video_reader_all_frames_and_sampled(tmp_path, astronaut):
    frames = [face_scene(astronaut, x=10 + 5 * i) for i in range(10)]
    path = write_video(tmp_path / "clip.mp4", frames, fps=25)
    with VideoReader(path) as reader:
        got = list(reader)
        assert reader.native_fps == pytest.approx(25)
        assert reader.expected_frames == 10 and (reader.width, reader.height) == (320, 240)
    assert [f.index for f in got] == list(range(10))
    assert [f.time_s for f in got] == pytest.approx([i / 25 for i in range(10)])
    assert got[0].rgb.shape == (240, 320, 3) and got[0].rgb.dtype == np.uint8
    # RGB order: the grey background is neutral, the photo's red suit patch stays red-dominant.
    assert np.abs(got[3].rgb.astype(int) - frames[3].astype(int)).mean() < 6
    with VideoReader(path, fps=10) as reader:
        sampled = [f.index for f in reader]
    assert sampled == [0, 3, 5, 8]  # one frame per 1/10 s slot: t = 0, .12, .2, .32


def test_unreadable_videos_fail_early_with_the_file_name(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SourceError, match="corrupt.mp4"):
        VideoReader(corrupt)
    empty = tmp_path / "empty.mp4"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 64))
    writer.release()  # a container with zero frames
    with pytest.raises(SourceError, match="empty.mp4"):
        VideoReader(empty)


def test_expand_inputs_types_names_and_skips(tmp_path, astronaut):
    frames_dir = tmp_path / "clips" / "frames"
    frames_dir.mkdir(parents=True)
    for i in (1, 2, 10):
        cv2.imwrite(str(frames_dir / f"f{i}.jpg"), np.zeros((32, 32, 3), np.uint8))
    write_video(tmp_path / "clips" / "a.avi", [face_scene(astronaut, 0)] * 2)
    (tmp_path / "clips" / "a.csv").write_text("frame,label\n")
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "notes.txt").write_text("some prose\nnot paths\n")
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "list.txt").write_text("# my inputs\nphoto.png\n\nmissing.mp4\n")

    sources, skipped = expand_inputs(
        [tmp_path / "clips", tmp_path / "broken.jpg", tmp_path / "notes.txt", tmp_path / "list.txt"]
    )
    assert [(s.name, s.kind) for s in sources] == [("a", "video"), ("clips_frames", "images"), ("photo", "images")]
    assert [p.name for p in sources[1].images] == ["f1.jpg", "f2.jpg", "f10.jpg"]  # natural order
    reasons = {s.path: s.reason for s in skipped}
    assert "corrupt header" in reasons[str(tmp_path / "broken.jpg")]
    assert "not a list of video/image paths" in reasons[str(tmp_path / "notes.txt")]
    assert "no such file" in reasons[f"{tmp_path / 'list.txt'}:4"]
    assert "a.csv" in reasons[str(tmp_path / "clips")]

    # Names stay unique: a second `a` gets a suffix.
    write_video(tmp_path / "a.mp4", [face_scene(astronaut, 0)] * 2)
    sources, _ = expand_inputs([tmp_path / "clips" / "a.avi", tmp_path / "a.mp4"])
    assert [s.name for s in sources] == ["a", "a-2"]


def test_image_sequence_skips_undecodable_files(tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((16, 16, 3), np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])  # valid header, broken data
    with ImageSequenceReader([truncated, good]) as reader:
        frames = list(reader)
    assert [(f.index, f.path.name) for f in frames] == [(1, "good.png")]
    assert reader.unreadable == [truncated]
    with pytest.raises(SourceError, match="truncated.png|none of its"):
        ImageSequenceReader([truncated])


def test_stream_keeps_frames_without_faces(tmp_path, detector, astronaut):
    frames = [face_scene(astronaut, 20 + 4 * i, face=i not in (2, 3)) for i in range(6)]
    path = write_video(tmp_path / "gap.mp4", frames)
    sources, _ = expand_inputs([path])
    out = list(iter_frame_faces(sources[0], detector, size=112, faces="all", batch=4))
    assert [ff.frame for ff in out] == list(range(6))
    assert [len(ff.faces) for ff in out] == [1, 1, 0, 0, 1, 1]
    assert {f.track for ff in out for f in ff.faces} == {0}  # the same face after the gap
    face = out[0].faces[0]
    assert face.crop.shape == (112, 112, 3) and face.matrix.shape == (2, 3)
    assert out[0].image.shape == (240, 320, 3)
    # An opened reader can be passed in as well (predict reads its metadata first).
    with open_source(sources[0]) as reader:
        assert reader.expected_frames == 6
        lean = list(iter_frame_faces(reader, detector, size=224, keep_image=False))
    assert [len(ff.faces) for ff in lean] == [1, 1, 0, 0, 1, 1]
    assert lean[0].image is None and lean[0].faces[0].crop.shape == (224, 224, 3)
