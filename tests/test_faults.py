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
    subprocess.run(pretrain_cmd(faces24, full), check=True, env=child_env(), capture_output=True)

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
