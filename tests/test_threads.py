"""The CPU thread rule (runtime.cores_per_rank / cpu_threads) and that crop-faces, predict and the
training engine follow it: every core of the process, shared among local torchrun ranks."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from abaw_cli.faces.detector import FaceDetector
from abaw_cli.faces.crop import crop_faces
from abaw_cli.predict.batching import FacePredictor
from abaw_cli.predict.run import PredictRequest, run_predict
from abaw_cli.runtime import cores_per_rank, cpu_threads
from abaw_cli.train.engine import cpu_training_threads


@pytest.fixture
def machine(monkeypatch):
    """Pretend this process may use `cores` cores, in a torchrun job of `local_ranks` ranks here."""

    def set_machine(cores: int, local_ranks: int | None = None) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
        if local_ranks is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_ranks))

    return set_machine


@pytest.fixture
def one_torch_thread():
    """Start from one torch thread, so that the rule's own number is what a stage is seen to use."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores", [2, 16])
def test_one_process_gets_every_core(machine, cores):
    machine(cores)
    assert cores_per_rank() == cores


@pytest.mark.parametrize(("cores", "local_ranks", "expected"), [(16, 4, 4), (16, 3, 5), (2, 2, 1), (2, 4, 1)])
def test_torchrun_ranks_share_the_cores(machine, cores, local_ranks, expected):
    machine(cores, local_ranks)
    assert cores_per_rank() == expected


def test_training_threads_leave_the_loader_workers_their_cores(machine):
    machine(16, 2)
    assert cpu_training_threads(num_workers=4) == 4
    machine(2)
    assert cpu_training_threads(num_workers=4) == 1


def test_cpu_threads_sets_and_restores_and_leaves_a_gpu_alone(machine, one_torch_thread):
    machine(3)
    with cpu_threads(torch.device("cpu")):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 1
    with cpu_threads(torch.device("cpu"), threads=2):
        assert torch.get_num_threads() == 2
    with cpu_threads(torch.device("cuda")):  # no CUDA needed: the device is only looked at
        assert torch.get_num_threads() == 1


def _threads_seen(monkeypatch, cls, method: str) -> list[int]:
    """torch's thread count each time cls.method runs (the real method still runs)."""
    seen: list[int] = []
    real = getattr(cls, method)

    def recording(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, recording)
    return seen


@pytest.fixture
def face_video(tmp_path) -> Path:
    path = tmp_path / "face.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (320, 240))
    for i in range(4):
        frame = np.full((240, 320, 3), 96, np.uint8)
        frame[40:200, 30 + 4 * i : 190 + 4 * i] = cv2.resize(data.astronaut(), (160, 160), interpolation=cv2.INTER_AREA)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_crop_faces_detects_on_every_core_of_its_rank(machine, one_torch_thread, monkeypatch, face_video, tmp_path):
    machine(16, 8)  # 2 cores a rank: more than the 1 torch thread it starts with, fewer than 16
    seen = _threads_seen(monkeypatch, FaceDetector, "detect")
    report = crop_faces([face_video], tmp_path / "crops", device="cpu", show_progress=False)
    assert [r.faces for r in report.results] == [4]
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == 1


def test_predict_runs_detector_and_model_on_every_core_of_its_rank(machine, one_torch_thread, monkeypatch, face_video, tmp_path, tiny_mtl_model):
    machine(16, 8)
    detected = _threads_seen(monkeypatch, FaceDetector, "detect")
    predicted = _threads_seen(monkeypatch, FacePredictor, "__call__")
    report = run_predict(PredictRequest(inputs=[face_video], model=tiny_mtl_model, out=tmp_path / "table.csv", device="cpu", show_progress=False))
    assert report.sources[0].faces == 4
    assert detected and set(detected) == {2}
    assert predicted and set(predicted) == {2}
    assert torch.get_num_threads() == 1
