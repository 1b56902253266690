"""Demo videos: a person moving through a cluttered 640x360 scene, expressions changing over time,
with a per-frame truth table (face box, valence/arousal, expression, AUs)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np

from abaw_cli.atomic import PendingFile, atomic_open
from abaw_cli.data.demo.face_render import random_identity, render_person
from abaw_cli.data.demo.plans import Deck, make_timeline, smooth_noise
from abaw_cli.data.demo.scenes import clutter, look_lut, random_light, random_look
from abaw_cli.labels import AUS

WIDTH, HEIGHT, FPS = 640, 360, 25
FOURCC = "mp4v"  # this OpenCV build cannot write H.264
TRUTH_HEADER = ("frame", "time_s", "x1", "y1", "x2", "y2", "valence", "arousal", "expression", *AUS)
# The person patch around the face origin, in face units (x: left..right, y: top..bottom).
PATCH = (-2.6, -1.9, 2.6, 2.0)


def render_video(path: Path, seed: tuple[int, ...], seconds: float) -> int:
    """Writes `path` (.mp4) and `path.with_suffix('.csv')`; returns the number of frames."""
    rng = np.random.default_rng(list(seed))
    n = int(round(seconds * FPS))
    ident = random_identity(rng)
    tl = make_timeline(rng, Deck(rng), n, seg_len=(int(FPS * 0.9), int(FPS * 1.6)), ramp=6,
                       yaw=25, pitch=12, roll=14)
    light = random_light(rng, "wild")
    look = random_look(rng, "wild")
    look.noise = min(look.noise, 3.0)
    luts = look_lut(look)
    background = clutter(rng, HEIGHT, WIDTH, shapes=int(rng.integers(14, 26)), blur=2.0)
    # Face half-width in pixels (faces 55..170 px wide) and a path that keeps the face inside.
    hw0 = float(rng.uniform(30, 70))
    half_w = np.clip(hw0 * (1 + smooth_noise(rng, n, 30, 0.15)), 28, 84)
    margin_x, margin_y = half_w * 1.25, half_w * 1.75
    ux = 0.5 + smooth_noise(rng, n, 35, 0.25)
    uy = 0.5 + smooth_noise(rng, n, 40, 0.15)
    cx = margin_x + np.clip(ux, 0, 1) * (WIDTH - 2 * margin_x)
    cy = margin_y + np.clip(uy, 0, 1) * (HEIGHT - 2 * margin_y)

    video = PendingFile(path, suffix=".mp4")  # OpenCV picks the container from the suffix
    writer = cv2.VideoWriter(str(video.tmp), cv2.VideoWriter_fourcc(*FOURCC), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {FOURCC} video to {video.tmp}")
    rows = []
    au_lab = tl.au_labels()
    try:
        for i in range(n):
            frame = background.copy()
            s = float(half_w[i])
            roll = math.radians(float(tl.pose[i, 2]))
            corners = np.array([[PATCH[0], PATCH[1]], [PATCH[2], PATCH[1]], [PATCH[2], PATCH[3]], [PATCH[0], PATCH[3]]])
            rot = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
            pc = corners @ rot.T * s + [cx[i], cy[i]]
            x0, y0 = np.floor(pc.min(0)).astype(int)
            x1, y1 = np.ceil(pc.max(0)).astype(int)
            # The body runs down to the frame bottom, so the patch does too.
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, WIDTH), HEIGHT
            layer, box = render_person((y1 - y0, x1 - x0), ident, tl.au_state(i), tl.pose_at(i),
                                       (cx[i] - x0, cy[i] - y0), s, light)
            if look.blur > 0.2:
                layer = cv2.GaussianBlur(layer, (0, 0), look.blur)
            roi = frame[y0:y1, x0:x1].astype(np.float32)
            a = layer[..., 3:4] * (1.0 / 255.0)
            frame[y0:y1, x0:x1] = np.clip(roi * (1 - a) + layer[..., :3], 0, 255).astype(np.uint8)
            frame = cv2.LUT(frame, luts)
            if look.noise > 0:
                fr = np.random.default_rng([*seed, i])
                noise = fr.normal(0, look.noise, (HEIGHT // 2, WIDTH // 2)).astype(np.float32)
                noise = cv2.resize(noise, (WIDTH, HEIGHT), interpolation=cv2.INTER_NEAREST)
                frame = np.clip(frame.astype(np.float32) + noise[..., None], 0, 255).astype(np.uint8)
            writer.write(frame)
            box = box + np.array([x0, y0, x0, y0], np.float32)
            rows.append([i, f"{i / FPS:.2f}", *(f"{v:.1f}" for v in box), f"{tl.va[i, 0]:.3f}", f"{tl.va[i, 1]:.3f}",
                         int(tl.expression[i]), *(int(v) for v in au_lab[i])])
    except BaseException:
        writer.release()
        video.abort()
        raise
    writer.release()
    video.commit()
    with atomic_open(path.with_suffix(".csv"), "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(TRUTH_HEADER)
        w.writerows(rows)
    return n
