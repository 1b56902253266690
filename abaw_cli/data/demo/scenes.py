"""Backgrounds, aligned face crops and the camera "styles" that make domains differ.

Styles:
- `wild`: in-the-wild video frames (s-Aff-Wild2 / demo videos): clutter, uneven light, blur,
  sensor noise, JPEG of varying quality.
- `synthetic`: the LSD training look: clean render, flat or gradient studio backdrop, even
  light, saturated colour, no noise, high JPEG quality.
- `photo`: the LSD "real" look: cluttered scenes, colour casts, strong side light, gamma and
  contrast changes, grain, blur and heavy JPEG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from abaw_cli.data.demo.expressions import AUState
from abaw_cli.data.demo.face_render import (
    Identity, Light, Pose, composite, eye_mid_offset, render_person,
)

CROP = 112  # s-Aff-Wild2 cropped_aligned size
STYLES = ("wild", "synthetic", "photo")
# Aligned crops: the eye midpoint sits here (fraction of the crop), the face half-width is this
# fraction of the crop. Chosen so that MTCNN finds the five landmarks of a rendered crop where
# crop-faces' aligner (faces.align.template_points) puts them in crops of the demo videos: a model
# trained on these crops then sees video faces framed as it learned them (mean landmark offset
# from the template <= 1.5 px on 96 crops; tests/test_demo_data.py holds it under 2.5 px).
EYE_POS = (0.5, 0.448)
FACE_HALF_WIDTH = 0.327


def clutter(rng: np.random.Generator, h: int, w: int, shapes: int = 10, blur: float = 1.5) -> np.ndarray:
    """A cluttered indoor-ish background: a two-colour gradient, rectangles (shelves, frames,
    windows), circles and lines, slightly out of focus."""
    grey = rng.uniform(60, 190)
    c0 = grey + rng.uniform(-40, 40, 3)
    c1 = c0 * rng.uniform(0.5, 1.2) + rng.uniform(-20, 20, 3)
    ang = rng.uniform(0, 2 * math.pi)
    xs = (np.arange(w, dtype=np.float32) / w - 0.5) * math.cos(ang)
    ys = (np.arange(h, dtype=np.float32) / h - 0.5) * math.sin(ang)
    t = np.clip(ys[:, None] + xs[None, :] + 0.5, 0, 1)[..., None]
    img = np.clip(c0.astype(np.float32) * (1 - t) + c1.astype(np.float32) * t, 0, 255).astype(np.uint8)
    for _ in range(shapes):
        g = rng.uniform(20, 235)
        col = tuple(float(v) for v in np.clip(g + rng.uniform(-55, 55, 3), 0, 255))
        kind = rng.random()
        x, y = int(rng.integers(-w // 8, w)), int(rng.integers(-h // 8, h))
        if kind < 0.5:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(w // 10, w // 2)), y + int(rng.integers(h // 10, h // 2))), col, -1)
        elif kind < 0.75:
            cv2.circle(img, (x, y), int(rng.integers(max(2, h // 20), max(3, h // 5))), col, -1, cv2.LINE_AA)
        else:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), col,
                     int(rng.integers(1, max(2, h // 30))), cv2.LINE_AA)
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    return img


def studio(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A plain studio backdrop: flat or a soft vertical gradient, saturated."""
    c0 = rng.uniform(60, 240, 3)
    c1 = c0 * rng.uniform(0.6, 1.0)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    return np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3)).astype(np.uint8).copy()


@dataclass
class Look:
    """Camera/post-processing of one image (or one whole video)."""

    blur: float = 0.0  # Gaussian sigma, output pixels
    noise: float = 0.0  # sensor noise sigma, grey levels
    gain: np.ndarray | None = None  # per-channel colour cast (BGR multipliers)
    gamma: float = 1.0
    contrast: float = 1.0
    jpeg: int = 90


def random_look(rng: np.random.Generator, style: str) -> Look:
    if style == "synthetic":
        return Look(blur=0.0, noise=0.0, gain=rng.uniform(0.97, 1.03, 3), gamma=1.0, contrast=1.1, jpeg=95)
    if style == "photo":
        cast = rng.choice([np.array([0.85, 0.95, 1.1]), np.array([1.1, 1.0, 0.88]), np.array([1.0, 1.05, 0.92]), np.ones(3)])
        return Look(blur=float(rng.uniform(0.2, 0.9)), noise=float(rng.uniform(2.5, 6)),
                    gain=cast * rng.uniform(0.95, 1.05, 3), gamma=float(rng.uniform(0.8, 1.25)),
                    contrast=float(rng.uniform(0.75, 0.95)), jpeg=int(rng.integers(35, 70)))
    if style == "wild":
        return Look(blur=float(rng.uniform(0.0, 0.8)), noise=float(rng.uniform(0.5, 4)),
                    gain=rng.uniform(0.9, 1.1, 3), gamma=float(rng.uniform(0.85, 1.15)),
                    contrast=float(rng.uniform(0.85, 1.05)), jpeg=int(rng.integers(55, 92)))
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


def look_lut(look: Look) -> np.ndarray:
    """(256, 1, 3) table doing the look's colour cast, contrast and gamma in one cv2.LUT call."""
    x = np.arange(256, dtype=np.float32)
    gain = np.ones(3) if look.gain is None else look.gain
    luts = []
    for c in range(3):
        v = (x * float(gain[c]) - 128.0) * look.contrast + 128.0
        v = 255.0 * np.power(np.clip(v, 0, 255) / 255.0, look.gamma)
        luts.append(np.clip(np.round(v), 0, 255).astype(np.uint8))
    return np.stack(luts, 1)[:, None, :]


def apply_look(img: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Blur, colour (LUT), then sensor noise: luminance grain plus weaker colour grain."""
    out = img
    if look.blur > 0.2:
        out = cv2.GaussianBlur(out, (0, 0), look.blur)
    out = cv2.LUT(out, look_lut(look))
    if look.noise > 0:
        h, w = out.shape[:2]
        noise = rng.standard_normal((h, w, 1), dtype=np.float32) * look.noise
        noise = noise + rng.standard_normal((h, w, 3), dtype=np.float32) * (look.noise * 0.5)
        out = cv2.add(out.astype(np.float32), noise)
        out = np.clip(out, 0, 255).astype(np.uint8)
    return out


def random_pose(rng: np.random.Generator, yaw: float = 28, pitch: float = 14, roll: float = 6) -> Pose:
    return Pose(yaw=float(rng.uniform(-yaw, yaw)), pitch=float(rng.uniform(-pitch, pitch)),
                roll=float(rng.uniform(-roll, roll)), gaze_x=float(rng.uniform(-0.5, 0.5)),
                gaze_y=float(rng.uniform(-0.3, 0.3)))


def random_light(rng: np.random.Generator, style: str) -> Light:
    if style == "synthetic":
        return Light(direction=float(rng.uniform(0, 2 * math.pi)), strength=float(rng.uniform(0.0, 0.1)),
                     ambient=float(rng.uniform(1.0, 1.1)))
    if style == "photo":
        return Light(direction=float(rng.uniform(0, 2 * math.pi)), strength=float(rng.uniform(0.2, 0.45)),
                     ambient=float(rng.uniform(0.8, 1.05)))
    return Light(direction=float(rng.uniform(0, 2 * math.pi)), strength=float(rng.uniform(0.1, 0.4)),
                 ambient=float(rng.uniform(0.8, 1.1)))


def render_crop(ident: Identity, aus: AUState, pose: Pose, light: Light, background: np.ndarray,
                look: Look, rng: np.random.Generator, size: int = CROP) -> np.ndarray:
    """An aligned face crop (size x size BGR): the face placed by its eye midpoint (drawn at 2x
    and shrunk), composited on `background` (size x size BGR), then passed through the look.
    Upright: a similarity alignment on the eyes removes in-plane roll, so the crop ignores
    `pose.roll` (yaw and pitch stay)."""
    pose = replace(pose, roll=0.0)
    scale = FACE_HALF_WIDTH * size
    off = eye_mid_offset(ident, pose) * scale
    center = (EYE_POS[0] * size - off[0], EYE_POS[1] * size - off[1])
    layer, _ = render_person((size, size), ident, aus, pose, center, scale, light)
    return apply_look(composite(background, layer), look, rng)


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
