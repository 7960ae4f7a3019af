"""Federated learning as an edgecloud application: an aggregator in the cloud, one client
per edge node labelled ``fl-client``; data never leaves the client.

Rounds are coordinated by small messages (round number, file refs, config, metrics);
weights and updates travel through the file service: the aggregator puts the broadcast
(the compressed delta of the published model, and the full model for clients that
missed a version) in the cloud's store, each client fetches what it needs through its
own site's file server, trains on its Dirichlet shard, puts its compressed update in its
site's store and replies with the ref; the aggregator fetches it. Every one of these
bytes crosses the WAN link accounting point.

Messages (``op``):

- client → aggregator ``hello`` every ``heartbeat`` seconds (who is alive);
- aggregator → client ``fit``: run, round, base_version, full/delta refs, config;
- client → aggregator ``update``: run, round, ref, num_examples, metrics.

A job (``run``) is started by the ``runs`` parameter (``autostart``) or by the
controller operation ``fl-run`` with the job's settings as arguments
(``edgecloud demo federated`` does this, one job per compression). The history of each
job is written to the cloud file store as ``fl/<run>/history.json``.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecloud import Component, Message
from edgecloud.resource.files import FileRef

torch.set_num_threads(1)  # two cores shared by every component of the machine


def _job(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A job's settings: the aggregator's params, then the job's own."""
    keys = ("run", "rounds", "strategy", "compression", "ratio", "min_clients",
            "round_timeout", "lr", "local_steps", "batch_size", "seed", "mu", "wait_clients",
            "down_ratio")
    job = {k: params[k] for k in keys if k in params}
    job.update(overrides)
    job.setdefault("run", job.get("compression", "fp32"))
    return job


class JobRejected(Exception):
    """A job whose settings cannot run (unknown strategy or compression, bad numbers)."""


class Aggregator(Component):
    """Runs FL jobs over the clients that said hello; evaluates on the cloud's test set."""

    def setup(self) -> None:
        from edgecloud.ml.training.data import load_fashion_mnist

        _, test = load_fashion_mnist()
        limit = int(self.params.get("test_limit") or len(test))
        self.test = test.subset(range(min(limit, len(test)))).tensors()
        self.seen: dict[str, float] = {}
        self.replies: queue.Queue[Message] = queue.Queue()
        self.jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.lock = threading.Lock()
        queued = set()
        # Jobs interrupted by a restart of this process first: each left its settings
        # next to its checkpoint, and run_job resumes from that checkpoint.
        for saved in sorted(Path(self.context.instance_dir or ".").glob("fl-*.job.json")):
            job = json.loads(saved.read_text())
            queued.add(job["run"])
            self.jobs.put(job)
        for job in self.params.get("runs") or ([{}] if self.params.get("autostart", True)
                                               else []):
            job = _job(self.params, job)
            if job["run"] not in queued:
                self.jobs.put(job)

    def on_message(self, msg: Message) -> None:
        op = msg.payload.get("op") if isinstance(msg.payload, dict) else None
        if op == "hello":
            with self.lock:
                self.seen[msg.sender] = time.monotonic()
        elif op == "update":
            with self.lock:
                self.seen[msg.sender] = time.monotonic()
            self.replies.put(msg)

    def on_command(self, op: str, args: dict[str, Any]) -> None:
        if op == "fl-run":
            self.jobs.put(_job(self.params, args))
        else:
            super().on_command(op, args)

    def alive(self) -> list[str]:
        """Clients heard from within three heartbeats."""
        window = 3 * float(self.params.get("heartbeat", 2.0))
        now = time.monotonic()
        with self.lock:
            return sorted(c for c, t in self.seen.items() if now - t < window)

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                job = self.jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.run_job(job)
            except JobRejected as exc:  # the user's settings: say what, no traceback
                self.log.error("federated job rejected", run=job.get("run"), reason=str(exc))
                self.write_history(job, [], state="failed", error=str(exc))
                # Not to be resumed after a restart (a saved job from an older version).
                saved = Path(self.context.instance_dir or ".") / f"fl-{job.get('run')}.job.json"
                saved.unlink(missing_ok=True)
            except Exception as exc:  # one bad job must not end the aggregator
                self.log.exception("federated job failed", run=job.get("run"))
                self.write_history(job, [], state="failed", error=repr(exc))

    def write_history(self, job: dict[str, Any], rounds: list[dict[str, Any]],
                      state: str, **extra: Any) -> None:
        doc = {"run": job["run"], "job": job, "state": state, "rounds": rounds, **extra}
        self.files.put(json.dumps(doc).encode(), key=f"fl/{job['run']}/history.json")

    def run_job(self, job: dict[str, Any]) -> None:
        from dataclasses import asdict

        from edgecloud.ml.training.client import get_weights, set_weights
        from edgecloud.ml.training.compression import make_compressor
        from edgecloud.ml.training.models import FashionCNN, evaluate
        from edgecloud.ml.training.server import FLServer, NotEnoughClients
        from edgecloud.ml.training.strategy import make_strategy

        try:  # every setting is checked before anything is saved or sent
            run, rounds = str(job["run"]), int(job.get("rounds", 10))
            min_clients = int(job.get("min_clients", 1))
            timeout = float(job.get("round_timeout", 120))
            config = {k: job[k] for k in ("lr", "local_steps", "batch_size", "mu") if k in job}
            config.update(run=run, seed=int(job.get("seed", 0)),
                          compression=job.get("compression", "fp32"),
                          ratio=float(job.get("ratio", 0.01)))
            strategy_kw: dict[str, Any] = {"min_fit_clients": min_clients, "config": config}
            if job.get("strategy") == "fedprox":
                strategy_kw["mu"] = float(job.get("mu", 0.01))
                config.pop("mu", None)
            strategy = make_strategy(str(job.get("strategy", "fedavg")), **strategy_kw)
            make_compressor(str(config["compression"]), config["ratio"])
            if rounds < 1 or min_clients < 1 or timeout <= 0:
                raise ValueError("rounds, min_clients and round_timeout must be positive")
        except (TypeError, ValueError) as exc:
            raise JobRejected(str(exc)) from None
        torch.manual_seed(int(job.get("seed", 0)))
        model = FashionCNN()

        def evaluate_weights(weights: list[np.ndarray]) -> dict[str, float]:
            set_weights(model, weights)
            return evaluate(model, *self.test)

        ckpt = Path(self.context.instance_dir or ".") / f"fl-{run}.npz"
        saved_job = ckpt.with_suffix(".job.json")
        saved_job.write_text(json.dumps(job))
        server = FLServer(strategy,
                          get_weights(model), compression=config["compression"],
                          ratio=config["ratio"], min_clients=min_clients,
                          down_ratio=float(job["down_ratio"]) if job.get("down_ratio") else None,
                          evaluate=evaluate_weights, checkpoint=ckpt)
        resumed_from = None
        if ckpt.exists():  # the aggregator restarted mid-job: resume where it was
            server.load(ckpt)
            resumed_from = server.round
            self.log.info("resumed from checkpoint", run=run, round=server.round)
        deadline = time.monotonic() + float(self.params.get("start_timeout", 300))
        # Wait for the clients to say hello (all of `wait_clients` if given, so every job
        # of a comparison starts with the same clients).
        want = max(min_clients, int(job.get("wait_clients", 0)))
        while len(self.alive()) < want and time.monotonic() < deadline:
            self.sleep(0.5)
        self.write_history(job, [asdict(r) for r in server.history], "running")
        while server.round < rounds and not self.stopped.is_set():
            try:
                plan = server.begin_round(self.alive())
            except NotEnoughClients as exc:
                self.log.warning("waiting for clients", reason=str(exc))
                self.sleep(1.0)
                continue
            base = f"fl/{run}/r{plan.round}"
            full = self.files.put(plan.full, key=f"{base}/full.bin").model_dump()
            delta = (self.files.put(plan.delta, key=f"{base}/delta.bin").model_dump()
                     if plan.delta is not None else None)
            for c in plan.clients:
                self.send_to(c, {"op": "fit", "run": run, "round": plan.round,
                                 "base_version": plan.base_version, "full": full,
                                 "delta": delta, "config": plan.configs[c]})
            self.collect(server, run, plan.round, set(plan.clients), timeout)
            record = server.end_round()
            self.log.info("round done", run=run, round=record.round,
                          answered=len(record.answered), dropped=record.dropped,
                          accuracy=record.metrics.get("accuracy"))
            self.write_history(job, [asdict(r) for r in server.history], "running",
                               resumed_from=resumed_from)
            self.maybe_crash(run, record.round)
        self.write_history(job, [asdict(r) for r in server.history], "done",
                           final_accuracy=evaluate_weights(server.published)["accuracy"],
                           resumed_from=resumed_from)
        ckpt.unlink(missing_ok=True)
        saved_job.unlink(missing_ok=True)

    def maybe_crash(self, run: str, rnd: int) -> None:
        """Failure drill: param ``crash_after_round: R`` makes this process die once right
        after round R was checkpointed (the platform restarts it; the job resumes)."""
        if self.params.get("crash_after_round") != rnd:
            return
        marker = Path(self.context.instance_dir or ".") / f"crashed-{run}-r{rnd}"
        if not marker.exists():
            marker.write_text("crashed on purpose\n")
            self.log.warning("failure drill: aggregator exiting", round=rnd)
            os._exit(17)

    def collect(self, server: Any, run: str, rnd: int, waiting: set[str],
                timeout: float) -> None:
        """Fetch the round's updates until all answered or the round times out."""
        from edgecloud.ml.training.client import ClientUpdate

        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline and not self.stopped.is_set():
            try:
                msg = self.replies.get(timeout=min(0.5, max(0.01,
                                                            deadline - time.monotonic())))
            except queue.Empty:
                continue
            p = msg.payload
            if p.get("run") != run or p.get("round") != rnd or msg.sender not in waiting:
                continue  # a straggler from an earlier round: ignored
            try:
                payload = self.files.get(FileRef(**p["ref"]))
            except Exception:  # its site went away with the update: a dropout
                self.log.warning("update unreachable", client=msg.sender)
                continue
            waiting.discard(msg.sender)
            server.sent(int(p.get("metrics", {}).get("bytes_down", 0)))
            server.accept(msg.sender, ClientUpdate(payload, int(p["num_examples"]),
                                                   dict(p.get("metrics", {}))))


class Client(Component):
    """Trains on this instance's Dirichlet shard of Fashion-MNIST."""

    def setup(self) -> None:
        from edgecloud.ml.training.data import dirichlet_split, iid_split, load_fashion_mnist

        train, _ = load_fashion_mnist()
        seed = int(self.params.get("seed", 0))
        if self.params.get("train_limit"):
            train = train.subset(np.random.default_rng(seed).permutation(len(train))
                                 [:int(self.params["train_limit"])])
        # The shard follows from this instance's position among the client instances:
        # every client computes the same split and keeps only its own part.
        names = sorted(p.instance for p in self.context.members
                       if p.component == self.component)
        index, count = names.index(self.name), len(names)
        self.index = index
        alpha = self.params.get("alpha", 0.5)
        parts = (iid_split(len(train), count, seed) if alpha is None else
                 dirichlet_split(train.labels, count, float(alpha), seed))
        self.x, self.y = train.subset(parts[index]).tensors()
        self.fl: Any = None
        self.run_id: str | None = None
        self.log.info("shard ready", index=index, clients=count, samples=len(self.y),
                      classes=np.bincount(self.y.numpy(), minlength=10).tolist())

    def run(self) -> None:
        while True:
            try:
                self.send("aggregator", {"op": "hello"})
            except Exception:  # the broker is reconnecting: next beat
                self.log.warning("hello not sent")
            if not self.sleep(float(self.params.get("heartbeat", 2.0))):
                return

    def on_message(self, msg: Message) -> None:
        p = msg.payload
        if not isinstance(p, dict) or p.get("op") != "fit":
            return
        from edgecloud.ml.training.client import FLClient
        from edgecloud.ml.training.models import FashionCNN

        cfg = p["config"]
        self.maybe_crash(int(p["round"]))
        if p["run"] != self.run_id:  # a new job: fresh model copy and error feedback
            self.run_id = p["run"]
            torch.manual_seed(int(cfg.get("seed", 0)))  # the aggregator's initial model
            self.fl = FLClient(FashionCNN(), self.x, self.y,
                               compression=cfg.get("compression", "fp32"),
                               ratio=float(cfg.get("ratio", 0.01)),
                               seed=int(self.params.get("seed", 0)) * 31 + self.index)
        base = int(p["base_version"])
        if base == 0 and self.fl.version == -1 and self.fl.adopt_initial(p["full"]["sha256"]):
            data = b""  # the initial model, built from the same seed: nothing to fetch
        elif p.get("delta") and self.fl.version == base - 1:
            data = self.files.get(FileRef(**p["delta"]))
            self.fl.apply_delta(data, base)
        else:
            data = self.files.get(FileRef(**p["full"]))
            self.fl.load_full(data, base)
        update = self.fl.fit(cfg)
        update.metrics["bytes_down"] = len(data)
        ref = self.files.put(update.payload, key=f"fl/{p['run']}/r{p['round']}/{self.name}.bin")
        self.send_to(msg.sender, {"op": "update", "run": p["run"], "round": p["round"],
                                  "ref": ref.model_dump(), "num_examples": update.num_examples,
                                  "metrics": update.metrics})

    def maybe_crash(self, rnd: int) -> None:
        """Failure drill: params ``crash: {round: R, index: I}`` make client I's process
        die on receiving round R (once: a marker file survives the platform's restart)."""
        drill = self.params.get("crash") or {}
        if drill.get("round") != rnd or drill.get("index", 0) != self.index:
            return
        marker = Path(self.context.instance_dir or ".") / f"crashed-r{rnd}"
        if marker.exists():
            return
        marker.write_text("crashed on purpose\n")
        self.log.warning("failure drill: exiting mid-round", round=rnd)
        os._exit(17)
