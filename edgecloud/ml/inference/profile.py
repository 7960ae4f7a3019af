"""Layer profiles, the link estimate and the cut decision of DNN partitioning.

A `Profile` holds, for every selected cut of a `Partition`, the crossing tensor's size
and the measured time of the segment that follows it on one node. The edge and the cloud
each measure their own (where they run, so an edge node's emulated slowness is in its
numbers) or load a saved JSON. `choose_cut` minimises

    edge_time(head) + base_rtt + 8 * bytes / rate + cloud_time(tail)

(0 transfer for all-edge) with `rate` and `base_rtt` from a `LinkEstimator` fed with
measured round trips through the platform's real message path (probes and the requests
themselves), updated by EWMA so the decision follows the link.

    edge, cloud = measure_profile(part), Profile.load("cloud.json")
    est = LinkEstimator(); est.observe(200, 0.045); est.observe(65536, 0.09)
    k = choose_cut(edge, cloud, est.rate_bps, est.base_s)
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from edgecloud.errors import UserError
from edgecloud.ml.inference.cascade import Ewma
from edgecloud.ml.inference.partition import Partition

__all__ = ["CutProfile", "LinkEstimator", "Profile", "SlowNode", "choose_cut",
           "expected_latency", "measure_profile"]


class CutProfile(BaseModel):
    """One selected cut: its crossing tensor and the time of the segment after it."""

    model_config = ConfigDict(extra="forbid")
    node: str
    shape: list[int]
    bytes_fp32: int
    bytes_int8: int
    segment_s: float
    """Time of the segment from this cut to the next (0 for the last cut)."""


class Profile(BaseModel):
    """Per-cut segment times of a model measured on one node (JSON on disk)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    node: str = ""
    speed: float = 1.0
    """The node's declared speed factor when measured (reported, not used to decide)."""
    cuts: list[CutProfile]

    def head_s(self, k: int) -> float:
        """Time to run segments 0..k-1 (the head ending at cut k)."""
        return sum(c.segment_s for c in self.cuts[:k])

    def tail_s(self, k: int) -> float:
        """Time to run segments k..end (the tail starting at cut k)."""
        return sum(c.segment_s for c in self.cuts[k:])

    def save(self, path: Path | str) -> None:
        Path(path).write_text(self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: Path | str) -> Profile:
        """A saved profile; a clear error naming the file when it is missing or malformed."""
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except OSError as exc:
            raise UserError(f"profile {path}: cannot read it ({exc.strerror})") from None
        except ValueError as exc:
            raise UserError(f"profile {path}: not a valid profile: {exc}") from None


class SlowNode:
    """Emulates a node `speed` times as fast as this host by sleeping after compute.

    A segment is stretched to `fastest time seen for it / speed`: the emulated device runs
    at a steady speed, and a burst of load from other processes on the shared host is
    not amplified by 1/speed (it only shows when it exceeds the stretched time).

    Example:
        node = SlowNode(0.1)
        t0 = time.perf_counter(); y = seg(x); node.stretch(3, time.perf_counter() - t0)
    """

    def __init__(self, speed: float) -> None:
        if speed <= 0:
            raise UserError(f"node speed must be positive, got {speed}")
        self.speed = speed
        self._fastest: dict[object, float] = {}

    def stretch(self, key: object, busy_s: float) -> None:
        """Sleep so that the work `key`, which just took `busy_s`, lasts its emulated time."""
        if self.speed >= 1.0:
            return
        fastest = min(busy_s, self._fastest.get(key, busy_s))
        self._fastest[key] = fastest
        time.sleep(max(fastest / self.speed - busy_s, 0.0))


def measure_profile(part: Partition, example: torch.Tensor, *, model: str = "",
                    node: str = "", speed: float = 1.0, repeats: int = 5,
                    stretch: Callable[[int, float], None] | None = None) -> Profile:
    """Time every segment of `part` (median of `repeats`, after one warm-up run).

    `stretch(segment, busy_s)` is called after each timed segment so an emulated slow
    node (`SlowNode.stretch`) is measured as it will run.
    """
    segments = part.segments
    times: list[list[float]] = [[] for _ in segments]
    with torch.no_grad():
        for r in range(repeats + 1):
            x = example
            for i, seg in enumerate(segments):
                t0 = time.perf_counter()
                x = seg(x)
                busy = time.perf_counter() - t0
                if stretch is not None:
                    stretch(i, busy)
                if r:  # the first pass warms caches and allocators
                    times[i].append(time.perf_counter() - t0)
    seg_s = [statistics.median(t) for t in times] + [0.0]
    return Profile(model=model, node=node, speed=speed, cuts=[
        CutProfile(node=c.node, shape=list(c.shape), bytes_fp32=c.bytes_fp32,
                   bytes_int8=c.bytes_int8, segment_s=s) for c, s in zip(part.cuts, seg_s,
                                                                        strict=True)])


def expected_latency(edge: Profile, cloud: Profile, k: int, rate_bps: float, base_s: float,
                     int8: bool = False, edge_scale: float = 1.0,
                     cloud_scale: float = 1.0) -> float:
    """Predicted end-to-end latency of cut k (result back at the edge).

    `edge_scale`/`cloud_scale` correct a profile by the measured/profiled time ratio of
    recent requests (a node busier now than when it profiled).
    """
    if len(edge.cuts) != len(cloud.cuts):
        raise UserError(f"edge profile has {len(edge.cuts)} cuts, cloud profile "
                        f"{len(cloud.cuts)}: profile the same partition on both")
    last = len(edge.cuts) - 1
    head = edge_scale * edge.head_s(k)
    if k == last:
        return head
    c = edge.cuts[k]
    nbytes = c.bytes_int8 if int8 else c.bytes_fp32
    return head + base_s + 8 * nbytes / rate_bps + cloud_scale * cloud.tail_s(k)


def choose_cut(edge: Profile, cloud: Profile, rate_bps: float, base_s: float,
               int8: bool = False, edge_scale: float = 1.0, cloud_scale: float = 1.0) -> int:
    """The cut with the lowest `expected_latency` for this link.

    Example:
        choose_cut(edge, cloud, rate_bps=1e6, base_s=0.05)    # slow link: toward the edge
    """
    if rate_bps <= 0:
        raise UserError(f"rate must be positive, got {rate_bps} bit/s")
    lat = [expected_latency(edge, cloud, k, rate_bps, base_s, int8, edge_scale, cloud_scale)
           for k in range(len(edge.cuts))]
    return min(range(len(lat)), key=lat.__getitem__)


class LinkEstimator:
    """Rate and fixed round-trip time of the edge->cloud path, from measured round trips.

    A probe pair (a small and a large payload back to back) gives one sample of each: the
    small one's round trip is the fixed part (both delays, brokers, bridge), the
    difference between the two is the large one's extra bytes at the link's rate, so the
    fixed part cancels out. A request's round trip then refines whichever of the two
    dominates it. Both are EWMAs; a rate sample more than 2x off the estimate replaces it
    (a changed link is followed at the next probe or transfer).

    Example:
        est = LinkEstimator()
        est.observe_pair(64, 0.040, 125_064, 0.140)   # fixed 40 ms, 1 Mbit in 0.1 s
        est.rate_bps, est.base_s                       # (~10e6, 0.04)
    """

    def __init__(self, alpha: float = 0.5, rate_bps: float = 10e6, base_s: float = 0.05,
                 probe_s: float = 0.2) -> None:
        self._rate = Ewma(alpha)
        self._base = Ewma(alpha)
        self.default_rate, self.default_base = rate_bps, base_s
        self.probe_s = probe_s
        self.samples = 0

    @property
    def rate_bps(self) -> float:
        return self._rate.value or self.default_rate

    def _rate_sample(self, bps: float) -> None:
        # A sample off by more than 2x is a changed link, not noise: adopt it at once
        # instead of averaging toward it over several probes.
        cur = self._rate.value
        if cur is not None and not 0.5 <= bps / cur <= 2.0:
            self._rate.value = bps
        else:
            self._rate.update(bps)

    @property
    def base_s(self) -> float:
        return self._base.value if self._base.value is not None else self.default_base

    def probe_bytes(self) -> int:
        """Size of the large probe: about `probe_s` of transfer at the estimated rate, so
        the rate stands out of the fixed part's noise (32 KiB .. 4 MiB)."""
        return int(min(max(self.rate_bps / 8 * self.probe_s, 32 << 10), 4 << 20))

    def observe_pair(self, small: int, small_rtt: float, large: int, large_rtt: float) -> None:
        """Round trips of a small and a large probe sent back to back."""
        self.observe_pairs([(small, small_rtt, large, large_rtt)])

    def observe_pairs(self, pairs: Sequence[tuple[int, float, int, float]]) -> None:
        """Several probe pairs (small, its rtt, large, its rtt): one sample of each
        quantity from their medians, so one pair delayed by cross traffic (the platform's
        own heartbeats share the link) does not move the estimate."""
        if not pairs:
            return
        self.samples += 1
        self._base.update(statistics.median(
            max(srtt - 8 * s / self.rate_bps, 0.0) for s, srtt, _, _ in pairs))
        # A pair whose difference drowned in noise carries no rate information.
        rates = [8 * (lg - s) / (lrtt - srtt) for s, srtt, lg, lrtt in pairs
                 if lrtt - srtt > 0.2 * lrtt]
        if rates:
            self._rate_sample(statistics.median(rates))

    def observe(self, nbytes: int, rtt_s: float) -> None:
        """A request's round trip that carried `nbytes` edge->cloud and a small reply."""
        self.samples += 1
        transfer = 8 * nbytes / self.rate_bps
        if transfer >= self.base_s:  # mostly transfer: a rate sample
            self._rate_sample(8 * nbytes / max(rtt_s - self.base_s, 0.25 * rtt_s))
        else:  # mostly fixed cost: a sample of the fixed part
            self._base.update(max(rtt_s - transfer, 0.0))
