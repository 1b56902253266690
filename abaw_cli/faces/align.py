"""5-point face alignment: a similarity transform (rotation, uniform scale, shift) that puts the
detected eyes, nose tip and mouth corners as close as possible (least squares) to a fixed template.

    crop, matrix = align_face(image_rgb, landmarks5, size=112)   # crop: (size, size, 3) uint8
    template_points(224)                                          # (5, 2) where the points land

The template. The widely used ArcFace/InsightFace 112x112 template (eyes at y=51.7, mouth at
y=92.3) is a tight identity crop: the chin touches the bottom edge and the forehead is cut. The
s-Aff-Wild2 `cropped_aligned` faces show the whole face with a little forehead and chin, and
affect needs both (brows for AU1/2/4, jaw for AU25/26). So this template is the ArcFace one shrunk
by FACE_SCALE=0.8 about the crop centre and lifted by 4 px: eye centres 35.2 -> 28.2 px apart at
y~48, mouth at y~82, which leaves ~10 px above the hairline and below the chin at 112 px.
At --size 224 every coordinate is doubled (the same framing at twice the resolution).

The fit. A plain least-squares fit over the five points lets the mouth pull on scale and
rotation, so a smile (wider mouth) or an open jaw would shrink or shift the whole crop and hide
the very change an expression model has to see. The fit therefore weights the points by how
little expressions move them (LANDMARK_WEIGHTS: eyes 3, nose 2, mouth corners 1), done by
repeating points. On the smiling astronaut photo this brings the eye centres from 2.1 to 1.0 px
of the template at 112 px.

The solver: cv2.estimateAffinePartial2D (a 4-degree-of-freedom similarity) with a RANSAC threshold
so large that every point is an inlier, so its Levenberg-Marquardt refinement minimises the
squared error over all (repeated) points: the least-squares similarity. It agrees with
scikit-image's closed-form Umeyama estimate to 1e-4 px (tests check this) and costs a few tens
of microseconds instead of hundreds, which matters when a GPU detects a few hundred frames per
second and alignment runs in the same thread.
"""

from __future__ import annotations

import cv2
import numpy as np

# ArcFace/InsightFace reference points for a 112x112 crop (left eye, right eye, nose, mouth left,
# mouth right), in the order MTCNN returns them.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
FACE_SCALE = 0.8  # face size relative to the ArcFace crop: <1 widens the view
FACE_LIFT_PX = 4.0  # move the face up (at 112 px) so that forehead and chin get similar margins
CROP_SIZES = (112, 224)
# Integer least-squares weights per landmark (eyes, nose, mouth corners): see the module docstring.
LANDMARK_WEIGHTS = (3, 3, 2, 1, 1)
_WEIGHTED_ROWS = np.repeat(np.arange(5), LANDMARK_WEIGHTS)
_ALL_INLIERS_PX = 1e6  # RANSAC threshold that keeps every point: see "The solver" above

TEMPLATE_112 = (ARCFACE_TEMPLATE_112 - 56.0) * FACE_SCALE + 56.0 - np.array([0.0, FACE_LIFT_PX])


def template_points(size: int = 112) -> np.ndarray:
    """(5, 2) float64 positions of the five landmarks in a `size` x `size` aligned crop."""
    if size <= 0:
        raise ValueError(f"crop size must be positive (got {size})")
    return TEMPLATE_112 * (size / 112.0)


def alignment_matrix(landmarks5: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2x3 similarity matrix mapping frame pixels to crop pixels (weighted least squares)."""
    src = np.asarray(landmarks5, dtype=np.float32).reshape(5, 2)
    if not np.isfinite(src).all() or np.ptp(src, axis=0).max() < 1e-3:
        raise ValueError(f"landmarks are degenerate (non-finite or all on one point): {src.tolist()}")
    dst = template_points(size).astype(np.float32)
    matrix, _ = cv2.estimateAffinePartial2D(
        src[_WEIGHTED_ROWS], dst[_WEIGHTED_ROWS], method=cv2.RANSAC, ransacReprojThreshold=_ALL_INLIERS_PX, refineIters=100
    )
    if matrix is None:
        raise ValueError(f"no similarity transform fits the landmarks {src.tolist()}")
    return matrix.astype(np.float64)


def align_face(image_rgb: np.ndarray, landmarks5: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Warp `image_rgb` (HxWx3 uint8) so that `landmarks5` ((5, 2) x,y) land on the template.

    Returns (crop (size, size, 3) uint8, matrix (2, 3) float64 frame -> crop). Pixels outside the
    frame are filled by replicating the border, as in s-Aff-Wild2's crops of faces at the edge.
    """
    matrix = alignment_matrix(landmarks5, size)
    crop = cv2.warpAffine(
        image_rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return crop, matrix


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (..., 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]
