"""DNN partitioning on edgecloud: the head of a model on the edge, its tail in the cloud.

`Head` (edge) runs the model up to the chosen cut and sends the crossing tensor to `Tail`
(cloud), which finishes the inference and replies on the head's reply topic. The head
profiles itself where it runs, asks the tail for the cloud's profile, and (cut `auto`)
chooses the cut for the link it measures: every round trip (probes and real requests)
feeds a `LinkEstimator`. Runs are driven through the in-app controller's `set`:
`{"run": id, "cut": k | "auto", "requests": n}`; every request's record is published on
the head site's topic `partition/results`.

With `model: early_exit_cnn` (and `weights`: a file reference to `EarlyExitCNN.to_bytes()`)
the head runs the first block and the side exit on the edge at cut 1: a sample whose
branch entropy is below `exit_threshold` is answered there, the others go on to the tail.

Compute on a node whose declared `speed` < 1 is stretched (sleep, `SlowNode`) to emulate
a slower device; profiles are measured with that stretch, so decisions use measured times.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import torch

from edgecloud import Component
from edgecloud.ml.inference.cascade import Ewma
from edgecloud.ml.inference.early_exit import EarlyExitCNN, entropy
from edgecloud.ml.inference.partition import Partition, decode_tensor, encode_tensor
from edgecloud.ml.inference.partition_models import named_partition
from edgecloud.ml.inference.profile import (
    LinkEstimator,
    Profile,
    SlowNode,
    choose_cut,
    measure_profile,
)
from edgecloud.resource.files import FileRef

REPLIES = "partition/replies/{instance}"
RESULTS = "partition/results"


class _Partitioned(Component):
    """What both sides share: the model's segments and the node's speed emulation."""

    def setup(self) -> None:
        torch.set_num_threads(1)  # one core per instance: the machine runs many of them
        self.node_emulation = SlowNode(self.context.node_speed)
        self.early_exit: EarlyExitCNN | None = None
        if self.params.get("model") == "early_exit_cnn":
            # Trained weights shipped by reference; the one cut is where the branch sits.
            ref = self.params.get("weights")
            self.early_exit = EarlyExitCNN.from_bytes(self.files.get(FileRef.model_validate(
                ref))) if ref else EarlyExitCNN().eval()
            self.example = torch.zeros(1, 1, 28, 28)
            self.part = Partition(self.early_exit.trunk, self.example).select(["block1_2"])
        else:
            self.part, self.example = named_partition(
                self.params.get("model", "efficientnet_lite0"), self.params.get("cuts", "coarse"))
        self.segments = self.part.segments
        self.profile = measure_profile(
            self.part, self.example, model=self.params.get("model", "efficientnet_lite0"),
            node=self.node, speed=self.context.node_speed, stretch=self.node_emulation.stretch,
            repeats=int(self.params.get("profile_repeats", 3)))
        self.log.info("profiled", total_s=round(self.profile.tail_s(0), 4),
                      speed=self.context.node_speed)

    def compute(self, x: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, float]:
        """Run segments start..end-1; returns the tensor and the (stretched) seconds."""
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(start, end):
                s0 = time.perf_counter()
                x = self.segments[i](x)
                self.node_emulation.stretch(i, time.perf_counter() - s0)
        return x, time.perf_counter() - t0


class Tail(_Partitioned):
    """Cloud side: finishes inferences from a cut, answers probes and profile requests."""

    def on_message(self, msg: Any) -> None:
        p = msg.payload
        reply = REPLIES.format(instance=p["reply_to"])
        kind = p.get("kind")
        if kind == "probe":
            self.publish(reply, {"id": p["id"]}, site=p["site"])
        elif kind == "profile":
            self.publish(reply, {"id": p["id"], "profile": self.profile.model_dump()},
                         site=p["site"])
        elif kind == "tensor":
            doc = p["tensor"]
            if "ref" in doc:  # large tensors travel through the file service
                doc = {**doc, "data": self.files.get(FileRef.model_validate(doc["ref"]))}
            y, busy = self.compute(decode_tensor(doc), int(p["cut"]), len(self.segments))
            self.publish(reply, {"id": p["id"], "tail_s": busy, "top1": int(y.argmax())},
                         site=p["site"])
        else:
            self.log.warning("unknown request kind", kind=kind, sender=msg.sender)


class Head(_Partitioned):
    """Edge side: runs requests at a fixed or an automatically chosen cut."""

    def setup(self) -> None:
        super().setup()
        self.int8 = bool(self.params.get("int8", False))
        self.file_threshold = int(self.params.get("file_threshold_bytes", 4 << 20))
        self.estimator = LinkEstimator(alpha=float(self.params.get("alpha", 0.5)))
        self.cloud_profile: Profile | None = None
        # Measured/profiled compute ratios of recent requests (contention since profiling).
        self.edge_scale, self.cloud_scale = Ewma(0.3), Ewma(0.3)
        self._waiting: dict[str, tuple[threading.Event, list[Any]]] = {}
        self._lock = threading.Lock()
        self._quiet = 0  # requests since the link was last measured
        self._images: tuple[torch.Tensor, torch.Tensor] | None = None
        self._next = 0
        self.subscribe(REPLIES.format(instance=self.name), self._on_reply)

    def _on_reply(self, msg: Any) -> None:
        with self._lock:
            slot = self._waiting.get(msg.payload.get("id"))
        if slot is not None:
            slot[1].append(msg.payload)
            slot[0].set()

    def ask(self, payload: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send to the tail and wait for its reply (None after `timeout`)."""
        rid = uuid.uuid4().hex
        ev: threading.Event = threading.Event()
        box: list[Any] = []
        with self._lock:
            self._waiting[rid] = (ev, box)
        try:
            self.send("tail", {**payload, "id": rid, "reply_to": self.name, "site": self.site})
            return box[0] if ev.wait(timeout) else None
        finally:
            with self._lock:
                self._waiting.pop(rid, None)

    def probe(self, pairs: int = 3) -> None:
        """Small and large payloads back to back (`pairs` times): the fixed part and the
        rate, from medians (the platform's own traffic shares the link)."""
        samples = []
        for _ in range(pairs):
            sizes, rtts = (64, self.estimator.probe_bytes()), []
            for n in sizes:
                t0 = time.perf_counter()
                if self.ask({"kind": "probe", "pad": bytes(n)}, timeout=60) is None:
                    break
                rtts.append(time.perf_counter() - t0)
            if len(rtts) == 2:
                samples.append((sizes[0], rtts[0], sizes[1], rtts[1]))
        self.estimator.observe_pairs(samples)

    def choose(self) -> int:
        assert self.cloud_profile is not None
        return choose_cut(self.profile, self.cloud_profile, self.estimator.rate_bps,
                          self.estimator.base_s, self.int8, self.edge_scale.value or 1.0,
                          self.cloud_scale.value or 1.0)

    def _rescale(self, k: int, head_s: float, tail_s: float | None) -> None:
        if self.profile.head_s(k) > 1e-3:
            self.edge_scale.update(head_s / self.profile.head_s(k))
        if tail_s is not None and self.cloud_profile and self.cloud_profile.tail_s(k) > 1e-3:
            self.cloud_scale.update(tail_s / self.cloud_profile.tail_s(k))

    def next_input(self) -> tuple[torch.Tensor, int | None]:
        """The next request's input and its label (Fashion-MNIST test images in turn for
        the early-exit model; the fixed example otherwise: latency does not depend on it)."""
        if self.early_exit is None:
            return self.example, None
        if self._images is None:
            from edgecloud.ml.training.data import load_split

            self._images = load_split("test").tensors()
        xs, ys = self._images
        i, self._next = self._next % len(ys), self._next + 1
        return xs[i:i + 1], int(ys[i])

    def side_exit(self, h: torch.Tensor) -> int | None:
        """The branch's class if its entropy is under `exit_threshold`, else None."""
        assert self.early_exit is not None
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = self.early_exit.branch(h)
        self.node_emulation.stretch("branch", time.perf_counter() - t0)
        confident = float(entropy(logits)[0]) < float(self.params.get("exit_threshold", 0.0))
        return int(logits.argmax()) if confident else None

    def infer(self, cut: int | str) -> dict[str, Any]:
        """One request end to end; the record published on `partition/results`."""
        t0 = time.perf_counter()
        k = self.choose() if cut == "auto" else int(cut)
        x, label = self.next_input()
        x, head_s = self.compute(x, 0, k)
        rec: dict[str, Any] = {"cut": k, "node": self.part.cuts[k].node, "head_s": head_s,
                               "bytes": 0, "tail_s": 0.0, "transfer_s": 0.0, "label": label,
                               "exited": False}
        if self.early_exit is not None and k == 1:  # the branch sits at the first cut
            top1 = self.side_exit(x)
            if top1 is not None:
                rec.update(exited=True, top1=top1, head_s=time.perf_counter() - t0,
                           latency_s=time.perf_counter() - t0)
                return rec
        if k < len(self.segments):
            doc = encode_tensor(x, self.int8)
            nbytes = len(doc["data"])  # type: ignore[arg-type]
            if nbytes > self.file_threshold:
                doc = {**doc, "data": b"", "ref": self.files.put(doc["data"]).model_dump()}
            t1 = time.perf_counter()
            reply = self.ask({"kind": "tensor", "cut": k, "tensor": doc}, timeout=120)
            if reply is None:
                return {**rec, "error": "no reply from the tail within 120 s"}
            rtt = time.perf_counter() - t1
            self.estimator.observe(nbytes, rtt - reply["tail_s"])
            self._rescale(k, head_s, reply["tail_s"])
            rec.update(bytes=nbytes, tail_s=reply["tail_s"], transfer_s=rtt - reply["tail_s"],
                       top1=reply["top1"])
        else:
            self._rescale(k, head_s, None)
            rec["top1"] = int(x.argmax())
        rec["latency_s"] = time.perf_counter() - t0
        return rec

    def run(self) -> None:
        while self.cloud_profile is None and self.sleep(0.5):
            reply = self.ask({"kind": "profile"}, timeout=5)  # the tail may still start
            if reply is not None:
                self.cloud_profile = Profile.model_validate(reply["profile"])
        self.probe()
        done = None
        while self.sleep(0.1):
            run = self.params.get("run")
            if not run or run == done:
                continue
            done = run
            self._next = 0  # every run sees the same inputs (thresholds compare fairly)
            cut = self.params.get("cut", "auto")
            for _ in range(int(self.params.get("probes", 0))):
                self.probe()
            every = int(self.params.get("probe_every", 5))
            for i in range(int(self.params.get("requests", 1))):
                if cut == "auto" and self._quiet >= every:
                    self.probe()  # all-edge requests measure nothing: keep the link fresh
                    self._quiet = 0
                rec = self.infer(cut)
                self._quiet = self._quiet + 1 if rec["bytes"] == 0 else 0
                self.publish(RESULTS, {"run": run, "i": i, "rate_bps": self.estimator.rate_bps,
                                       "base_s": self.estimator.base_s, **rec})
            self.publish(RESULTS, {"run": run, "done": True, "rate_bps": self.estimator.rate_bps,
                                   "base_s": self.estimator.base_s,
                                   "edge_profile": self.profile.model_dump(),
                                   "cloud_profile": self.cloud_profile.model_dump()
                                   if self.cloud_profile else None})
