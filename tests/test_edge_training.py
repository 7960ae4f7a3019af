"""Edge data-parallel training: share planning, the wire, and real jobs of worker processes.

The jobs run a coordinator in the test process and workers as OS processes on loopback,
on a 2,000-image subset with small batches: a few seconds of training each.
"""

from __future__ import annotations

import math
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecloud.errors import UserError
from edgecloud.ml.training.edge_dp import (
    Coordinator,
    JobConfig,
    JobReport,
    ThroughputTracker,
    plan_shares,
    spawn_worker,
    split_batch,
)
from edgecloud.ml.training.edge_dp.wire import (
    ChannelClosed,
    Hello,
    ProtocolError,
    Task,
    recv_frame,
    send_frame,
)

torch.set_num_threads(1)

SMALL = {"global_batch": 32, "train_size": 2000, "width": 8, "step_timeout_s": 10.0}
SAMPLE_MS = 8.0


# -- share planning (unit) ----------------------------------------------------------

def test_split_batch_is_proportional_and_exact() -> None:
    assert split_batch(10, {"a": 3, "b": 1}) == {"a": 7, "b": 3}
    shares = split_batch(64, {"a": 300.0, "b": 300.0, "c": 100.0})
    assert sum(shares.values()) == 64
    assert shares == {"a": 27, "b": 27, "c": 10}
    # Everyone keeps at least the minimum, so a slow worker is still measured.
    assert split_batch(8, {"a": 1000.0, "b": 1.0}, minimum=2)["b"] == 2
    with pytest.raises(ValueError, match="cannot give 3 workers"):
        split_batch(2, {"a": 1, "b": 1, "c": 1})


def test_share_follows_measured_throughput() -> None:
    t = ThroughputTracker(alpha=0.5)
    t.observe("fast", 30, 0.1)   # 300 samples/s
    t.observe("slow", 30, 0.3)   # 100 samples/s
    assert plan_shares("aware", 64, ["fast", "slow"], t) == {"fast": 48, "slow": 16}
    assert plan_shares("equal", 64, ["fast", "slow"], t) == {"fast": 32, "slow": 32}
    # The slow worker speeds up: the EWMA moves half way, and so does its share.
    t.observe("slow", 30, 0.1)
    assert t.rate("slow") == pytest.approx(200.0)
    assert plan_shares("aware", 60, ["fast", "slow"], t) == {"fast": 36, "slow": 24}
    # A worker never measured is planned at the mean of the others.
    assert plan_shares("aware", 75, ["fast", "slow", "new"], t)["new"] == 25
    t.forget("fast")
    assert t.rate("fast") is None


# -- wire ---------------------------------------------------------------------------

def test_frames_round_trip_and_bad_frames_are_refused() -> None:
    a, b = socket.socketpair()
    with a, b:
        send_frame(a, Task(step=3, epoch=0, start=64, count=21, full=True), b"\x01" * 1000)
        msg, payload = recv_frame(b)
        assert isinstance(msg, Task) and msg.count == 21 and payload == b"\x01" * 1000
        header = b'{"type": "hello", "name": "w", "pickle": 1}'
        a.sendall(len(header).to_bytes(4, "little") + (0).to_bytes(4, "little") + header)
        with pytest.raises(ProtocolError, match="bad message header"):
            recv_frame(b)
        send_frame(a, Hello(name="w1"))
        assert recv_frame(b)[0] == Hello(name="w1")
        a.close()
        with pytest.raises(ChannelClosed):
            recv_frame(b)


# -- a real elastic job -------------------------------------------------------------

@pytest.fixture(scope="module")
def elastic_job(tmp_path_factory: pytest.TempPathFactory) -> JobReport:
    """w1 (speed 1) and w2 (speed 0.5) train; w2 is SIGKILLed after step 8, w3 is started
    then and trains until it has been given 4 shares."""
    logs = tmp_path_factory.mktemp("dp-logs")
    coord = Coordinator(JobConfig(**SMALL, min_workers=2, rebalance_every=3)).start()
    procs = {n: spawn_worker(coord.address, n, speed=s, sample_ms=SAMPLE_MS,
                             log=logs / f"{n}.log") for n, s in [("w1", 1.0), ("w2", 0.5)]}

    def on_step(c: Coordinator, rec) -> None:
        if rec.step == 8:
            procs["w2"].send_signal(signal.SIGKILL)
            c.note("kill", "w2")
            procs["w3"] = spawn_worker(c.address, "w3", sample_ms=SAMPLE_MS,
                                       log=logs / "w3.log")
            c.note("spawn", "w3")
        if sum("w3" in r.shares for r in c.report.steps) >= 4:
            c.finish()

    try:
        report = coord.run(steps=400, on_step=on_step, wait_s=90)
    finally:
        coord.close()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except Exception:
                p.kill()
    assert procs["w1"].returncode == 0 and procs["w3"].returncode == 0
    return report


def test_share_follows_throughput_of_real_workers(elastic_job: JobReport) -> None:
    # Steps 0-2 are planned equal (nothing measured yet); from the rebalance at step 3
    # the worker with twice the speed gets clearly more of the batch.
    first = elastic_job.steps[0].shares
    assert abs(first["w1"] - first["w2"]) <= 1
    later = [r.shares for r in elastic_job.steps[3:9]]
    assert all(s["w1"] > 1.4 * s["w2"] for s in later), later
    assert all(sum(s.values()) == SMALL["global_batch"] for s in later)


def test_data_parallel_job_survives_a_killed_worker(elastic_job: JobReport) -> None:
    lost = [e for e in elastic_job.events if e.kind == "lost"]
    assert [e.worker for e in lost] == ["w2"]
    assert lost[0].step == 9  # detected at the first step after the kill
    after = [r for r in elastic_job.steps if r.step > 9 and "w3" not in r.shares]
    # Until w3 is ready, w1 alone computes the whole batch: the job never stopped.
    assert after and all(r.shares == {"w1": SMALL["global_batch"]} for r in after)
    losses = elastic_job.loss_per_step
    assert all(math.isfinite(x) for x in losses)
    assert [r.step for r in elastic_job.steps] == list(range(len(losses)))
    assert np.mean(losses[-4:]) < losses[0]


def test_joining_worker_gets_the_model_and_a_share(elastic_job: JobReport) -> None:
    joins = [e for e in elastic_job.events if e.kind == "join" and e.worker == "w3"]
    assert len(joins) == 1 and joins[0].step > 9
    with_w3 = [r for r in elastic_job.steps if "w3" in r.shares]
    assert len(with_w3) >= 4 and all(r.shares["w3"] > 0 for r in with_w3)
    # w1 and w3 run at the same emulated speed: once measured they split about evenly.
    last = with_w3[-1].shares
    assert abs(last["w1"] - last["w3"]) <= 0.3 * SMALL["global_batch"], last


def _single_process_sgd(config: JobConfig, steps: int) -> torch.Tensor:
    from torch.nn import functional as F

    from edgecloud.ml.training.edge_dp import FashionResNet
    from edgecloud.ml.training.edge_dp.worker import epoch_permutation, training_subset

    torch.manual_seed(config.seed)
    model = FashionResNet(width=config.width)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    x, y = training_subset(config.seed, config.train_size)
    perm = epoch_permutation(config.seed, 0, config.train_size)
    b = config.global_batch
    for step in range(steps):
        idx = torch.from_numpy(perm[step * b:(step + 1) * b])
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def test_a_worker_beyond_the_global_batch_is_refused_and_the_job_goes_on(
        tmp_path: Path) -> None:
    """Every worker needs a sample: with a global batch of 2, a third worker is told why
    and exits 0, the two others train."""
    coord = Coordinator(JobConfig(**{**SMALL, "global_batch": 2}, min_workers=2)).start()
    procs = [spawn_worker(coord.address, f"w{i}", sample_ms=2.0, log=tmp_path / f"w{i}.log")
             for i in range(2)]

    def third_joins(c: Coordinator, rec: object) -> None:
        if rec.step == 0:  # type: ignore[attr-defined]
            procs.append(spawn_worker(c.address, "w2", sample_ms=2.0,
                                      log=tmp_path / "w2.log"))
        if any(e.kind == "refused" for e in c.report.events):
            c.finish()

    try:
        report = coord.run(steps=2000, on_step=third_joins, wait_s=90)
        coord.close()
        codes = [p.wait(timeout=20) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0, 0] and len(report.loss_per_step) < 2000
    refused = [e for e in report.events if e.kind == "refused"]
    assert len(refused) == 1 and "global batch of 2" in refused[0].detail
    log = (tmp_path / f"{refused[0].worker}.log").read_text()
    assert "stopped by the coordinator: the global batch of 2" in log


# -- checkpoint and resume ------------------------------------------------------------

def test_coordinator_restart_resumes_from_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "job.pt"
    config = JobConfig(**SMALL, checkpoint=ckpt, checkpoint_every=3)
    first = Coordinator(config).start()
    port = first.address[1]
    worker = spawn_worker(first.address, "w1", sample_ms=2.0, log=tmp_path / "w1.log")
    try:
        report1 = first.run(steps=6, wait_s=90)
        saved = torch.nn.utils.parameters_to_vector(first.model.parameters()).detach().clone()
        first.close(stop_workers=False)  # a crash: the worker is left to reconnect

        second = Coordinator(config, port=port)
        assert second.step == 6 and second.cursor == 6 * SMALL["global_batch"]
        restored = torch.nn.utils.parameters_to_vector(second.model.parameters())
        assert torch.equal(restored.detach(), saved)
        second.start()
        report2 = second.run(steps=9, wait_s=60)
        second.close()
        assert worker.wait(timeout=15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert [r.step for r in report2.steps] == [6, 7, 8]
    # Synchronous data parallelism is plain SGD on the global batch: the same 6 steps in
    # one process give the same weights (up to float summation order).
    assert torch.allclose(saved, _single_process_sgd(config, steps=6), atol=1e-5)
    assert report2.loss_per_step[:6] == report1.loss_per_step
    assert len(report2.loss_per_step) == 9
    kinds = [(e.kind, e.worker) for e in report2.events]
    assert ("resume", "") in kinds and kinds.count(("join", "w1")) == 2
    # The final checkpoint holds step 9; a job with other settings refuses it.
    assert Coordinator(config).step == 9
    with pytest.raises(UserError, match="written by a job with"):
        Coordinator(JobConfig(**{**SMALL, "width": 16}, checkpoint=ckpt))


# -- the example application and the demo -------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "edge_training"


def test_example_app_places_one_worker_per_dp_node() -> None:
    from edgecloud.application.topology import load_application
    from edgecloud.resource.infra import load_infrastructure

    infra = load_infrastructure(EXAMPLE / "infra.yaml")
    app = load_application(EXAMPLE / "edge_training.yaml", infra)
    assert [c.name for c in app.spec.components] == ["worker"]
    speeds = {n.name: n.speed for s in infra.spec.sites for n in s.nodes}
    assert speeds["ec-1-slow"] == pytest.approx(1 / 3, rel=1e-3)


@pytest.mark.slow
def test_demo_on_the_embedded_infrastructure(tmp_path: Path) -> None:
    """The whole quick demo: workers as components, kill, join, coordinator restart."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-m", "edgecloud.cli.main", "demo", "edge-training",
                        "--quick", "--json", str(out), "--plots", str(tmp_path)],
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["aware_images_per_s"] >= 1.3 * doc["equal_images_per_s"]
    kinds = [e["kind"] for e in doc["events"]]
    assert {"kill", "lost", "join", "restart", "resume"} <= set(kinds)
    assert any(e["kind"] == "join" and e["worker"].startswith("spare") for e in doc["events"])
    assert len(doc["loss_per_step"]) > 40
    assert (tmp_path / "edge_training_loss.png").stat().st_size > 10_000
