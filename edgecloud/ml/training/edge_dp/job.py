"""What a data-parallel job is and what it did: its settings, events and per-step records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgecloud.ml.training.edge_dp.balance import Policy


class JobConfig(BaseModel):
    """Settings of one data-parallel job."""

    model_config = ConfigDict(extra="forbid")
    global_batch: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    policy: Policy = "aware"
    rebalance_every: int = Field(5, ge=1)
    ewma_alpha: float = Field(0.3, gt=0, le=1)
    compression: Literal["fp32", "int8", "topk"] = "fp32"
    topk_ratio: float = Field(0.01, gt=0, le=1)
    downlink: Literal["fp32", "int8"] = "fp32"
    train_size: int = Field(60000, ge=1, le=60000)
    width: int = Field(16, ge=1)
    seed: int = 0
    step_timeout_s: float = Field(10.0, gt=0)
    min_workers: int = Field(1, ge=1)  # to wait for before the first step
    checkpoint: Path | None = None
    checkpoint_every: int = Field(10, ge=1)


class Event(BaseModel):
    """Something that happened to the job: a worker joined or was lost, a resume."""

    step: int
    time_s: float
    kind: Literal["join", "lost", "refused", "resume", "policy", "kill", "spawn", "restart"]
    worker: str = ""
    detail: str = ""


@dataclass
class StepRecord:
    """One step: its loss, wall time, images trained on, policy and shares per worker."""

    step: int
    loss: float
    seconds: float
    images: int
    policy: str
    shares: dict[str, int]


@dataclass
class JobReport:
    """What a run did: per-step records, events, bytes moved, worker time split."""

    steps: list[StepRecord] = field(default_factory=list)
    earlier_loss: list[float] = field(default_factory=list)  # before a resume
    events: list[Event] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    compute_s: float = 0.0
    busy_s: float = 0.0
    results: int = 0   # worker results received
    overruns: int = 0  # of which real compute exceeded the emulated time (should be ~0)
    outside_s: float = 0.0  # round time not spent busy in a worker: transfer, scheduling

    def overhead_per_result(self) -> float:
        """Mean seconds a task's round trip spent outside the worker's busy time."""
        return self.outside_s / self.results if self.results else 0.0

    @property
    def loss_per_step(self) -> list[float]:
        return self.earlier_loss + [r.loss for r in self.steps]

    @property
    def images(self) -> int:
        return sum(r.images for r in self.steps)

    def images_per_s(self, policy: str | None = None, skip: int = 0) -> float:
        """Images per second of step wall time, over the steps under ``policy`` (all by
        default), leaving out the first ``skip`` records."""
        recs = [r for r in self.steps[skip:] if policy is None or r.policy == policy]
        seconds = sum(r.seconds for r in recs)
        return sum(r.images for r in recs) / seconds if seconds > 0 else 0.0

    def bytes_per_image(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {"up": self.bytes_up / n, "down": self.bytes_down / n,
                "total": (self.bytes_up + self.bytes_down) / n}

    def compute_fraction(self) -> float:
        """Share of the workers' busy time that was real compute (the rest: emulation)."""
        return self.compute_s / self.busy_s if self.busy_s > 0 else 0.0
