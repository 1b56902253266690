"""Shared fixtures: tests run on data the project generates itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests must behave the same on a 2-core CI machine and a workstation.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """Micro models run fastest on one thread, and far faster when other jobs share the cores.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The `tiny` demo data set (seed 0), generated once per test session."""
    from abaw_cli.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, scale="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_mtl_model(demo_root, tmp_path_factory) -> Path:
    """best.pt of a real train-mtl run (preset test-tiny, 4 steps) on the tiny demo set: a model
    with the checkpoint layout predict and score read (weights barely trained)."""
    from abaw_cli.train.mtl import train_mtl

    out = tmp_path_factory.mktemp("tiny-mtl")
    return train_mtl(out, "test-tiny", overrides={"data.root": str(demo_root / "mtl"), "optim.max_steps": 4, "optim.epochs": 1}).best_checkpoint


@pytest.fixture(scope="session")
def tiny_cotrain_run(demo_root, tmp_path_factory):
    """(run folder, best.pt, result) of a real cotrain run (preset test-tiny, 2 epochs) on the tiny
    demo LSD set: a two-view Masked CoTEX model with the checkpoint layout predict reads."""
    from abaw_cli.train.cotrain import cotrain

    out = tmp_path_factory.mktemp("cotrain") / "run"
    result = cotrain(out, "test-tiny", overrides={"data.root": str(demo_root / "lsd"), "optim.device": "cpu"})
    return out, result.best_checkpoint, result


@pytest.fixture(scope="session")
def demo_small_root(tmp_path_factory) -> Path:
    """The `small` demo data set (seed 0, what `make pipeline` renders; about 30 s on 2 cores):
    enough labelled faces for a model to learn expressions from, and two 8 s demo videos."""
    from abaw_cli.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo-small")
    generate_demo(out, scale="small", seed=0)
    return out


@pytest.fixture(scope="session")
def lsd_expression_model(demo_small_root, tmp_path_factory) -> Path:
    """best.pt of a real cotrain run that learns expressions in about two minutes on 2 cores: the
    cotrain ablation's `single` system (one unmasked view) cut to 2 blocks of the cpu-small preset,
    4 epochs on the small demo's 6,000 synthetic LSD faces from random weights. Measured with seeds
    0/1 (one single-threaded run per core): real-style validation macro-F1 0.73/0.67 (chance 0.16),
    video agreement 0.55/0.58. 4 epochs of 6,000 faces are the steps that 16 epochs of the earlier
    1,500 took (0.61/0.55/0.67 and 0.63/0.56/0.71 then); fewer steps sit at the edge of learning,
    where a CPU's rounding decides whether seed 0 learns at all (docs/experiments.md, eighth and
    ninth passes). No loader workers: without style augmentation loading is light, and the two
    cores train (170-186 s against 227 s with the preset's 2 workers and 1 training thread)."""
    from abaw_cli.train.cotrain import cotrain

    out = tmp_path_factory.mktemp("lsd-expressions")
    result = cotrain(out, "cpu-small", overrides={
        "data.root": str(demo_small_root / "lsd"), "init": "none", "optim.seed": 0,
        "model.num_views": 1, "model.mask_ratio": 0.0, "model.depth": 2, "optim.epochs": 4,
        # Without the preset's style augmentation, which slows a random-init 2-block ViT (video
        # agreement 0.26 with it at 8 epochs).
        "data.style_augment": False, "optim.num_workers": 0,
        # The batch the numbers above were measured with (the preset's is 16: twice the steps).
        "optim.batch_size": 32,
    })
    return result.best_checkpoint
