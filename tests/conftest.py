"""Shared fixtures: tests run on data the project generates itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests must behave the same on a 2-core CI machine and a workstation.
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
    from abaw_cli.stages.train_mtl import train_mtl

    out = tmp_path_factory.mktemp("tiny-mtl")
    best, _ = train_mtl(out, "test-tiny", overrides={"data.root": str(demo_root / "mtl"), "optim.max_steps": 4, "optim.epochs": 1})
    return best
