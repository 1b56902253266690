"""`abaw crop-faces` end to end on small real inputs (MTCNN on CPU)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data
from typer.testing import CliRunner

from abaw_cli.cli import app
from abaw_cli.faces.detector import FaceDetector
from abaw_cli.faces.manifest import FACES_COLUMNS
from abaw_cli.faces.sources import expand_inputs
from abaw_cli.faces.stream import iter_frame_faces
from abaw_cli.faces.tracker import box_iou
from abaw_cli.faces.video import open_source
from abaw_cli.faces.crop import crop_faces, process_source
from abaw_cli.faces.output import CropSettings, CropWriter, OutputFolder

runner = CliRunner()


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def scene(x: int, face: bool = True) -> np.ndarray:
    frame = np.full((240, 320, 3), 96, np.uint8)
    if face:
        frame[40:200, x : x + 160] = cv2.resize(data.astronaut(), (160, 160), interpolation=cv2.INTER_AREA)
    return frame


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    """A 5-frame video (frame 2 without a face), a photo, a corrupt video and a text file of prose."""
    d = tmp_path / "in"
    d.mkdir()
    paths = {
        "video": write_video(d / "talk.mp4", [scene(30 + 4 * i, face=i != 2) for i in range(5)]),
        "photo": d / "portrait.jpg",
        "corrupt": d / "corrupt.mp4",
        "text": d / "readme.txt",
    }
    cv2.imwrite(str(paths["photo"]), cv2.cvtColor(cv2.resize(data.astronaut(), (256, 256)), cv2.COLOR_RGB2BGR))
    paths["corrupt"].write_bytes(np.random.default_rng(1).bytes(3000))
    paths["text"].write_text("These are my notes about the videos.\n")
    return paths


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == FACES_COLUMNS
        return list(reader)


# First in this file on purpose: the session's demo data is generated (in forked workers) before
# the tests below run OpenCV from several threads. abaw_cli.data.demo's fork workers call
# cv2.setNumThreads, which deadlocks in a child forked after multi-threaded OpenCV use.
def test_demo_videos_detection_rate(demo_root, tmp_path):
    """The rendered demo scenes: a face is found in >= 95% of frames, and it is the true face."""
    videos = sorted((demo_root / "videos").glob("*.mp4"))
    assert videos, f"no demo videos in {demo_root / 'videos'}"
    out = tmp_path / "crops"
    report = crop_faces(videos, out, CropSettings(fps=5), device="cpu", show_progress=False)
    assert all(r.status == "done" for r in report.results)
    rows = read_table(out / "faces.csv")
    assert len(rows) >= 10
    hits = 0
    for row in rows:
        with open(demo_root / "videos" / f"{row['source']}.csv", newline="") as f:
            truth = {r["frame"]: r for r in csv.DictReader(f)}[row["frame"]]
        if row["face"] == "1":
            found = np.array([[float(row[k]) for k in ("x1", "y1", "x2", "y2")]])
            true = np.array([[float(truth[k]) for k in ("x1", "y1", "x2", "y2")]])
            hits += box_iou(found, true)[0, 0] > 0.4
    rate = hits / len(rows)
    assert rate >= 0.95, [(r.name, r.detection_rate) for r in report.results]


def test_crop_faces_command_skips_bad_inputs_and_resumes(tmp_path, inputs):
    out = tmp_path / "crops"
    args = ["crop-faces", *map(str, inputs.values()), "--out", str(out), "--device", "cpu", "--batch", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "corrupt.mp4: cannot be opened as a video" in text
    assert "readme.txt: not a list of video/image paths" in text

    rows = read_table(out / "faces.csv")
    talk = [r for r in rows if r["source"] == "talk"]
    assert [r["frame"] for r in talk] == ["0", "1", "2", "3", "4"]  # every frame, in order
    assert [r["face"] for r in talk] == ["1", "1", "0", "1", "1"]  # the empty frame is a row too
    assert talk[2]["crop"] == "" and talk[2]["x1"] == ""
    assert talk[1]["time_s"] == "0.0400" and talk[1]["crop"] == "talk/00001.jpg"
    assert sorted(p.name for p in (out / "talk").iterdir()) == ["00000.jpg", "00001.jpg", "00003.jpg", "00004.jpg"]
    crop = cv2.imread(str(out / "talk" / "00000.jpg"))
    assert crop.shape == (112, 112, 3)
    portrait = [r for r in rows if r["source"] == "portrait"]
    assert len(portrait) == 1 and portrait[0]["face"] == "1" and portrait[0]["time_s"] == ""
    assert float(portrait[0]["score"]) > 0.99
    assert {r["source"] for r in rows} == {"talk", "portrait"}

    # Running again does no work twice: nothing is re-detected or rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    for name in ("talk", "portrait"):  # their summary-table rows
        assert re.search(rf"{name}\s*│\s*already done", again.output), again.output
    assert "detecting with" not in again.output  # no detector was even built
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == stamps
    assert read_table(out / "faces.csv") == rows

    # The same folder with other settings is refused rather than mixed.
    other = runner.invoke(app, [*args, "--size", "224"])
    assert other.exit_code != 0 and "other settings" in " ".join(other.output.split())


def test_nothing_usable_exits_non_zero(tmp_path, inputs):
    result = runner.invoke(
        app, ["crop-faces", str(inputs["corrupt"]), str(inputs["text"]), "--out", str(tmp_path / "o"), "--device", "cpu"]
    )
    assert result.exit_code == 1
    assert "nothing could be processed" in result.output


def test_two_faces_side_by_side_give_two_tracks(tmp_path):
    half = cv2.resize(data.astronaut(), (224, 224), interpolation=cv2.INTER_AREA)
    pair = np.concatenate([half, half[:, ::-1]], axis=1)  # the photo and its mirror image
    path = tmp_path / "pair.png"
    cv2.imwrite(str(path), cv2.cvtColor(pair, cv2.COLOR_RGB2BGR))
    out = tmp_path / "crops"
    report = crop_faces([path], out, CropSettings(size=112, faces="all"), device="cpu", show_progress=False)
    assert report.results[0].tracks == 2 and report.results[0].faces == 2
    rows = read_table(out / "faces.csv")
    assert sorted(r["track"] for r in rows) == ["0", "1"]
    assert sorted(r["crop"] for r in rows) == ["pair_0/00000.jpg", "pair_1/00000.jpg"]
    assert (out / "pair_0" / "00000.jpg").exists() and (out / "pair_1" / "00000.jpg").exists()
    centres = sorted((float(r["x1"]) + float(r["x2"])) / 2 for r in rows)
    assert centres[0] < 224 < centres[1]  # one face in each half


def test_interrupted_source_leaves_nothing_and_is_redone(tmp_path, inputs):
    out = tmp_path / "crops"
    settings = CropSettings()
    folder = OutputFolder(out, settings)
    folder.prepare()
    (source,), _ = expand_inputs([inputs["video"]])
    detector = FaceDetector(device="cpu", batch=2)
    writer = CropWriter()

    def stop_after_three(_n: int, seen=[0]) -> None:  # a real interruption, mid-source
        seen[0] += 1
        if seen[0] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        process_source(source, open_source(source), detector, settings, folder, writer, on_frame=stop_after_three)
    writer.close()
    assert (folder.partial_dir / "talk").exists()  # crops so far only in the partial folder
    assert not (out / "talk").exists() and folder.record("talk") is None

    report = crop_faces([inputs["video"]], out, settings, device="cpu", show_progress=False)
    assert [r.status for r in report.results] == ["done"]
    assert not folder.partial_dir.exists()
    rows = read_table(out / "faces.csv")
    assert [r["frame"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert len(list((out / "talk").glob("*.jpg"))) == 4


def test_a_large_photo_is_searched_on_a_640_copy_and_cropped_at_full_resolution(tmp_path):
    """A 1350 px photo: MTCNN sees a copy of 640 px, the boxes come back in the photo's pixels
    (where a search of the 640 px photo puts them, scaled), and the crop is cut from the original."""
    from abaw_cli.faces.align import align_face

    big = cv2.resize(data.astronaut(), (1350, 1350), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    detector = FaceDetector(device="cpu")
    searched: list[tuple[int, ...]] = []
    real_detect = detector._mtcnn.detect
    detector._mtcnn.detect = lambda stack, **kw: (searched.append(stack.shape), real_detect(stack, **kw))[1]
    (source,), _ = expand_inputs([path])
    (ff,) = list(iter_frame_faces(source, detector, size=224))
    assert searched == [(1, 640, 640, 3)]
    assert ff.image.shape == (1350, 1350, 3) and len(ff.faces) == 1
    small = cv2.resize(big, (640, 640), interpolation=cv2.INTER_AREA)
    expected = detector.detect([small])[0].boxes[:1] * (1350 / 640)
    assert box_iou(ff.faces[0].box[None], expected)[0, 0] > 0.97
    crop, _ = align_face(big, ff.faces[0].landmarks, 224)
    np.testing.assert_array_equal(ff.faces[0].crop, crop)
    assert ff.faces[0].box[2] > 640  # in the photo's own pixels
