"""Faults a long run meets: a SIGKILL mid-epoch, a full disk, an output folder that cannot exist.

Each case runs the real `abaw pretrain-mae` (test-tiny preset) in a subprocess, as `make pipeline`
does, on 24 demo faces (3 steps per epoch, a checkpoint every 2 steps).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from abaw_cli.train.checkpoint import load_checkpoint

ABAW = [sys.executable, "-m", "abaw_cli"]
EPOCHS = "12"  # 36 steps: long enough to be killed in the middle


@pytest.fixture(scope="module")
def faces24(demo_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faces24")
    for i, img in enumerate(sorted((demo_root / "pool").rglob("*.jpg"))[:24]):
        shutil.copy(img, folder / f"{i:03d}.jpg")
    return folder


def pretrain_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [*ABAW, "pretrain-mae", str(data), "--out", str(out), "--preset", "test-tiny", "--epochs", EPOCHS,
            "--seed", "3", "--device", "cpu", *extra]


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def logged_steps(run: Path) -> int:
    log = run / "log.jsonl"
    if not log.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines() if line.strip().startswith("{")]
    return max(steps, default=0)


def model_state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint-last.pt")["model"]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(faces24, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    # The uninterrupted run goes beside the one to be killed (one thread each, two cores).
    with (tmp_path / "full.log").open("w") as full_log:  # the child keeps its own copy of the file
        uninterrupted = subprocess.Popen(pretrain_cmd(faces24, full), env=child_env(), stdout=full_log, stderr=subprocess.STDOUT)
    proc = subprocess.Popen(pretrain_cmd(faces24, killed), env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Kill once a checkpoint exists and training is inside an epoch (step not on an epoch boundary).
    while time.time() < deadline and proc.poll() is None:
        step = logged_steps(killed)
        if step >= 8 and step % 3 != 0 and (killed / "checkpoint-last.pt").exists():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-epoch"
    killed_at = logged_steps(killed)
    assert killed_at < 36
    load_checkpoint(killed / "checkpoint-last.pt")  # whole: it was written to a temporary name, then renamed

    assert uninterrupted.wait() == 0, (tmp_path / "full.log").read_text()[-2000:]
    subprocess.run(pretrain_cmd(faces24, killed, "--resume"), check=True, env=child_env(), capture_output=True)
    assert not [p.name for p in killed.iterdir() if ".tmp-" in p.name], "a killed write's temporary file was left behind"
    a, b = model_state(full), model_state(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after SIGKILL at step {killed_at} + resume"
    assert (killed / "encoder.pt").exists()


def _limit_file_size(limit: int):
    def apply() -> None:  # runs in the child: writes past `limit` bytes fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_gives_a_clear_error_and_keeps_earlier_artifacts(faces24, tmp_path):
    run = tmp_path / "run"
    subprocess.run(pretrain_cmd(faces24, run, "--max-steps", "4"), check=True, env=child_env(), capture_output=True)
    before = (run / "checkpoint-last.pt").read_bytes()

    limit = len(before) // 2  # the next checkpoint cannot be written whole
    res = subprocess.run(pretrain_cmd(faces24, run, "--resume", "--max-steps", "10"), env=child_env(), capture_output=True, text=True,
                         preexec_fn=_limit_file_size(limit))
    assert res.returncode == 2, res.stderr[-2000:]
    message = " ".join(res.stdout.split() + res.stderr.split())
    assert "cannot write" in message and "intact" in message, message[-1500:]
    assert "Traceback" not in res.stderr
    assert (run / "checkpoint-last.pt").read_bytes() == before  # the checkpoint that failed to replace it
    load_checkpoint(run / "checkpoint-last.pt")
    # encoder.pt is rewritten at each epoch end (before that epoch's checkpoint); whichever version
    # is there must be whole.
    assert set(torch.load(run / "encoder.pt", weights_only=True)["model"]) >= {"cls_token", "pos_embed"}
    assert not [p for p in run.iterdir() if ".tmp" in p.name], "a half-written temporary file was left behind"


def test_output_folder_that_cannot_be_created_is_a_clear_error(faces24, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    res = subprocess.run(pretrain_cmd(faces24, blocker / "run", "--max-steps", "2"), env=child_env(),
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stderr[-2000:]
    message = " ".join(res.stdout.split() + res.stderr.split())
    assert "cannot write" in message and "a_file" in message, message[-1500:]
    assert "Traceback" not in res.stderr
    assert blocker.read_text() == "not a folder"


@pytest.fixture()
def faces_with_a_corrupt_one(faces24, tmp_path) -> tuple[Path, Path]:
    folder = tmp_path / "faces"
    shutil.copytree(faces24, folder)
    bad = folder / "007.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG any more")
    return folder, bad


def test_a_corrupt_image_is_skipped_named_and_counted(faces_with_a_corrupt_one, tmp_path, caplog):
    from abaw_cli.train.mae import pretrain_mae

    folder, bad = faces_with_a_corrupt_one
    run = tmp_path / "run"
    with caplog.at_level("WARNING"):
        result = pretrain_mae([folder], run, "test-tiny", overrides={
            "optim.epochs": 2, "optim.device": "cpu", "optim.max_unreadable_share": 0.05})
    assert result.unreadable == [str(bad)]
    assert str(bad) in caplog.text and "unreadable" in caplog.text
    assert caplog.text.count(str(bad)) == 1  # named once, not at every draw
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["unreadable_images"] == 1 and all(r["unreadable_images"] <= 1 for r in rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["unreadable_images"]["count"] == 1 and str(bad) in metrics["unreadable_images"]["paths"]
    assert metrics["epochs_done"] == 2  # the run went on


def test_too_many_unreadable_images_stop_the_run_naming_them(faces_with_a_corrupt_one, tmp_path):
    folder, bad = faces_with_a_corrupt_one
    # 1 of 24 is 4%, more than the default 0.1%: the run stops at the step that meets it, exit 2.
    res = subprocess.run(pretrain_cmd(folder, tmp_path / "run"), env=child_env(), capture_output=True, text=True)
    assert res.returncode == 2, res.stderr[-2000:]
    message = " ".join(res.stdout.split() + res.stderr.split())
    assert "1 of 24 training images are unreadable" in message and "007.jpg" in message, message[-1500:]
    assert "Traceback" not in res.stderr


def test_check_images_decodes_everything_before_training(faces_with_a_corrupt_one, tmp_path):
    from abaw_cli.image_files import check_images

    folder, bad = faces_with_a_corrupt_one
    truncated = folder / "011.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])  # OpenCV would fill the rest with grey; PIL refuses
    problems = check_images(sorted(folder.iterdir()))
    assert [p for p, _ in problems] == [str(bad), str(truncated)]
    run = tmp_path / "run"
    res = subprocess.run(pretrain_cmd(folder, run, "--check-images"), env=child_env(), capture_output=True, text=True)
    assert res.returncode == 2, res.stderr[-2000:]
    message = " ".join(res.stdout.split() + res.stderr.split())
    assert "22 of 24 images decode" in message and "2 of 24 training images are unreadable" in message, message[-1500:]
    assert not (run / "checkpoint-last.pt").exists()  # stopped before the first step


@pytest.mark.parametrize(("stage", "path"), [("train-mtl", "x[old]/nope"), ("cotrain", "x[/x]/nope")])
def test_errors_print_paths_verbatim(stage, path, tmp_path):
    from typer.testing import CliRunner

    from abaw_cli.cli import app

    missing = tmp_path / path
    result = CliRunner().invoke(app, [stage, "--data", str(missing), "--out", str(tmp_path / "run"), "--preset", "test-tiny"])
    assert result.exit_code == 2, result.output
    assert str(missing) in result.output, result.output
    assert "Traceback" not in result.output
