"""The in-memory face caches (MAE faces, MTL frames): cached items are the uncached ones, bit for bit."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from abaw_cli.data.images import FaceImages, decode_face
from abaw_cli.train.engine import SeededDataset


def _faces(tmp_path: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k, (h, w) in enumerate(sizes):
        p = tmp_path / f"{k}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(p)
    return paths


def test_cached_items_equal_uncached_items(tmp_path: Path):
    paths = _faces(tmp_path, [(40, 40), (36, 44), (200, 160)])
    cached = FaceImages(paths, 32, train=True)
    assert len(cached.faces.cache) == 3
    plain = FaceImages(paths, 32, train=True, cache_bytes=0)
    assert plain.faces.cache == []
    for key in [(0, 11), (1, 12), (2, 13), (2, 14)]:
        (a, _), (b, _) = SeededDataset(cached)[key], SeededDataset(plain)[key]
        assert a.shape == (3, 32, 32) and torch.equal(a, b)


def test_large_faces_are_shrunk_and_the_budget_is_kept(tmp_path: Path):
    paths = _faces(tmp_path, [(40, 40), (200, 160), (40, 40)])
    assert decode_face(paths[0], 32).shape == (3, 40, 40)  # at most 5/4 of 32: kept as read
    assert decode_face(paths[1], 32).shape == (3, 50, 40)  # shorter side 160 -> 40
    partial = FaceImages(paths, 32, cache_bytes=3 * 40 * 40 + 3 * 50 * 40 + 10)
    assert len(partial.faces.cache) == 2  # the first two fit; the third is decoded per item
    assert torch.equal(SeededDataset(partial)[(2, 5)][0], SeededDataset(FaceImages(paths, 32, cache_bytes=0))[(2, 5)][0])


def test_a_face_that_does_not_decode_is_skipped_not_cached(tmp_path: Path):
    paths = _faces(tmp_path, [(40, 40), (40, 40)])
    paths[0].write_bytes(b"not an image")
    faces = FaceImages(paths, 32)
    assert faces.faces.cache[0] is None and faces.faces.cache[1] is not None
    item, skipped = SeededDataset(faces)[(0, 3)]
    assert item.shape == (3, 32, 32) and skipped == ((str(paths[0]), "not a decodable image"),)


def test_mtl_frames_are_decoded_once_and_items_are_unchanged(demo_root: Path):
    from abaw_cli.data.mtl import MTLDataset, load_mtl_splits

    root = demo_root / "mtl"
    train, val = load_mtl_splits(root)
    for split, is_train in ((train, True), (val, False)):
        cached = MTLDataset(root, split, input_size=32, train=is_train)
        plain = MTLDataset(root, split, input_size=32, train=is_train, cache_bytes=0)
        assert len(cached.faces.cache) == len(split) and plain.faces.cache == []
        for key in [(0, 1), (5, 2), (len(split) - 1, 3)]:
            (a, ta), _ = SeededDataset(cached)[key]
            (b, tb), _ = SeededDataset(plain)[key]
            assert a.shape == (3, 32, 32) and torch.equal(a, b) and torch.equal(ta, tb)
