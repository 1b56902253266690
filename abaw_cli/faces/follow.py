"""Follow detected faces through frames that are not detected (`--detect-every K`).

    follower = LandmarkFollower()
    follower.reset(rgb, detections)     # on a detected frame
    dets = follower.follow(rgb)         # on the next frames: the same faces, moved

The five landmarks are carried to the next frame by pyramidal Lucas-Kanade optical flow
(cv2.calcOpticalFlowPyrLK), checked forward-backward. The box moves with the similarity
transform (shift, scale, rotation) fitted to the points that tracked well; a face whose points
are mostly lost is dropped until the next detection. Scores are the last detection's.

Trade-off: MTCNN costs tens of ms per frame on a CPU, optical flow on five points about one; but
a followed face drifts a little with each frame and cannot appear or disappear between two
detections, so K trades accuracy at expression onsets, fast motion and occlusions for speed.
"""

from __future__ import annotations

import cv2
import numpy as np

from abaw_cli.faces.detector import Detections

# Lucas-Kanade settings: a 21 px window over a 3-level pyramid follows motions of tens of pixels.
_LK = dict(winSize=(21, 21), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))
MAX_FB_ERROR_PX = 2.0  # forward-backward error above which a point counts as lost
MIN_POINTS = 3  # a similarity transform needs 2 points; 3 keep one outlier from steering the box


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


class LandmarkFollower:
    def __init__(self) -> None:
        self._gray: np.ndarray | None = None
        self._dets = Detections.empty()

    def reset(self, rgb: np.ndarray, detections: Detections) -> None:
        """Start from a detected frame."""
        self._gray = _gray(rgb)
        self._dets = detections

    def follow(self, rgb: np.ndarray) -> Detections:
        """The last frame's faces, moved to this frame (faces that could not be followed dropped)."""
        gray = _gray(rgb)
        previous, self._gray = self._gray, gray
        if previous is None or len(self._dets) == 0 or previous.shape != gray.shape:
            self._dets = Detections.empty()
            return self._dets
        points = self._dets.landmarks.reshape(-1, 1, 2).astype(np.float32)
        moved, ok, _ = cv2.calcOpticalFlowPyrLK(previous, gray, points, None, **_LK)
        back, ok_back, _ = cv2.calcOpticalFlowPyrLK(gray, previous, moved, None, **_LK)
        fb_error = np.linalg.norm((back - points).reshape(-1, 2), axis=1)
        good = (ok.reshape(-1) == 1) & (ok_back.reshape(-1) == 1) & (fb_error < MAX_FB_ERROR_PX)
        good = good.reshape(-1, 5)
        moved = moved.reshape(-1, 5, 2)

        keep, boxes, marks = [], [], []
        for i in range(len(self._dets)):
            src = self._dets.landmarks[i][good[i]]
            if len(src) < MIN_POINTS:
                continue
            matrix, _ = cv2.estimateAffinePartial2D(src, moved[i][good[i]], method=cv2.LMEDS)
            if matrix is None:
                continue
            # Lost points follow the face's motion instead of their own bad flow.
            new_marks = np.where(good[i][:, None], moved[i], self._dets.landmarks[i] @ matrix[:, :2].T + matrix[:, 2])
            x1, y1, x2, y2 = self._dets.boxes[i]
            centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2]) @ matrix[:, :2].T + matrix[:, 2]
            scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
            half_w, half_h = (x2 - x1) / 2 * scale, (y2 - y1) / 2 * scale
            keep.append(i)
            boxes.append([centre[0] - half_w, centre[1] - half_h, centre[0] + half_w, centre[1] + half_h])
            marks.append(new_marks)
        if not keep:
            self._dets = Detections.empty()
        else:
            self._dets = Detections(
                np.asarray(boxes, np.float32),
                self._dets.scores[keep].astype(np.float32),
                np.asarray(marks, np.float32),
            )
        return self._dets
