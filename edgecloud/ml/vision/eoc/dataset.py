"""The EOC's training set: crops of the historical video segments, labelled by COC."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgecloud.ml.vision.detector import FrameDifferencer
from edgecloud.ml.vision.efficientnet_lite import CloudClassifier
from edgecloud.ml.vision.eoc.preprocess import Progress
from edgecloud.ml.vision.imagenet import query_classes
from edgecloud.ml.vision.video import VideoSource, find_clip, split


def build_training_set(
    clip_names: Sequence[str],
    query: str,
    cloud: CloudClassifier,
    detector: FrameDifferencer | None = None,
    interval_s: float = 0.1,
    progress: Progress | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Crops of the historical segment of each clip, labelled by COC for ``query``.

    Every ``interval_s`` of video the detector runs on three consecutive frames (as the OD
    does live); each crop is labelled 1 when COC's top-5 hits the query, else 0. Returns
    ``(crops, labels)`` with ``labels`` an int64 array.
    """
    query_classes(query)  # fail early on an unknown query
    detector = detector or FrameDifferencer()
    crops: list[np.ndarray] = []
    for name in clip_names:
        seg = split(name)["historical"]
        source = VideoSource(find_clip(name), loop=False, start_frac=seg.start_frac,
                             end_frac=seg.end_frac)
        step = max(1, round(interval_s * source.fps))
        window: list[np.ndarray] = []
        for n, (_idx, _ts, frame) in enumerate(source):
            window = [*window[-2:], frame]
            if len(window) == 3 and (n - 2) % step == 0:
                found, _ = detector.detect(*window)
                crops.extend(found)
            if progress and n % 50 == 0:
                progress(f"detect {name}", n, len(source))
    labels = np.zeros(len(crops), dtype=np.int64)
    chunk = 32
    for i in range(0, len(crops), chunk):
        part = crops[i : i + chunk]
        labels[i : i + len(part)] = [cloud.is_positive(t, query) for t in cloud.top5(part)]
        if progress:
            progress("label", min(i + chunk, len(crops)), len(crops))
    return crops, labels
