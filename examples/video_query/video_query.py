"""ACE's intelligent video query on edgecloud: "is there a car in the cameras of this area?"

DG streams a camera's clip at its frame rate; OD extracts moving-object crops by
three-frame differencing every `interval` seconds; EOC (a small edge CNN trained for the
query) and COC (EfficientNet-Lite0, ImageNet) classify them as the in-app controller's
policy says (edgecloud.ml.inference.cascade: ACE's alpha/beta band by default, or a
hard-example mining filter from the controller params `hem`, edgecloud.ml.inference.hem);
RS stores every decision in SQLite.
Crops also go to the edge site's file store (LAN only) so the evaluation can label every
crop with COC afterwards, as ACE did.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgecloud import Component, Message


def _emulate_speed(component: Component, busy_s: float) -> None:
    """Stretch `busy_s` of compute to the node's declared speed (1 = this machine)."""
    speed = component.context.node_speed
    if speed < 1.0:
        time.sleep(busy_s * (1.0 / speed - 1.0))


class DataGenerator(Component):
    """DG: one camera. Streams its clip's live segment at the real frame rate, looping."""

    def run(self) -> None:
        from edgecloud.ml.vision import VideoSource, encode_jpeg, find_clip

        clips = list(self.params.get("clips", ["vtest", "bikes"]))
        index = int(self.name.rsplit("-", 1)[1])
        clip = clips[index % len(clips)]
        # Cameras sharing a clip start at different points, so they see different scenes.
        offset = (index // len(clips)) * float(self.params.get("camera_offset", 0.13))
        start = float(self.params.get("live_from", 0.4))
        source = VideoSource(find_clip(clip), loop=True, realtime=True,
                             start_frac=start + offset % (1 - start), end_frac=1.0)
        width = int(self.params.get("width", 0))  # 0: the clip's own resolution
        for idx, ts, frame in source:
            if self.stopped.is_set():
                return
            if width and frame.shape[1] > width:
                frame = cv2.resize(frame, (width, frame.shape[0] * width // frame.shape[1]))
            self.send("od", {"camera": self.name, "clip": clip, "idx": idx, "ts": ts,
                             "jpeg": encode_jpeg(frame, quality=85)})


class ObjectDetector(Component):
    """OD: three-frame differencing every `interval` s; crops go where the policy says."""

    def setup(self) -> None:
        self.detectors: dict[tuple[int, int], Any] = {}
        self.frames: deque[tuple[int, np.ndarray]] = deque(maxlen=3)
        self.next_sample = time.monotonic()
        self.crops = self.metrics.counter("crops_total", "crops extracted")

    def on_message(self, msg: Message) -> None:
        from edgecloud.ml.vision import decode_jpeg, encode_jpeg

        # Params change live (controller `set`): `active`, `interval`, `run`.
        now = time.monotonic()
        self.frames.append((msg.payload["idx"], decode_jpeg(msg.payload["jpeg"])))
        if not self.params.get("active", True) or len(self.frames) < 3 or now < self.next_sample:
            return
        self.next_sample = now + float(self.params["interval"])
        run_id = str(self.params["run"])
        (_, a), (_, b), (idx, c) = self.frames
        crops, _boxes = self.detector_for(c.shape[:2]).detect(a, b, c)
        camera = msg.payload["camera"]
        for k, crop in enumerate(crops):
            crop_id = f"{camera}-{idx}-{k}-{int(time.time() * 1000) % 100000}"
            jpeg = encode_jpeg(crop, quality=90)
            self.files.put(jpeg, key=f"crops/{run_id}/{crop_id}.jpg")  # LAN, for GT
            target = self.policy.decide("route", None)
            self.send("eoc" if target == "edge" else "coc",
                      {"id": crop_id, "run": run_id, "camera": camera, "t_sent": time.time(),
                       "jpeg": jpeg, "site": self.site, "via": "od"})
            self.crops.inc()


    def detector_for(self, shape: tuple[int, int]) -> Any:
        """ACE's detector settings, its area threshold scaled to this frame size.

        ACE keeps contours above 4096 px on 1920x1080 frames; the same share of the frame
        on a 768x576 clip is ~870 px (`min_area` in params overrides it)."""
        from edgecloud.ml.vision import FrameDifferencer

        if shape not in self.detectors:
            scaled = 4096 * shape[0] * shape[1] / (1920 * 1080)
            area = float(self.params.get("min_area", scaled))
            self.detectors[shape] = FrameDifferencer(min_area=area)
        return self.detectors[shape]


class _Reporting(Component):
    """Reports the mean end-to-end inference latency of each interval to the controller."""

    def setup(self) -> None:
        self._eils: list[float] = []

    def record_eil(self, t_sent: float) -> float:
        eil = time.time() - t_sent
        self._eils.append(eil)
        if len(self._eils) >= 1:
            self.report(eil_s=sum(self._eils) / len(self._eils), n=len(self._eils))
        if len(self._eils) > 50:
            self._eils = self._eils[-50:]
        return eil

    def result(self, crop: dict[str, Any], label: bool, where: str, dropped: bool,
               confidence: float | None) -> None:
        self.send("rs", {"id": crop["id"], "run": crop["run"], "camera": crop["camera"],
                         "t_sent": crop["t_sent"],
                         "t_decided": time.time(), "label": label, "where": where,
                         "dropped": dropped, "confidence": confidence})


class EdgeClassifierComponent(_Reporting):
    """EOC: the query's small CNN; decides or escalates per the policy."""

    def setup(self) -> None:
        super().setup()
        from edgecloud.ml.vision import EdgeClassifier
        from edgecloud.resource.files import FileRef

        ref = FileRef.model_validate(self.params["model"])
        path = self.files.get_to(ref, Path(self.context.instance_dir) / "eoc.model")
        self.model = EdgeClassifier.load(path)

    def on_message(self, msg: Message) -> None:
        from edgecloud.ml.vision import decode_jpeg

        crop = msg.payload
        t0 = time.perf_counter()
        conf = float(self.model.confidence([decode_jpeg(crop["jpeg"])])[0])
        _emulate_speed(self, time.perf_counter() - t0)
        verdict = self.policy.decide("confidence", conf)
        if verdict == "escalate":
            self.send("coc", {**crop, "via": "eoc", "eoc_conf": conf})
            self.record_eil(crop["t_sent"])  # the edge's part ends at the hand-off
            return
        self.record_eil(crop["t_sent"])
        self.result(crop, verdict == "positive", "edge", verdict == "drop", conf)


class CloudClassifierComponent(_Reporting):
    """COC: EfficientNet-Lite0; positive when the query's classes are in its top-5."""

    def setup(self) -> None:
        super().setup()
        from edgecloud.ml.vision import CloudClassifier

        self.model = CloudClassifier()
        self.query = str(self.params["query"])

    def on_message(self, msg: Message) -> None:
        from edgecloud.ml.vision import decode_jpeg

        crop = msg.payload
        top5 = self.model.top5([decode_jpeg(crop["jpeg"])])[0]
        self.record_eil(crop["t_sent"])
        self.result(crop, self.model.is_positive(top5, self.query), "cloud", False, None)


class ResultStorage(Component):
    """RS: every decision, with crop id, camera, timestamps, label and where it was made."""

    def setup(self) -> None:
        self.db = sqlite3.connect(self.params["db"], check_same_thread=False)
        self.db.execute("""CREATE TABLE IF NOT EXISTS results (
            run TEXT, id TEXT, camera TEXT, t_sent REAL, t_decided REAL, label INTEGER,
            location TEXT, dropped INTEGER, confidence REAL, PRIMARY KEY (run, id))""")

    def on_message(self, msg: Message) -> None:
        r = msg.payload
        self.db.execute("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?)",
                        (r["run"], r["id"], r["camera"], r["t_sent"], r["t_decided"],
                         int(r["label"]), r["where"], int(r["dropped"]), r["confidence"]))
        self.db.commit()

    def teardown(self) -> None:
        self.db.close()
