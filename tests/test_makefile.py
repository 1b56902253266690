"""`make install`'s choice of interpreter: PYTHON= when given, else the first Python 3.11+ on PATH
under any of its usual names; a clear message naming the versions when there is none; and a
second `make install` that has nothing to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")

pytestmark = pytest.mark.skipif(MAKE is None or not Path("/bin/bash").exists(), reason="needs make and bash")


def make(*args: str, path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": str(path)}
    env.pop("PYTHON", None)
    return subprocess.run([MAKE, "-s", "-C", str(REPO), *args], env=env, capture_output=True, text=True, timeout=60)


def fake_bin(tmp_path: Path, too_old: list[str], real: list[str]) -> Path:
    """A PATH folder where `too_old` names are pythons older than 3.11 and `real` are this one."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in too_old:  # answers the version check as Python 3.8 would
        (folder / name).write_text("#!/bin/sh\nexit 1\n")
        (folder / name).chmod(0o755)
    for name in real:
        (folder / name).symlink_to(sys.executable)
    return folder


def test_the_first_python_of_at_least_3_11_is_taken_whatever_its_name(tmp_path):
    assert sys.version_info >= (3, 11)
    found = make("python", path=fake_bin(tmp_path, too_old=["python3"], real=["python3.12"]))
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(tmp_path / "bin" / "python3.12")


def test_no_suitable_python_says_which_versions_it_needs(tmp_path):
    folder = fake_bin(tmp_path, too_old=["python3", "python"], real=[])
    result = make("install", f"VENV={tmp_path / 'venv'}", path=folder)
    assert result.returncode != 0
    assert "needs Python 3.11 or newer" in result.stderr and "PYTHON=" in result.stderr
    assert not (tmp_path / "venv").exists()
    named = make("python", f"PYTHON={folder / 'python3'}", path=folder)
    assert named.returncode != 0 and "is not Python 3.11 or newer" in named.stderr


def test_a_second_make_install_has_nothing_to_do(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".installed").touch()  # what a finished `make install` leaves, newer than pyproject.toml
    result = subprocess.run([MAKE, "-q", "-C", str(REPO), "install", f"VENV={venv}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr  # -q: 0 means up to date
