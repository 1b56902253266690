"""Procedural 2-D faces drawn with OpenCV, moved by action units.

A face lives in its own units: origin at the centre of the face oval, x to the image right,
y down, 1 unit = half the face width. Feature points get a depth from an ellipsoid head model
and are rotated by yaw and pitch (orthographic), so eyes, nose and mouth slide across the face
as the head turns while the outline stays put. Roll, scale and position map units to pixels.

Everything is drawn with flat colours into a BGRA layer (premultiplied alpha, which is what
OpenCV's anti-aliased drawing on a zero canvas produces), then shaded by one lighting map and
composited onto a background. Callers draw at 2x and shrink (INTER_AREA) to soften the edges.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from abaw_cli.data.demo.expressions import AUState

SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << SHIFT

# Skin tones (BGR) from light to dark; an identity blends two neighbours.
SKIN_TONES = np.array([
    (200, 218, 245), (176, 200, 236), (150, 180, 222), (120, 160, 205), (96, 135, 184),
    (78, 112, 160), (60, 88, 128), (46, 66, 98),
], np.float32)
HAIR_COLOURS = np.array([
    (20, 20, 24), (28, 36, 52), (30, 50, 85), (45, 75, 120), (80, 130, 180), (100, 160, 205),
    (40, 60, 140), (150, 150, 155), (215, 215, 215),
], np.float32)
IRIS_COLOURS = np.array([(40, 60, 90), (30, 45, 70), (110, 90, 60), (120, 130, 80), (60, 90, 70)], np.float32)


@dataclass
class Identity:
    """Everything that stays the same for one person."""

    face_b: float  # half-height of the face oval (half-width is 1)
    jaw_taper: float
    skin: np.ndarray  # BGR float
    lip: np.ndarray
    hair: np.ndarray
    brow: np.ndarray
    iris: np.ndarray
    clothes: np.ndarray
    hair_style: int  # 0 short, 1 long, 2 shaved, 3 tall/curly volume
    hairline: float
    fringe: float
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    brow_thick: float
    brow_arch: float
    nose_tip_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_up: float
    lip_low: float
    ear: float
    age: float  # 0..1: baseline wrinkle depth
    hair_bumps: np.ndarray  # irregularity of the hairline
    part_side: int  # -1 / +1: where the hair parts and the fringe falls
    beard: int  # 0 none, 1 stubble, 2 full beard


def random_identity(rng: np.random.Generator) -> Identity:
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = int(t)
    skin = SKIN_TONES[i] * (1 - (t - i)) + SKIN_TONES[min(i + 1, len(SKIN_TONES) - 1)] * (t - i)
    skin = skin * rng.uniform(0.95, 1.05, 3)
    lip = skin * 0.72 + np.array([70, 70, 175], np.float32) * 0.28 * rng.uniform(0.8, 1.1)
    hair = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))] * rng.uniform(0.85, 1.15)
    brow = np.minimum(hair, skin * 0.55) * rng.uniform(0.8, 1.05)
    eye_y = rng.uniform(-0.2, -0.1)
    return Identity(
        face_b=rng.uniform(1.22, 1.42), jaw_taper=rng.uniform(0.1, 0.4),
        skin=np.clip(skin, 0, 255), lip=np.clip(lip, 0, 255), hair=np.clip(hair, 0, 255),
        brow=np.clip(brow, 0, 255),
        iris=IRIS_COLOURS[int(rng.integers(len(IRIS_COLOURS)))] * rng.uniform(0.8, 1.2),
        clothes=rng.uniform(20, 230, 3).astype(np.float32),
        hair_style=int(rng.choice(4, p=[0.4, 0.35, 0.1, 0.15])),
        hairline=eye_y - rng.uniform(0.5, 0.75), fringe=rng.uniform(-0.1, 0.25),
        eye_y=eye_y, eye_dx=rng.uniform(0.38, 0.45), eye_w=rng.uniform(0.17, 0.21),
        eye_h=rng.uniform(0.075, 0.1), eye_tilt=rng.uniform(-0.01, 0.03),
        brow_thick=rng.uniform(0.045, 0.08), brow_arch=rng.uniform(0.03, 0.08),
        nose_tip_y=rng.uniform(0.24, 0.33), nose_w=rng.uniform(0.12, 0.17),
        mouth_y=rng.uniform(0.6, 0.7), mouth_w=rng.uniform(0.34, 0.42),
        lip_up=rng.uniform(0.06, 0.085), lip_low=rng.uniform(0.075, 0.11),
        ear=rng.uniform(0.85, 1.15), age=float(rng.beta(1.5, 4)),
        hair_bumps=rng.uniform(-1, 1, 15).astype(np.float32), part_side=int(rng.choice([-1, 1])),
        beard=int(rng.choice(3, p=[0.8, 0.11, 0.09])),
    )


@dataclass
class Pose:
    yaw: float = 0.0  # degrees; positive turns the nose to the image right
    pitch: float = 0.0  # degrees; positive tilts the face up
    roll: float = 0.0  # degrees, in the image plane
    gaze_x: float = 0.0  # iris offset, in eye half-widths
    gaze_y: float = 0.0


@dataclass
class Light:
    direction: float = 0.0  # radians, direction the light comes from in the image
    strength: float = 0.25  # side-to-side brightness change
    ambient: float = 1.0  # overall gain


@functools.lru_cache(maxsize=32)
def _catmull_basis(n: int) -> np.ndarray:
    """(n, 4) Catmull-Rom weights of p0..p3 at n steps t in [0, 1)."""
    t = np.linspace(0, 1, n, endpoint=False)
    return 0.5 * np.stack([-t + 2 * t * t - t ** 3, 2 - 5 * t * t + 3 * t ** 3,
                           t + 4 * t * t - 3 * t ** 3, -t * t + t ** 3], 1)


def _curve(points: np.ndarray, n: int = 12) -> np.ndarray:
    """Catmull-Rom spline through `points` (k, d), n samples per segment."""
    p = np.asarray(points, np.float64)
    if len(p) < 3:
        t = np.linspace(0, 1, n)[:, None]
        return p[0] * (1 - t) + p[-1] * t
    ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
    k = len(p) - 1
    quads = np.stack([ext[0:k], ext[1:k + 1], ext[2:k + 2], ext[3:k + 3]], 1)  # (k, 4, d)
    out = np.einsum("tj,sjd->std", _catmull_basis(n), quads).reshape(-1, p.shape[1])
    return np.concatenate([out, p[-1:]])


class FacePainter:
    """Draws one person (head, hair, neck, shoulders) into a BGRA layer."""

    def __init__(self, layer: np.ndarray, ident: Identity, aus: AUState, pose: Pose,
                 center: tuple[float, float], scale: float, light: Light):
        self.img = layer
        self.id = ident
        self.au = aus
        self.pose = pose
        self.cx, self.cy = center
        self.s = float(scale)
        self.light = light
        y, p, r = (math.radians(v) for v in (pose.yaw, pose.pitch, pose.roll))
        self.cyaw, self.syaw, self.cpit, self.spit = math.cos(y), math.sin(y), math.cos(p), math.sin(p)
        self.cr, self.sr = math.cos(r), math.sin(r)
        self.wyaw = math.hypot(self.cyaw, 0.9 * self.syaw)
        self.wpit = math.hypot(self.cpit, 0.9 * self.spit)
        self._set_matrices()
        # Jaw drop (AU26, a little with AU25) lowers everything under the mouth.
        self.drop = 0.2 * aus.au(26) + 0.03 * aus.au(25)
        self.skin = ident.skin

    # ---- geometry -------------------------------------------------------------------------
    def depth(self, x, y):
        b = self.id.face_b * 1.05
        return 0.95 * np.sqrt(np.maximum(0.05, 1 - x * x - (y / b) ** 2))

    def _set_matrices(self) -> None:
        """Projection = one (3, 2) matrix per point kind: yaw, then pitch (orthographic), then
        roll and scale; plus the centre offset."""
        cy_, sy_, cp, sp, cr, sr, k = self.cyaw, self.syaw, self.cpit, self.spit, self.cr, self.sr, self.s
        roll = np.array([[cr, sr], [-sr, cr]]) * k  # rows: x', y' -> (px, py)

        def head(wx: float, wy: float) -> np.ndarray:
            # x' = x wx + z sy ; y' = y wy - (-x sy + z cy) sp
            pre = np.array([[wx, sy_ * sp], [0.0, wy], [sy_, -cy_ * sp]])
            return pre @ roll

        self.m_face = head(cy_, cp)
        self.m_sil = head(self.wyaw, self.wpit)
        self.m_body = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]) @ roll
        self.offset = np.array([self.cx, self.cy])

    def project(self, pts: np.ndarray, silhouette: bool = False, body: bool = False) -> np.ndarray:
        """(n, 3) face units -> (n, 2) pixels. `silhouette` points keep the head outline's width
        under yaw; `body` points (neck, shoulders) only follow roll and position."""
        m = self.m_body if body else (self.m_sil if silhouette else self.m_face)
        return pts @ m + self.offset

    def surf(self, xy: np.ndarray, dz: float = 0.0) -> np.ndarray:
        """Points (n, 2) on the face surface (depth from the head model) -> pixels."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        pts = np.empty((len(xy), 3))
        pts[:, :2] = xy
        pts[:, 2] = self.depth(xy[:, 0], xy[:, 1]) + dz
        return pts @ self.m_face + self.offset

    # ---- drawing primitives -----------------------------------------------------------------
    @staticmethod
    def _col(bgr) -> tuple:
        b, g, r = (min(255.0, max(0.0, float(v))) for v in bgr)
        return (b, g, r, 255.0)

    def poly(self, px: np.ndarray, colour, img: np.ndarray | None = None) -> None:
        cv2.fillPoly(img if img is not None else self.img, [np.round(px * _ONE).astype(np.int32)],
                     self._col(colour), cv2.LINE_AA, SHIFT)

    def line(self, px: np.ndarray, colour, width_units: float, img: np.ndarray | None = None) -> None:
        t = max(1, int(round(width_units * self.s)))
        cv2.polylines(img if img is not None else self.img, [np.round(px * _ONE).astype(np.int32)],
                      False, self._col(colour), t, cv2.LINE_AA, SHIFT)

    def ellipse_pts(self, cx, cy, ax, ay, dz=0.0, n=24, a0=0.0, a1=2 * math.pi) -> np.ndarray:
        t = np.linspace(a0, a1, n, endpoint=a1 - a0 < 2 * math.pi - 1e-6)
        return self.surf(np.column_stack([cx + ax * np.cos(t), cy + ay * np.sin(t)]), dz)

    def shade(self, k: float) -> np.ndarray:
        return self.skin * k

    # ---- the person ---------------------------------------------------------------------------
    def outline(self, n: int = 48) -> tuple[np.ndarray, np.ndarray]:
        """Face oval in units (n, 3) and pixels (n, 2)."""
        idn = self.id
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        st = np.sin(t)
        low = np.maximum(st, 0)
        x = np.cos(t) * (1 - idn.jaw_taper * low ** 2.5)
        y = idn.face_b * st
        y = y + self.drop * np.clip((y - idn.mouth_y + 0.1) / 0.6, 0, 1)
        z = 0.55 * low ** 3
        pts = np.column_stack([x, y, z]).astype(np.float32)
        return pts, self.project(pts, silhouette=True)

    def draw(self) -> np.ndarray:
        """Draws the whole person and returns the face box (x1, y1, x2, y2) in layer pixels:
        the face oval from the hairline down, as a face detector frames it."""
        idn = self.id
        self.draw_back_hair()
        self.draw_body()
        self.draw_ears()
        pts, oval = self.outline()
        self.poly(oval, self.skin)
        self.draw_cheeks()
        self.draw_wrinkles()
        self.draw_beard(pts)
        self.draw_nose()
        for sgn in (-1, 1):
            self.draw_eye(sgn)
            self.draw_brow(sgn)
        self.draw_mouth()
        self.draw_front_hair()
        top = min(idn.hairline + 0.15, idn.eye_y - 0.35)
        keep = oval[pts[:, 1] >= top]
        x1, y1 = keep.min(0)
        x2, y2 = keep.max(0)
        return np.array([x1, y1, x2, y2], np.float32)

    def draw_back_hair(self) -> None:
        idn = self.id
        if idn.hair_style == 2:
            return
        b = idn.face_b
        if idn.hair_style == 1:  # long: falls behind the head to the shoulders
            t = np.linspace(math.pi, 2 * math.pi, 20)
            top = np.column_stack([1.15 * np.cos(t), -0.1 + (b + 0.05) * np.sin(t)])
            sides = np.array([[1.2, b * 0.9], [1.05, b + 0.55], [-1.05, b + 0.55], [-1.2, b * 0.9]])
            pts = np.vstack([top, sides])
        else:
            vol = 1.28 if idn.hair_style == 3 else 1.1
            t = np.linspace(0, 2 * math.pi, 28, endpoint=False)
            pts = np.column_stack([vol * np.cos(t), -0.25 + (b * 0.85 * (vol - 0.05)) * np.sin(t)])
            pts = pts[pts[:, 1] < 0.25]
        pts3 = np.column_stack([pts, np.full(len(pts), -0.2)])
        self.poly(self.project(pts3, silhouette=True), idn.hair * 0.8)

    def draw_body(self) -> None:
        idn = self.id
        b = idn.face_b
        body = lambda xy: self.project(np.column_stack([xy, np.zeros(len(xy))]), body=True)
        t = np.linspace(math.pi, 2 * math.pi, 24)
        shoulders = np.column_stack([2.4 * np.cos(t), b + 1.85 + 1.05 * np.sin(t)])
        shoulders = np.vstack([shoulders, [[2.4, b + 12.0], [-2.4, b + 12.0]]])
        self.poly(body(shoulders), idn.clothes)
        neck = np.array([[-0.5, 0.5], [0.5, 0.5], [0.55, b + 0.85], [0.0, b + 1.15], [-0.55, b + 0.85]])
        self.poly(body(neck), self.shade(0.78))
        collar = np.array([[-0.6, b + 0.8], [0.0, b + 1.25], [0.6, b + 0.8]])
        self.line(body(collar), idn.clothes * 0.6, 0.06)

    def draw_ears(self) -> None:
        idn = self.id
        for sgn in (-1, 1):
            cx, cy = sgn * 0.99, (idn.eye_y + idn.nose_tip_y) / 2
            t = np.linspace(0, 2 * math.pi, 16, endpoint=False)
            pts = np.column_stack([cx + sgn * 0.05 + 0.13 * idn.ear * np.cos(t),
                                   cy + 0.24 * idn.ear * np.sin(t), np.full(16, -0.12)])
            px = self.project(pts, silhouette=True)
            self.poly(px, self.shade(0.9))
            inner = np.column_stack([cx + sgn * 0.06 + 0.06 * np.cos(t), cy + 0.14 * np.sin(t), np.full(16, -0.12)])
            self.poly(self.project(inner, silhouette=True), self.shade(0.72))

    def draw_cheeks(self) -> None:
        idn, a = self.id, self.au
        raise_ = a.au(6) + 0.5 * a.au(12)
        for sgn in (-1, 1):
            cx, cy = sgn * 0.5, idn.eye_y + 0.36 - 0.08 * raise_
            self.poly(self.ellipse_pts(cx, cy, 0.22, 0.14 + 0.03 * raise_, 0.02), self.shade(1.03 + 0.06 * raise_))

    def draw_wrinkles(self) -> None:
        idn, a = self.id, self.au
        brow_y = idn.eye_y - 0.24
        au1, au2, au4, au9 = a.au(1), a.au(2), a.au(4), a.au(9)
        # Forehead lines: AU1 folds the centre, AU2 the sides.
        for k in range(3):
            y = brow_y - 0.13 - 0.11 * k
            if y < idn.hairline + 0.06:
                break
            for x0, x1, st in ((-0.28, 0.28, max(au1, 0.8 * au2)), (0.22, 0.6, au2), (-0.6, -0.22, au2)):
                st = max(st, 0.3 * idn.age) * (1 - 0.2 * k)
                if st < 0.12:
                    continue
                xs = np.linspace(x0, x1, 8)
                ys = y - 0.03 * np.cos(xs * 2.2) - (0.04 * au1 if x0 < 0 < x1 else 0)
                self.line(self.surf(np.column_stack([xs, ys])), self.shade(1 - 0.32 * st), 0.018)
        # Glabella: AU4 (and AU9) draw vertical lines between the brows.
        st = max(au4, 0.7 * au9)
        if st > 0.12:
            for sgn in (-1, 1):
                xy = np.array([[sgn * 0.05, brow_y + 0.0], [sgn * 0.04, brow_y + 0.07], [sgn * 0.055, brow_y + 0.13]])
                self.line(self.surf(_curve(xy, 4)), self.shade(1 - 0.22 * st), 0.016)
        if au9 > 0.12:  # nose wrinkles across the bridge
            for k in range(2):
                y = idn.eye_y + 0.03 + 0.05 * k
                xs = np.linspace(-0.09, 0.09, 5)
                self.line(self.surf(np.column_stack([xs, y + 0.02 * np.abs(xs) / 0.09]), 0.1), self.shade(1 - 0.35 * au9), 0.016)

    def draw_nose(self) -> None:
        idn, a = self.id, self.au
        tip = idn.nose_tip_y
        lift = 0.035 * a.au(10) + 0.045 * a.au(9)
        w = idn.nose_w * (1 + 0.12 * a.au(10) + 0.1 * a.au(9))
        side = 1 if math.cos(self.light.direction) < 0 else -1  # shadowed side of the nose
        ridge = np.array([[side * 0.07, idn.eye_y + 0.02], [side * 0.085, (idn.eye_y + tip) / 2], [side * 0.1, tip - 0.06]])
        dz = np.array([0.08, 0.2, 0.32])
        self.line(self.project(np.column_stack([ridge, self.depth(ridge[:, 0], ridge[:, 1]) + dz])), self.shade(0.86), 0.04)
        self.poly(self.ellipse_pts(0, tip + 0.075 - lift, 0.11, 0.035, 0.3), self.shade(0.8))  # shadow under the nose
        self.poly(self.ellipse_pts(0, tip - lift * 0.5, 0.075, 0.055, 0.38), self.shade(1.05))  # tip highlight
        for sgn in (-1, 1):
            ala = self.ellipse_pts(sgn * w, tip + 0.02 - lift, 0.055, 0.05, 0.22, n=10,
                                   a0=-math.pi / 2 if sgn > 0 else math.pi / 2,
                                   a1=math.pi / 2 if sgn > 0 else 1.5 * math.pi)
            self.line(ala, self.shade(0.68), 0.02)
            self.poly(self.ellipse_pts(sgn * 0.055, tip + 0.055 - lift, 0.035, 0.018, 0.3, n=12), self.shade(0.35))

    def _eye_geometry(self, sgn: int):
        idn, a = self.id, self.au
        cx = sgn * idn.eye_dx
        ew, eh = idn.eye_w, idn.eye_h
        hu = eh * (1 + 0.6 * a.au(5) - 0.2 * a.au(7) - 0.2 * a.au(6) - 0.12 * a.au(4) - 0.15 * a.au(9))
        hl = eh * (0.6 - 0.55 * a.au(6) - 0.7 * a.au(7) - 0.3 * a.au(9) + 0.15 * a.au(5))
        hl = max(hl, 0.15 * eh - hu)
        f = np.linspace(0, 1, 11)
        x = cx - sgn * ew + 2 * sgn * ew * f
        base = idn.eye_y - idn.eye_tilt * f
        upper = np.column_stack([x, base - hu * np.sin(np.pi * f) ** 0.8])
        lower = np.column_stack([x, base + hl * np.sin(np.pi * f) ** 1.2])
        return cx, upper, lower, hu

    def draw_eye(self, sgn: int) -> None:
        idn, p = self.id, self.pose
        cx, upper, lower, hu = self._eye_geometry(sgn)
        up_px = self.surf(upper, -0.04)
        low_px = self.surf(lower, -0.04)
        almond = np.vstack([up_px, low_px[::-1]])
        # Crease and a shadow band above the lid.
        crease = upper.copy()
        crease[:, 1] -= 0.045 + 0.01 * (1 - self.au.au(5))
        self.line(self.surf(crease[1:-1], -0.03), self.shade(0.8), 0.018)
        x0, y0 = np.floor(almond.min(0)).astype(int) - 2
        x1, y1 = np.ceil(almond.max(0)).astype(int) + 3
        h, w = self.img.shape[:2]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        roi = self.img[y0:y1, x0:x1]
        eye = roi.copy()
        off = np.array([x0, y0], np.float32)
        self.poly(almond - off, (225, 232, 238), eye)
        iris_c = np.array([[cx + p.gaze_x * idn.eye_w * 0.45, idn.eye_y + p.gaze_y * idn.eye_h * 0.4]])
        ic = self.surf(iris_c, -0.02)[0] - off
        r = idn.eye_w * 0.5 * self.s
        cv2.circle(eye, (int(ic[0] * _ONE), int(ic[1] * _ONE)), int(r * _ONE), self._col(idn.iris), -1, cv2.LINE_AA, SHIFT)
        cv2.circle(eye, (int(ic[0] * _ONE), int(ic[1] * _ONE)), int(r * 0.45 * _ONE), (15, 15, 15, 255), -1, cv2.LINE_AA, SHIFT)
        hl = ic + np.array([0.3 * r, -0.35 * r])
        cv2.circle(eye, (int(hl[0] * _ONE), int(hl[1] * _ONE)), max(int(r * 0.22 * _ONE), _ONE), (245, 245, 245, 255), -1, cv2.LINE_AA, SHIFT)
        mask = np.zeros(roi.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round((almond - off) * _ONE).astype(np.int32)], 255, cv2.LINE_AA, SHIFT)
        m = (mask.astype(np.float32) / 255.0)[..., None]
        roi[:] = (roi * (1 - m) + eye * m).astype(np.uint8)
        self.line(up_px, (25, 25, 30), 0.028)  # lashes on the upper lid
        self.line(low_px, self.shade(0.62 - 0.15 * self.au.au(7)), 0.012)
        if self.au.au(6) > 0.15:  # crow's feet at the outer corner
            st = self.au.au(6)
            corner = upper[-1]  # the outer corner (eye points run inner -> outer)
            for ang in (-0.5, 0.0, 0.5):
                d = np.array([math.cos(ang) * sgn, math.sin(ang)]) * 0.09 * st
                seg = np.array([corner + np.array([sgn * 0.04, 0]), corner + np.array([sgn * 0.04, 0]) + d])
                self.line(self.surf(seg, -0.05), self.shade(1 - 0.3 * st), 0.014)
            # Lower-lid bulge under the eye.
            bag = lower.copy()
            bag[:, 1] += 0.05
            self.line(self.surf(bag[2:-2], -0.03), self.shade(1 - 0.22 * st), 0.016)

    def draw_brow(self, sgn: int) -> None:
        idn, a = self.id, self.au
        ex, ew = idn.eye_dx, idn.eye_w
        base = idn.eye_y
        inner = np.array([sgn * (ex - ew - 0.01), base - 0.17])
        mid = np.array([sgn * (ex + 0.02), base - 0.22 - idn.brow_arch])
        outer = np.array([sgn * (ex + ew + 0.08), base - 0.16])
        au1, au2, au4, au9 = a.au(1), a.au(2), a.au(4), a.au(9)
        inner += [-sgn * 0.07 * au4, -0.14 * au1 + 0.1 * au4 + 0.05 * au9]
        mid += [0, -0.05 * au1 - 0.09 * au2 + 0.055 * au4 + 0.02 * au9]
        outer += [0, -0.12 * au2 + 0.015 * au4 + 0.03 * au1 * (1 - au2)]
        c = _curve(np.array([inner, mid, outer]), 6)
        f = np.linspace(0, 1, len(c))
        th = idn.brow_thick * (1.0 - 0.55 * f)
        top = c - np.column_stack([np.zeros_like(f), th * 0.5])
        bot = c + np.column_stack([np.zeros_like(f), th * 0.5])
        self.poly(self.surf(np.vstack([top, bot[::-1]]), 0.02), idn.brow)

    def draw_mouth(self) -> None:
        idn, a = self.id, self.au
        au10, au12, au15, au20 = a.au(10), a.au(12), a.au(15), a.au(20)
        au23, au24, au25, au26 = a.au(23), a.au(24), a.au(25), a.au(26)
        # A dropped jaw without a smile pulls the lips into an 'O': narrower, rounder.
        oh = au26 * (1 - au12) * (1 - au20)
        mw = idn.mouth_w * (1 + 0.25 * au12 - 0.25 * au23 - 0.12 * au24 + 0.28 * au20 - 0.04 * au15 - 0.22 * oh)
        dy = -0.12 * au12 + 0.1 * au15 + 0.03 * au20
        my = idn.mouth_y
        open_ = au25 > 0.12 or au26 > 0.12
        gap = (0.07 * au25 + 0.06 * au25 * au12 + 0.24 * au26 + 0.04 * au10) if open_ else 0.0
        up_raise = 0.06 * au10 + 0.015 * au12
        tu = idn.lip_up * max(0.12, 1 - 0.75 * au23 - 0.85 * au24 - 0.3 * au20) * (1 - 0.3 * au12)
        tl = idn.lip_low * max(0.12, 1 - 0.7 * au23 - 0.8 * au24 - 0.3 * au20) * (1 - 0.2 * au12)
        xs = np.linspace(-mw, mw, 21)
        u = xs / mw
        prof = np.clip(1 - u * u, 0, 1) ** (0.6 - 0.25 * oh)
        yb = my + dy * u * u
        yui = yb - (gap * 0.3 + up_raise) * prof ** 0.8
        yli = yb + gap * 0.7 * prof
        bow = 1 + 0.3 * np.exp(-((np.abs(xs) - 0.08) / 0.06) ** 2) - 0.25 * np.exp(-(xs / 0.035) ** 2)
        yuo = yui - tu * (0.15 + 0.85 * prof ** 0.7) * bow
        ylo = yli + tl * (0.15 + 0.85 * prof ** 0.7)
        dz = 0.06
        P = lambda y: self.surf(np.column_stack([xs, y]), dz)
        # Folds: nasolabial (AU12, AU10, AU6) and marionette lines (AU15).
        st = 0.15 + 0.65 * max(au12, 0.9 * au10, 0.4 * a.au(6)) + 0.3 * idn.age
        for sgn in (-1, 1):
            fold = np.array([[sgn * idn.nose_w * 1.1, idn.nose_tip_y + 0.01],
                             [sgn * (mw * 0.85 + 0.14), (idn.nose_tip_y + my) / 2 + 0.02],
                             [sgn * (mw + 0.08), my + dy + 0.1]])
            self.line(self.surf(_curve(fold, 5), 0.02), self.shade(1 - 0.3 * min(st, 1)), 0.02)
            if au15 > 0.15:
                m = np.array([[sgn * (mw + 0.01), my + dy + 0.02], [sgn * (mw + 0.05), my + dy + 0.16]])
                self.line(self.surf(m, 0.03), self.shade(1 - 0.35 * au15), 0.018)
            if au12 > 0.3:  # dimple at the corner
                self.line(self.surf(np.array([[sgn * (mw + 0.02), my + dy - 0.03], [sgn * (mw + 0.035), my + dy + 0.03]]), 0.04),
                          self.shade(0.78), 0.015)
        press = max(au24, 0.7 * au23)
        if press > 0.2:  # pressed / tightened lips bulge the skin above and below, the chin crease deepens
            for y, k in ((yuo - 0.04, 0.8), (ylo + 0.05, 0.7)):
                self.line(P(y)[3:-3], self.shade(1 - 0.4 * press * k), 0.025)
            chin = np.array([[-mw * 0.55, my + 0.2], [0.0, my + 0.24 + self.drop], [mw * 0.55, my + 0.2]])
            self.line(self.surf(_curve(chin, 4), 0.05), self.shade(1 - 0.35 * press), 0.022)
        if gap > 0.01:
            interior = np.vstack([P(yui), P(yli)[::-1]])
            x0, y0 = np.floor(interior.min(0)).astype(int) - 2
            x1, y1 = np.ceil(interior.max(0)).astype(int) + 3
            h, w = self.img.shape[:2]
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if x1 - x0 > 2 and y1 - y0 > 2:
                off = np.array([x0, y0], np.float32)
                roi = self.img[y0:y1, x0:x1]
                mouth = roi.copy()
                self.poly(interior - off, (35, 30, 70), mouth)
                teeth_h = 0.07 * (1 - 0.6 * oh)  # stretched lips cover the teeth of an 'O' mouth
                sel = np.abs(xs) < 0.8 * mw
                top_teeth = np.vstack([P(yui - 0.01)[sel], P(yui + teeth_h)[sel][::-1]])
                self.poly(top_teeth - off, (205, 222, 232), mouth)
                if (gap > 0.12 and oh < 0.4) or (au20 > 0.3 and gap > 0.04):
                    sel2 = np.abs(xs) < 0.6 * mw
                    self.poly(np.vstack([P(yli - 0.04)[sel2], P(yli + 0.01)[sel2][::-1]]) - off, (190, 205, 215), mouth)
                if au26 > 0.4:
                    sel3 = np.abs(xs) < 0.5 * mw
                    self.poly(np.vstack([P(yli - 0.06 * au26)[sel3], P(yli + 0.01)[sel3][::-1]]) - off, (95, 95, 175), mouth)
                mask = np.zeros(roi.shape[:2], np.uint8)
                cv2.fillPoly(mask, [np.round((interior - off) * _ONE).astype(np.int32)], 255, cv2.LINE_AA, SHIFT)
                m = (mask.astype(np.float32) / 255.0)[..., None]
                roi[:] = (roi * (1 - m) + mouth * m).astype(np.uint8)
        self.poly(np.vstack([P(yuo), P(yui)[::-1]]), idn.lip * 0.92)
        self.poly(np.vstack([P(yli), P(ylo)[::-1]]), idn.lip)
        hl = yli + tl * 0.35 * prof
        self.line(P(hl)[6:-6], np.minimum(idn.lip * 1.12, 255), 0.02)
        self.line(P(yui), idn.lip * (0.45 - 0.15 * press), 0.016 + 0.014 * press)
        if gap > 0.01:
            self.line(P(yli), idn.lip * 0.55, 0.012)

    def draw_beard(self, outline_pts: np.ndarray) -> None:
        """Stubble (a shadow of hair colour) or a full beard over the jaw, around the mouth."""
        idn = self.id
        if idn.beard == 0:
            return
        colour = self.skin * 0.86 + idn.hair * 0.14 if idn.beard == 1 else idn.hair * 0.7 + self.skin * 0.3
        # The jaw below the mouth corners and the chin; cheeks stay bare so the face keeps its shape.
        top = idn.mouth_y - (0.3 if idn.beard == 1 else 0.15)
        low = outline_pts[(outline_pts[:, 1] > top) & (outline_pts[:, 0] ** 2 < 0.98)]
        low = low[np.argsort(np.arctan2(low[:, 1], low[:, 0]))]  # right jaw -> chin -> left jaw
        mw = idn.mouth_w + 0.08
        inner = np.array([[-0.8, top], [-mw - 0.04, idn.mouth_y - 0.02], [-mw * 0.6, idn.nose_tip_y + 0.1],
                          [0.0, idn.nose_tip_y + 0.09], [mw * 0.6, idn.nose_tip_y + 0.1],
                          [mw + 0.04, idn.mouth_y - 0.02], [0.8, top]])
        inner_px = self.surf(_curve(inner, 4), 0.03)
        self.poly(np.vstack([self.project(low, silhouette=True), inner_px]), colour)
        if idn.beard == 2:  # texture: short darker and lighter hairs along the jaw
            for k, x in enumerate(np.linspace(-0.7, 0.7, 9)):
                y = idn.mouth_y + 0.25 + 0.35 * (1 - (x / 0.8) ** 2)
                seg = np.array([[x, y - 0.12], [x * 1.05, y]])
                self.line(self.surf(seg, 0.02), colour * (0.75 if k % 2 else 1.2), 0.02)

    def draw_front_hair(self) -> None:
        idn = self.id
        if idn.hair_style == 2:  # shaved: a faint cap
            colour = self.skin * 0.75 + idn.hair * 0.25
        else:
            colour = idn.hair
        b = idn.face_b
        t = np.linspace(math.pi * 1.02, math.pi * 1.98, 24)
        vol = 1.12 if idn.hair_style == 3 else 1.04
        top = np.column_stack([vol * np.cos(t), -0.05 + vol * b * np.sin(t) * 0.98])
        top_px = self.project(np.column_stack([top, np.full(len(top), 0.0)]), silhouette=True)
        # Hairline: a dome from temple to temple, uneven, with a fringe falling on one side.
        hl, fr, side_y = idn.hairline, idn.fringe, idn.eye_y - 0.12
        xs = np.linspace(0.97, -0.97, 15)
        dome = hl + (side_y - hl) * np.abs(xs) ** 2.2
        fringe = fr * np.exp(-((xs - 0.35 * idn.part_side) / 0.32) ** 2)
        ys = np.minimum(dome + fringe + 0.025 * idn.hair_bumps * (idn.hair_style != 2), side_y)
        line = np.vstack([[[0.99, side_y + 0.02]], np.column_stack([xs, ys]), [[-0.99, side_y + 0.02]]])
        self.poly(np.vstack([top_px, self.surf(line, 0.02)]), colour)
        if idn.hair_style == 2:
            return
        # Strands from the parting, darker and lighter, so the hair reads as hair.
        part = np.array([0.3 * idn.part_side, hl - 0.55])
        for k, x_end in enumerate(np.linspace(-0.9, 0.9, 9)):
            j = int(np.argmin(np.abs(xs - x_end)))
            end = np.array([x_end, ys[j] - 0.03])
            mid = (part + end) / 2 + np.array([0.0, -0.08])
            shade = 0.7 if k % 2 else 1.25
            self.line(self.surf(_curve(np.array([part, mid, end]), 4), 0.05),
                      np.minimum(colour * shade + (12 if shade > 1 else 0), 255), 0.02)
        if idn.hair_style == 1:  # long hair: locks over the temples and the sides of the face
            for sgn in (-1, 1):
                lock = np.array([[sgn * 1.06, side_y - 0.1], [sgn * 0.88, side_y + 0.05], [sgn * 0.86, idn.nose_tip_y],
                                 [sgn * 0.93, idn.mouth_y + 0.15], [sgn * 1.08, idn.mouth_y + 0.3], [sgn * 1.12, side_y]])
                self.poly(self.project(np.column_stack([lock, np.zeros(len(lock))]), silhouette=True), colour * 0.92)


def lighting_map(shape: tuple[int, int], center: tuple[float, float], scale: float, face_b: float,
                 light: Light) -> np.ndarray:
    """Multiplicative shading (h, w, 1): darker towards the face edges, a directional gradient."""
    h, w = shape
    ys = (np.arange(h, dtype=np.float32)[:, None] - center[1]) / scale
    xs = (np.arange(w, dtype=np.float32)[None, :] - center[0]) / scale
    r2 = xs * xs + (ys / face_b) ** 2
    m = 1.0 - 0.28 * np.clip(r2, 0, 1.6) ** 1.5
    m = m + light.strength * 0.5 * (math.cos(light.direction) * xs + math.sin(light.direction) * ys)
    return (np.clip(m, 0.35, 1.4) * light.ambient)[..., None]


def render_person(shape_hw: tuple[int, int], ident: Identity, aus: AUState, pose: Pose,
                  center: tuple[float, float], scale: float, light: Light,
                  supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A lit BGRA person layer (float32, premultiplied alpha) of `shape_hw` and the face box
    (x1, y1, x2, y2), both in output pixels. Drawn `supersample` times larger, then shrunk."""
    k = supersample
    big = np.zeros((shape_hw[0] * k, shape_hw[1] * k, 4), np.uint8)
    box = FacePainter(big, ident, aus, pose, (center[0] * k, center[1] * k), scale * k, light).draw() / k
    layer = cv2.resize(big, (shape_hw[1], shape_hw[0]), interpolation=cv2.INTER_AREA) if k > 1 else big
    out = layer.astype(np.float32)
    out[..., :3] *= lighting_map(shape_hw, center, scale, ident.face_b, light)
    return out, box


def eye_mid_offset(ident: Identity, pose: Pose) -> np.ndarray:
    """Where the midpoint between the eyes lands (face units, before roll/scale) for `pose`:
    used to align crops on the eyes like the s-Aff-Wild2 crops are."""
    probe = FacePainter(np.zeros((1, 1, 4), np.uint8), ident, AUState.neutral(), pose, (0.0, 0.0), 1.0, Light())
    probe.cr, probe.sr = 1.0, 0.0
    probe._set_matrices()
    return probe.surf(np.array([[-ident.eye_dx, ident.eye_y], [ident.eye_dx, ident.eye_y]]), -0.04).mean(0)


def composite(background: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """Premultiplied BGRA float layer over a BGR uint8 background -> BGR uint8."""
    a = layer[..., 3:4] * (1.0 / 255.0)
    out = background.astype(np.float32) * (1.0 - a) + layer[..., :3]
    return np.clip(out, 0, 255).astype(np.uint8)
