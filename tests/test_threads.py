"""The CPU thread rule (runtime.cores_per_rank / cpu_threads / FreeCoreThreads) and that crop-faces,
predict and the training engine follow it: every core of the process, shared among local torchrun
ranks, less the cores other processes keep busy."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from abaw_cli import runtime
from abaw_cli.faces.detector import FaceDetector
from abaw_cli.faces.crop import crop_faces
from abaw_cli.predict.batching import FacePredictor
from abaw_cli.predict.run import PredictRequest, run_predict
from abaw_cli.runtime import FreeCoreThreads, cores_per_rank, cpu_threads
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


class FakeMachine:
    """A /proc/stat of `cores` cores and this process's CPU clock, both advanced by the test."""

    def __init__(self, path: Path, cores: int):
        self.path, self.cores = path, cores
        self.wall = self.own = 0.0
        self.others = 0.0  # cores the others keep busy while this process sleeps
        self.busy = [0] * cores
        self.idle = [1000] * cores  # ticks since boot
        self.write()

    def write(self) -> None:
        lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]  # the all-cores line: not ours to count
        lines += [f"cpu{i} {b} 0 0 {d} 0 0 0 0 0 0" for i, (b, d) in enumerate(zip(self.busy, self.idle))]
        self.path.write_text("\n".join(lines) + "\nintr 1 2 3\n")

    def run(self, seconds: float, ours: float, others: float) -> None:
        """`seconds` pass with this process busy on `ours` cores and others on `others` cores."""
        self.wall += seconds
        self.own += ours * seconds
        ticks = int(100 * seconds)  # USER_HZ
        share = (ours + others) / self.cores
        for i in range(self.cores):
            self.busy[i] += round(ticks * share)
            self.idle[i] += ticks - round(ticks * share)
        self.write()

    def threads(self) -> FreeCoreThreads:
        return FreeCoreThreads(
            window_s=0.5, first_window_s=0.1, stat_path=self.path, clock=lambda: self.wall, own_cpu=lambda: self.own,
            sleep=lambda s: self.run(s, ours=0.0, others=self.others),
        )


def test_free_core_threads_give_back_the_cores_a_neighbour_keeps_busy(machine, one_torch_thread, tmp_path):
    machine(2)
    fake = FakeMachine(tmp_path / "stat", 2)
    threads = fake.threads()
    fake.run(1.0, ours=2.0, others=0.0)  # alone: our own work is not load
    assert threads.update() == 2
    fake.run(1.0, ours=0.5, others=1.5)  # a busy neighbour on both cores
    assert threads.update() == 1 and torch.get_num_threads() == 1
    fake.run(0.2, ours=1.0, others=0.0)  # within the window: nothing re-read
    assert threads.update() == 1
    fake.run(1.0, ours=1.0, others=0.1)  # the neighbour is gone: back to both cores
    assert threads.update() == 2 and torch.get_num_threads() == 2


def test_free_core_threads_shrink_at_once_and_grow_a_thread_a_window(machine, one_torch_thread, tmp_path):
    machine(16, 2)  # two local ranks: at most 8 threads each
    fake = FakeMachine(tmp_path / "stat", 16)
    threads = fake.threads()
    fake.run(1.0, ours=8.0, others=8.0)  # the other rank
    assert threads.update() == 8
    fake.run(1.0, ours=8.0, others=8.0 + 4.0)  # the other rank and a 4-core job
    assert threads.update() == 4
    seen = []
    for _ in range(4):  # the other job left: the other rank alone beside us
        fake.run(1.0, ours=threads.threads, others=8.0)
        seen.append(threads.update())
    assert seen == [5, 6, 7, 8]


def test_the_first_update_waits_out_a_short_first_window(machine, one_torch_thread, tmp_path):
    """A detector built and used at once still sees the neighbour before its first batch."""
    machine(2)
    fake = FakeMachine(tmp_path / "stat", 2)
    fake.others = 1.5
    threads = fake.threads()
    fake.run(0.02, ours=1.0, others=1.5)  # construction to the first detect: shorter than the first window
    assert threads.update() == 1
    assert fake.wall == pytest.approx(0.1)


def test_free_core_threads_use_every_core_without_a_proc_stat(machine, one_torch_thread, tmp_path):
    machine(3)
    threads = FreeCoreThreads(stat_path=tmp_path / "missing")
    assert threads.update() == 3 and torch.get_num_threads() == 3


def test_free_core_threads_read_this_machines_proc_stat(one_torch_thread):
    if not Path("/proc/stat").is_file():
        pytest.skip("no /proc/stat here")
    threads = FreeCoreThreads(window_s=0.0)
    assert threads.update() in range(1, cores_per_rank() + 1)


def _threads_seen(monkeypatch, cls, method: str) -> list[int]:
    """torch's thread count each time cls.method runs (the real method still runs); for detect,
    0 when the detector does not share cores (has no FreeCoreThreads)."""
    seen: list[int] = []
    real = getattr(cls, method)

    def recording(self, *args, **kwargs):
        shares = not isinstance(self, FaceDetector) or isinstance(self.threads, FreeCoreThreads)
        seen.append(torch.get_num_threads() if shares else 0)
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


@pytest.fixture
def no_proc_stat(monkeypatch, tmp_path):
    """FreeCoreThreads without /proc/stat (the fake 16 cores have none): every core of the rank."""
    monkeypatch.setattr(runtime, "PROC_STAT", tmp_path / "no-proc-stat")


def test_crop_faces_detects_on_every_core_of_its_rank(machine, no_proc_stat, one_torch_thread, monkeypatch, face_video, tmp_path):
    machine(16, 8)  # 2 cores a rank: more than the 1 torch thread it starts with, fewer than 16
    seen = _threads_seen(monkeypatch, FaceDetector, "detect")
    report = crop_faces([face_video], tmp_path / "crops", device="cpu", show_progress=False)
    assert [r.faces for r in report.results] == [4]
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == 1


def test_predict_runs_detector_and_model_on_every_core_of_its_rank(machine, no_proc_stat, one_torch_thread, monkeypatch, face_video, tmp_path, tiny_mtl_model):
    machine(16, 8)
    detected = _threads_seen(monkeypatch, FaceDetector, "detect")
    predicted = _threads_seen(monkeypatch, FacePredictor, "__call__")
    report = run_predict(PredictRequest(inputs=[face_video], model=tiny_mtl_model, out=tmp_path / "table.csv", device="cpu", show_progress=False))
    assert report.sources[0].faces == 4
    assert detected and set(detected) == {2}
    assert predicted and set(predicted) == {2}
    assert torch.get_num_threads() == 1
