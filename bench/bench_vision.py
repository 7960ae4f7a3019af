"""Bench of the video-query vision pieces on one CPU thread.

Prints: object-detector (OD) ms per frame triple; cloud classifier (COC, EfficientNet-Lite0)
ms per crop at batch 1 and 8; edge classifier (EOC) ms per crop; crops per minute of video
per clip at a 0.3 s sampling interval; the share of crops COC calls positive for the query;
and the EOC's held-out accuracy against COC after a short training (with its time).

    python bench/bench_vision.py [--query car] [--epochs 10] [--min-area 4096]

``--min-area`` is the detector's contour-area threshold (ACE: 4096 px); the pedestrians of
vtest.avi are small, so a lower value gives many more crops there.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

from edgecloud.ml.vision import (
    CLIPS,
    ClipNotFound,
    CloudClassifier,
    EdgeClassifier,
    EdgeNet,
    FrameDifferencer,
    build_training_set,
    find_clip,
    train_edge_classifier,
)


def _frames(name: str) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(find_clip(name)))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps


def _ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) * 1000 / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", default="car")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--min-area", type=float, default=4096)
    parser.add_argument("--interval", type=float, default=0.3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    det = FrameDifferencer(min_area=args.min_area)
    coc = CloudClassifier()

    all_crops: list[np.ndarray] = []
    print(f"detector min_area={args.min_area:g}, sampling interval {args.interval} s")
    for name in CLIPS:
        try:
            frames, fps = _frames(name)
        except ClipNotFound as exc:
            print(f"{name}: skipped ({exc})")
            continue
        step = max(1, round(args.interval * fps))
        samples = list(range(2, len(frames), step))
        t0 = time.perf_counter()
        n = 0
        for i in samples:
            crops, _ = det.detect(frames[i - 2], frames[i - 1], frames[i])
            all_crops.extend(crops)
            n += len(crops)
        od_ms = (time.perf_counter() - t0) * 1000 / len(samples)
        minutes = len(frames) / fps / 60
        h, w = frames[0].shape[:2]
        print(f"{name}: {w}x{h} {fps:g} fps {len(frames)} frames; OD {od_ms:.2f} ms/triple; "
              f"{n} crops = {n / minutes:.1f} crops per minute of video")

    if not all_crops:
        print("no crops: nothing to classify")
        return
    sample = (all_crops * 8)[:8]
    print(f"COC ms/crop: batch 1 {_ms(lambda: coc.top5(sample[:1]), 10):.1f}, "
          f"batch 8 {_ms(lambda: coc.top5(sample), 3) / 8:.1f}")
    eoc = EdgeClassifier(EdgeNet(), args.query)
    print(f"EOC ms/crop: batch 1 {_ms(lambda: eoc.confidence(sample[:1]), 20):.2f}, "
          f"batch 8 {_ms(lambda: eoc.confidence(sample), 5) / 8:.2f}")
    labels = coc.classify(all_crops, args.query)
    print(f"COC positive ratio for {args.query!r}: {sum(labels)}/{len(labels)} = "
          f"{sum(labels) / len(labels):.3f}")

    t0 = time.perf_counter()
    names = [n for n in CLIPS if _available(n)]
    crops, y = build_training_set(names, args.query, coc, det, interval_s=0.1)
    t_set = time.perf_counter() - t0
    print(f"training set (historical 40 %, every 0.1 s): {len(crops)} crops, "
          f"{int(y.sum())} positive, built in {t_set:.1f} s")
    if len(crops) < 10 or y.sum() < 2:
        print("too few crops or positives to train an EOC (try --min-area 1024)")
        return
    clf, rep = train_edge_classifier(crops, y, epochs=args.epochs, query=args.query)
    print(f"EOC training: {rep.epochs} epochs in {rep.seconds:.1f} s; held-out {rep.n_val} "
          f"({rep.pos_val} positive): accuracy {rep.accuracy:.3f}, precision "
          f"{rep.precision:.3f}, recall {rep.recall:.3f}, F1 {rep.f1:.3f} vs COC")
    conf = clf.confidence(crops)
    print(f"EOC confidence bands on the training set: > 0.8: {(conf > 0.8).mean():.2f}, "
          f"<= 0.1: {(conf <= 0.1).mean():.2f}, between: "
          f"{((conf > 0.1) & (conf <= 0.8)).mean():.2f}")


def _available(name: str) -> bool:
    try:
        find_clip(name)
    except ClipNotFound:
        return False
    return True


if __name__ == "__main__":
    main()
