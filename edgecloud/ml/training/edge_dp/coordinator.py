"""Synchronous, elastic, heterogeneity-aware data-parallel SGD: the coordinator.

Why a coordinator (parameter server) over our own TCP channels, not torch.distributed:
gloo's process groups have a fixed world size; a member that dies makes every collective
fail, and changing membership means a new rendezvous — torchelastic handles it by
restarting *every* worker from the last checkpoint. Our requirements are the opposite:
a dead worker is dropped and its share redistributed at the next step, a joining worker
starts contributing at the next step, nobody restarts. A star with the coordinator at
the centre makes that a local decision of one process: each step it sends every live
worker the weights and a slice of the global batch, waits for their gradients (a closed
socket or ``step_timeout_s`` without an answer = the worker is gone), averages what came
back weighted by samples and applies the SGD step. Unequal shares also fit a star
naturally (a ring all-reduce moves equal-sized chunks and is paced by its slowest link).
The star's cost is that the coordinator's link carries 2·N model copies per step; on an
edge site's LAN with a ~0.3 MB model that is small, and downlink deltas can be sent int8.
The platform's message service (MQTT via the site broker, JSON events) and file service
(object store, sha256-checked objects) are built for events and large artefacts at
human time scales, not for a per-step, sub-second exchange of weights between devices of
one site; so the job uses direct sockets, framed by :mod:`.wire` (pydantic headers,
no pickle).

Per step:
1. admit workers that said hello and are ready (they get the full weights and a share);
2. plan the shares (every ``rebalance_every`` steps, and on any membership change):
   ``equal`` or ``aware`` (proportional to the EWMA of measured samples/s, see
   :mod:`.balance`);
3. send each worker its task — weights fp32 in full, or an int8 delta from the copy the
   coordinator knows the worker holds — and its slice of the epoch permutation;
4. gather results until all answered or the deadline; drop the silent and the closed;
5. average the gradients (weighted by samples), SGD with momentum, record the loss;
6. every ``checkpoint_every`` steps write the weights, optimizer state, data cursor,
   rates and history atomically; a coordinator started on the same checkpoint resumes
   from there and the workers (which keep reconnecting) carry on.

Samples assigned to a worker lost mid-step are skipped for this epoch; the step is
completed with what arrived.

Example::

    coord = Coordinator(JobConfig(global_batch=64, policy="aware"))
    coord.start()
    procs = [spawn_worker(coord.address, f"w{i}", speed=s) for i, s in enumerate([1, 1, 1/3])]
    report = coord.run(steps=50)
    coord.close()
    print(report.images_per_s(), report.loss_per_step[-1])
"""

from __future__ import annotations

import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from edgecloud.errors import UserError
from edgecloud.ml.training.compression import decode, make_compressor
from edgecloud.ml.training.edge_dp.balance import Policy, ThroughputTracker, plan_shares
from edgecloud.ml.training.edge_dp.job import Event, JobConfig, JobReport, StepRecord
from edgecloud.ml.training.edge_dp.model import FashionResNet
from edgecloud.ml.training.edge_dp.wire import (
    ChannelClosed,
    Hello,
    ProtocolError,
    Ready,
    Result,
    Stop,
    Task,
    Welcome,
    frame_size,
    recv_frame,
    send_frame,
)


@dataclass
class _Worker:
    name: str
    sock: socket.socket
    pid: int
    held: np.ndarray | None = None  # the weights the worker holds, as we know them


class NoWorkers(UserError):
    """No worker reached the coordinator in time."""


def _vector(model: torch.nn.Module) -> np.ndarray:
    return parameters_to_vector(model.parameters()).detach().numpy().copy()


class Coordinator:
    """The job's coordinator: listens on ``address``, runs steps, checkpoints."""

    def __init__(self, config: JobConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.policy: Policy = config.policy
        torch.manual_seed(config.seed)
        self.model = FashionResNet(width=config.width)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr,
                                         momentum=config.momentum)
        self.tracker = ThroughputTracker(config.ewma_alpha)
        self.step = 0
        self.epoch = 0
        self.cursor = 0
        self.report = JobReport()
        self.workers: dict[str, _Worker] = {}
        self._pending: queue.Queue[_Worker] = queue.Queue()
        self._plan: dict[str, int] = {}
        self._plan_step = -1
        self._plan_policy: Policy = self.policy
        self._stopping = threading.Event()
        self._finish = False
        self._t0 = time.monotonic()
        self._downlink = make_compressor(config.downlink)
        self._fp32 = make_compressor("fp32")
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []
        if config.checkpoint is not None and config.checkpoint.exists():
            self._load_checkpoint(config.checkpoint)

    # -- membership ---------------------------------------------------------------
    def start(self) -> Coordinator:
        """Start accepting workers (in a background thread)."""
        t = threading.Thread(target=self._accept_loop, name="dp-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _welcome(self) -> Welcome:
        c = self.config
        return Welcome(width=c.width, seed=c.seed, train_size=c.train_size,
                       compression=c.compression, topk_ratio=c.topk_ratio)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, conn: socket.socket) -> None:
        # A worker loads its data after Welcome: it is admitted only once Ready, so its
        # set-up time is never mistaken for slowness (nor holds a step up).
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(120)
        try:
            hello, _ = recv_frame(conn)
            if not isinstance(hello, Hello):
                raise ProtocolError(f"expected hello, got {hello.type}")
            send_frame(conn, self._welcome())
            ready, _ = recv_frame(conn)
            if not isinstance(ready, Ready):
                raise ProtocolError(f"expected ready, got {ready.type}")
        except (ChannelClosed, ProtocolError):
            conn.close()
            return
        conn.settimeout(self.config.step_timeout_s)
        self._pending.put(_Worker(hello.name, conn, hello.pid))

    def _admit(self, block_until: float | None = None) -> None:
        while True:
            try:
                timeout = None if block_until is None else max(0.0, block_until - time.monotonic())
                w = self._pending.get(block=block_until is not None, timeout=timeout)
            except queue.Empty:
                return
            old = self.workers.pop(w.name, None)
            if old is not None:  # the same worker reconnected: its old channel is dead
                old.sock.close()
            elif len(self.workers) >= self.config.global_batch:
                self._refuse(w)
                continue
            self.workers[w.name] = w
            self._event("join", w.name, f"pid {w.pid}")
            self._plan_step = -1
            block_until = None  # got one; take any others already waiting, then go

    def _refuse(self, w: _Worker) -> None:
        """Every worker needs at least one sample of the global batch: one too many is
        told why and sent away (the job goes on), rather than failing the plan."""
        n = self.config.global_batch
        reason = (f"the global batch of {n} samples already has {n} workers; raise "
                  "global_batch to use more")
        try:
            send_frame(w.sock, Stop(reason=reason))
        except (ChannelClosed, OSError):
            pass
        w.sock.close()
        self._event("refused", w.name, reason)

    def _lose(self, name: str, reason: str) -> None:
        w = self.workers.pop(name, None)
        if w is None:
            return
        w.sock.close()
        self.tracker.forget(name)
        self._plan_step = -1
        self._event("lost", name, reason)

    def _event(self, kind: Any, worker: str = "", detail: str = "") -> None:
        self.report.events.append(Event(step=self.step, time_s=time.monotonic() - self._t0,
                                        kind=kind, worker=worker, detail=detail))

    def note(self, kind: Any, worker: str = "", detail: str = "") -> None:
        """Record an outside event (the demo's kill/spawn) in the job's timeline."""
        self._event(kind, worker, detail)

    # -- the step -----------------------------------------------------------------
    def _shares(self) -> dict[str, int]:
        c = self.config
        if (self._plan_step < 0 or self.step - self._plan_step >= c.rebalance_every
                or set(self._plan) != set(self.workers) or self._plan_policy != self.policy):
            self._plan = plan_shares(self.policy, c.global_batch, list(self.workers),
                                     self.tracker)
            self._plan_step = self.step
            self._plan_policy = self.policy
        return self._plan

    def _weights_for(self, w: _Worker, params: np.ndarray) -> tuple[bool, bytes]:
        if w.held is None or self.config.downlink == "fp32":
            w.held = params.copy()
            return True, self._fp32.encode([params])
        payload = self._downlink.encode([params - w.held])
        w.held = w.held + decode(payload)[0]  # exactly what the worker will compute
        return False, payload

    def _run_step(self) -> StepRecord | None:
        c = self.config
        t_start = time.monotonic()
        shares = dict(self._shares())
        if self.cursor + c.global_batch > c.train_size:
            self.epoch, self.cursor = self.epoch + 1, 0
        params = _vector(self.model)
        sent: dict[str, float] = {}
        start = self.cursor
        for name, count in shares.items():
            w = self.workers[name]
            full, payload = self._weights_for(w, params)
            task = Task(step=self.step, epoch=self.epoch, start=start, count=count, full=full)
            start += count
            sent[name] = time.monotonic()
            try:
                self.report.bytes_down += send_frame(w.sock, task, payload)
            except ChannelClosed as exc:
                sent.pop(name)
                self._lose(name, f"send: {exc}")
        results = self._gather(sent)
        self.cursor += c.global_batch
        if not results:
            return None
        total = sum(r.count for r, _ in results.values())
        grad = np.zeros_like(params)
        loss = 0.0
        for result, g in results.values():
            grad += (result.count / total) * g
            loss += (result.count / total) * result.loss
        offset = 0
        for p in self.model.parameters():
            p.grad = torch.from_numpy(grad[offset:offset + p.numel()].copy()).view_as(p)
            offset += p.numel()
        self.optimizer.step()
        rec = StepRecord(step=self.step, loss=loss, seconds=time.monotonic() - t_start,
                         images=total, policy=self.policy,
                         shares={n: shares[n] for n in results})
        self.step += 1
        return rec

    def _gather(self, sent: dict[str, float]) -> dict[str, tuple[Result, np.ndarray]]:
        deadline = time.monotonic() + self.config.step_timeout_s
        results: dict[str, tuple[Result, np.ndarray]] = {}
        waiting = set(sent)
        with selectors.DefaultSelector() as sel:
            for name in sent:
                sel.register(self.workers[name].sock, selectors.EVENT_READ, name)
            while waiting and (remaining := deadline - time.monotonic()) > 0:
                for key, _ in sel.select(remaining):
                    name = key.data
                    sel.unregister(key.fileobj)
                    waiting.discard(name)
                    try:
                        msg, payload = recv_frame(self.workers[name].sock)
                        if not isinstance(msg, Result) or msg.step != self.step:
                            raise ProtocolError(f"expected the result of step {self.step}")
                        (g,) = decode(payload)
                    except (ChannelClosed, ProtocolError, ValueError) as exc:
                        self._lose(name, str(exc))
                        continue
                    round_s = time.monotonic() - sent[name]
                    self.tracker.observe(name, msg.count, round_s)
                    self.report.outside_s += max(0.0, round_s - msg.busy_s)
                    self.report.bytes_up += frame_size(msg, payload)
                    self.report.compute_s += msg.compute_s
                    self.report.busy_s += msg.busy_s
                    self.report.results += 1
                    self.report.overruns += int(msg.overran)
                    results[name] = (msg, g)
        for name in waiting:
            self._lose(name, f"no result within {self.config.step_timeout_s}s")
        return results

    def run(self, steps: int, on_step: Callable[[Coordinator, StepRecord], None] | None = None,
            wait_s: float = 120.0, progress: Callable[[int], None] | None = None) -> JobReport:
        """Train until the job has done ``steps`` steps (counting resumed ones).

        Waits up to ``wait_s`` for ``min_workers`` before any step. ``on_step`` is called
        after every step (the demo kills and spawns workers from it).
        """
        c = self.config
        self._finish = False
        while self.step < steps and not self._finish:
            self._admit()
            # min_workers gates the start only: later the job goes on with whoever is left.
            need = c.min_workers if not self.report.steps else 1
            if len(self.workers) < need:
                deadline = time.monotonic() + wait_s
                while len(self.workers) < need:
                    if time.monotonic() > deadline:
                        raise NoWorkers(f"only {len(self.workers)} of {need} "
                                        f"workers reached {self.address} in {wait_s:.0f}s")
                    self._admit(block_until=min(deadline, time.monotonic() + 1.0))
            rec = self._run_step()
            if rec is None:
                continue
            self.report.steps.append(rec)
            ckpt = self.config.checkpoint  # re-read: a caller may switch it off mid-run
            if ckpt is not None and self.step % self.config.checkpoint_every == 0:
                self.save_checkpoint(ckpt)
            if progress is not None:
                progress(self.step)
            if on_step is not None:
                on_step(self, rec)
        if self.config.checkpoint is not None:
            self.save_checkpoint(self.config.checkpoint)
        return self.report

    def finish(self) -> None:
        """Make :meth:`run` return after the current step (call it from ``on_step``)."""
        self._finish = True

    # -- checkpoints --------------------------------------------------------------
    def save_checkpoint(self, path: Path) -> None:
        """Write the job's state atomically (a crash mid-write leaves the old one)."""
        momentum = self.optimizer.state_dict()["state"]
        state = {
            "format": 1,
            "config": {k: self.config.model_dump(mode="json")[k]
                       for k in ("width", "seed", "train_size", "global_batch")},
            "params": torch.from_numpy(_vector(self.model)),
            "momentum": [momentum.get(i, {}).get("momentum_buffer")
                         for i in range(len(list(self.model.parameters())))],
            "step": self.step, "epoch": self.epoch, "cursor": self.cursor,
            "rates": dict(self.tracker.rates),
            "loss": self.report.loss_per_step,
            "events": [e.model_dump(mode="json") for e in self.report.events],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def _load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise UserError(f"{path}: not a readable data-parallel checkpoint ({exc}); "
                            "delete it to start over") from None
        mine = {k: self.config.model_dump(mode="json")[k] for k in state["config"]}
        if mine != state["config"]:
            raise UserError(f"{path}: written by a job with {state['config']}, this job has "
                            f"{mine}; use another checkpoint path or the same settings")
        vector_to_parameters(state["params"], self.model.parameters())
        for p, buf in zip(self.model.parameters(), state["momentum"], strict=True):
            if buf is not None:
                self.optimizer.state[p]["momentum_buffer"] = buf.clone()
        self.step, self.epoch, self.cursor = state["step"], state["epoch"], state["cursor"]
        self.tracker.rates.update(state["rates"])
        self.report.events = [Event(**e) for e in state["events"]]
        self.report.earlier_loss = list(state["loss"])
        self._event("resume", detail=f"from {path} at step {self.step}")

    # -- evaluation and shutdown --------------------------------------------------
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Loss and accuracy of the current weights on ``(x, y)``."""
        from edgecloud.ml.training.models import evaluate

        result = evaluate(self.model, x, y)
        self.model.train()
        return result

    def close(self, stop_workers: bool = True) -> None:
        """Stop listening; tell the workers to exit (or, to emulate a coordinator crash,
        just drop their connections so they try to reconnect)."""
        self._stopping.set()
        self._listener.close()
        for w in list(self.workers.values()):
            if stop_workers:
                try:
                    send_frame(w.sock, Stop(reason="job finished"))
                except ChannelClosed:
                    pass
            w.sock.close()
        self.workers.clear()
        while not self._pending.empty():
            self._pending.get_nowait().sock.close()
        for t in self._threads:
            t.join(timeout=2)
