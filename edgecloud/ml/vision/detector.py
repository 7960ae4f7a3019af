"""ACE's object detector (OD): three-frame differencing, and JPEG helpers for crops.

Follows ACE-Evaluation's detector: on three consecutive frames, ``absdiff(f1, f2) AND
absdiff(f2, f3)`` (on colour, then to grey), binary threshold 25, dilate x3 and erode x1
with a 3x3 kernel, external contours; a contour is kept when its *contour* area > 4096 and
its bounding box satisfies ``w + 8 < 2 (h + 16)`` (drops wide, flat smears); the crop is the
box of the third frame padded by 10 px. Differences from ACE, on purpose:

- the padded box is clamped to the frame (ACE sliced with negative indices near the top or
  left border, which returned empty or wrapped crops);
- like ACE, a padded crop larger than 300x300 px is resized to 224x224 before it leaves the
  detector (it saves bandwidth and no classifier uses more); ``large_area=None`` turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Box", "FrameDifferencer", "decode_jpeg", "encode_jpeg"]

Box = tuple[int, int, int, int]  # x, y, w, h of the padded, clamped crop in frame pixels

_KERNEL_3X3 = np.ones((3, 3), np.uint8)  # what OpenCV's dilate/erode use for kernel=None


@dataclass
class FrameDifferencer:
    """Three-frame differencing detector; ``detect(f1, f2, f3) -> (crops, boxes)``."""

    threshold: int = 25
    dilate: int = 3
    erode: int = 1
    min_area: float = 4096.0
    pad: int = 10
    large_area: int | None = 300 * 300
    large_size: int = 224

    def mask(self, f1: np.ndarray, f2: np.ndarray, f3: np.ndarray) -> np.ndarray:
        """Binary motion mask (uint8 0/255) of the middle-to-last frame motion."""
        if not (f1.shape == f2.shape == f3.shape):
            raise ValueError(f"frames differ in shape: {f1.shape}, {f2.shape}, {f3.shape}")
        both = cv2.bitwise_and(cv2.absdiff(f1, f2), cv2.absdiff(f2, f3))
        if both.ndim == 3:
            both = cv2.cvtColor(both, cv2.COLOR_BGR2GRAY)
        _, m = cv2.threshold(both, self.threshold, 255, cv2.THRESH_BINARY)
        if self.dilate:
            m = cv2.dilate(m, _KERNEL_3X3, iterations=self.dilate)
        if self.erode:
            m = cv2.erode(m, _KERNEL_3X3, iterations=self.erode)
        return m

    def boxes(self, f1: np.ndarray, f2: np.ndarray, f3: np.ndarray) -> list[Box]:
        """Padded, frame-clamped boxes of the moving objects, in contour order."""
        contours, _ = cv2.findContours(
            self.mask(f1, f2, f3), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        fh, fw = f3.shape[:2]
        out: list[Box] = []
        for c in contours:
            if cv2.contourArea(c) <= self.min_area:
                continue
            x, y, w, h = cv2.boundingRect(c)
            if not (w + 8) < 2 * (h + 16):  # ACE's aspect rule
                continue
            x0, y0 = max(x - self.pad, 0), max(y - self.pad, 0)
            x1, y1 = min(x + w + self.pad, fw), min(y + h + self.pad, fh)
            out.append((x0, y0, x1 - x0, y1 - y0))
        return out

    def crop(self, frame: np.ndarray, box: Box) -> np.ndarray:
        """The crop of ``box`` (a copy), shrunk to ``large_size`` squared if it is large."""
        x, y, w, h = box
        crop = frame[y : y + h, x : x + w]
        if self.large_area is not None and w * h > self.large_area:
            size = (self.large_size, self.large_size)
            return cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        return crop.copy()

    def detect(
        self, f1: np.ndarray, f2: np.ndarray, f3: np.ndarray
    ) -> tuple[list[np.ndarray], list[Box]]:
        """Crops (from the third frame) and their boxes for three consecutive frames."""
        boxes = self.boxes(f1, f2, f3)
        return [self.crop(f3, b) for b in boxes], boxes


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a BGR (or grey) uint8 image."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cannot JPEG-encode an image of shape {image.shape}")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """BGR uint8 image from JPEG bytes; ValueError if they are not a decodable image."""
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"not a decodable image ({len(data)} bytes)")
    return img
