"""crop-faces and predict under `torchrun --nproc_per_node=2` on CPU (gloo): each source goes to
exactly one rank, the outputs are those of one process (one merged faces.csv, the same tables),
a rerun resumes every rank's sources, and bad input keeps its handling."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from abaw_cli.data.formats import PREDICTION_TEXT_COLUMNS, read_prediction_table
from abaw_cli.faces.crop import crop_faces
from abaw_cli.faces.output import CropSettings
from abaw_cli.predict.run import PredictRequest, run_predict
from abaw_cli.train.distributed import owner_ranks

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"

pytestmark = pytest.mark.usefixtures("one_thread")


def torchrun(*args, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "ABAW_MODEL": "", "COLUMNS": "200"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "-m", "abaw_cli", *map(str, args), "--device", "cpu"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def scene(x: int, face: bool = True) -> np.ndarray:
    frame = np.full((200, 280, 3), 96, np.uint8)
    if face:
        frame[20:180, x : x + 160] = cv2.resize(data.astronaut(), (160, 160), interpolation=cv2.INTER_AREA)
    return frame


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (frames[0].shape[1], frames[0].shape[0]))
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of three short videos (one frame without a face) and two photos."""
    folder = tmp_path_factory.mktemp("inputs")
    write_video(folder / "a.mp4", [scene(10 + 8 * i, face=i != 2) for i in range(5)])
    write_video(folder / "b.mp4", [scene(100 - 6 * i) for i in range(3)])
    write_video(folder / "c.mp4", [scene(60)] * 2)
    photos = folder / "photos"
    photos.mkdir()
    for name, rgb in (("p1.jpg", data.astronaut()), ("p2.jpg", np.ascontiguousarray(data.astronaut()[:, ::-1]))):
        cv2.imwrite(str(photos / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def read_faces(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def ranks_of(output: str, names: list[str]) -> dict[str, list[int]]:
    """Which ranks said they took each source (`rank R of 2: NAME` log lines)."""
    return {n: sorted(int(r) for r in re.findall(rf"rank (\d) of 2: {re.escape(n)}\b", output)) for n in names}


def test_sources_are_dealt_heaviest_first_each_to_one_rank():
    owners = owner_ranks([5, 1, 1, 3, 2], 2)
    assert owners == [0, 0, 1, 1, 1]  # 5 -> 0, 3 -> 1, 2 -> 1, then 1s fill rank 0 and 1 by load
    assert owner_ranks([1, 2, 3], 1) == [0, 0, 0]
    assert sorted(set(owner_ranks(list(range(10)), 4))) == [0, 1, 2, 3]


def test_crop_faces_two_ranks_match_one_process_and_resume(inputs, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(3000))
    single = crop_faces([inputs], tmp_path / "one", CropSettings(), device="cpu", show_progress=False)
    assert [r.status for r in single.results] == ["done"] * 4  # a, b, c and the photos folder

    out = tmp_path / "two"
    proc = torchrun("crop-faces", inputs, corrupt, "--out", out, "--batch", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = " ".join((proc.stdout + proc.stderr).split())
    assert "corrupt.mp4: cannot be opened as a video" in text  # a bad input is still a reported skip
    owners = ranks_of(proc.stdout + proc.stderr, ["a", "b", "c", f"{inputs.name}_photos", "corrupt"])
    assert all(len(r) == 1 for r in owners.values()), owners
    assert {r[0] for r in owners.values()} == {0, 1}  # both ranks worked
    # One faces.csv, the one-process table (boxes and landmarks within float noise).
    one, two = read_faces(tmp_path / "one" / "faces.csv"), read_faces(out / "faces.csv")
    key = lambda r: (r["source"], r["frame"], r["track"])  # noqa: E731
    assert sorted(map(key, one)) == sorted(map(key, two))
    for a, b in zip(sorted(one, key=key), sorted(two, key=key)):
        assert (a["face"], a["crop"], a["time_s"]) == (b["face"], b["crop"], b["time_s"])
        for col in ("x1", "y1", "x2", "y2", "left_eye_x", "mouth_right_y"):
            if a[col]:
                assert abs(float(a[col]) - float(b[col])) < 0.05, (a, b)
    crops = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert crops == sorted(p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*.jpg"))
    assert not (out / ".crop-faces" / "partial").exists()

    # Again: every rank finds its sources done; nothing is detected or rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    again = torchrun("crop-faces", inputs, corrupt, "--out", out, "--batch", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "detecting with" not in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == stamps
    assert read_faces(out / "faces.csv") == two


def test_predict_two_ranks_give_the_one_process_tables_and_refuse_bad_input(inputs, tmp_path, tiny_mtl_model):
    single = run_predict(PredictRequest([str(inputs)], tiny_mtl_model, out=tmp_path / "one", device="cpu", show_progress=False))
    names = [s.name for s in single.sources]
    assert sorted(names) == ["a", "b", "c", f"{inputs.name}_photos"]
    proc = torchrun("predict", inputs, "--model", tiny_mtl_model, "--out", tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    owners = ranks_of(proc.stdout + proc.stderr, names)
    assert all(len(r) == 1 for r in owners.values()) and {r[0] for r in owners.values()} == {0, 1}, owners
    assert (proc.stdout + proc.stderr).count("predict: mtl model") == 1  # one summary, rank 0's, of all 4
    for name in names:
        one, two = read_prediction_table(tmp_path / "one" / f"{name}.csv"), read_prediction_table(tmp_path / "two" / f"{name}.csv")
        assert list(one) == list(two)
        for col in one:
            if col in PREDICTION_TEXT_COLUMNS and col != "image":
                np.testing.assert_array_equal(one[col], two[col])
            elif col != "image":
                np.testing.assert_allclose(one[col], two[col], atol=2e-3, equal_nan=True, err_msg=col)

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video" * 200)
    bad = torchrun("predict", inputs, broken, "--model", tiny_mtl_model, "--out", tmp_path / "bad")
    assert bad.returncode != 0
    assert "broken.mp4" in bad.stdout + bad.stderr
    assert not (tmp_path / "bad").exists()
