"""A data-parallel worker: an OS process that computes gradients for the coordinator.

Run as ``python -m edgecloud.ml.training.edge_dp.worker --connect HOST:PORT --name w1
[--speed 0.33] [--sample-ms 10]``. It connects, says hello, receives the job settings,
loads Fashion-MNIST itself (every device holds the dataset; the coordinator only names
which samples to use, so no image ever crosses the network), then for every task applies
the weights, computes the mean gradient of its share and returns it compressed (with
error feedback for lossy codecs).

Heterogeneity is emulated, like the infrastructure's node ``speed``: a worker of speed
``s`` behaves like a device that needs ``sample_ms / s`` milliseconds per sample — after
the real forward/backward it sleeps for the rest of that time. ``sample_ms`` is set well
above the real per-sample cost on this machine (≈1.7 ms on one thread, more when 2 cores
are shared by 3+ workers) so a step's duration is made by the emulated device, not by
who got the CPU: otherwise the comparison of split policies would measure the host's
scheduler. Each result reports real compute and busy time so reports show the share.

If the coordinator goes away the worker reconnects (with backoff) for ``--patience``
seconds — a restarted coordinator resumes from its checkpoint with the same workers.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecloud.ml.training.edge_dp.wire import (
    ChannelClosed,
    Hello,
    ProtocolError,
    Ready,
    Result,
    Stop,
    Task,
    Welcome,
    recv_frame,
    send_frame,
)

if TYPE_CHECKING:  # torch loads in the worker's functions, after the process has started
    import torch

    from edgecloud.ml.training.compression import ErrorFeedback


@dataclass
class _State:
    """The worker's copy of the job: model, data, codec, error-feedback residual."""

    welcome: Welcome
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    ef: ErrorFeedback
    perms: dict[int, np.ndarray] = field(default_factory=dict)
    weights: np.ndarray | None = None


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of ``epoch`` — the same on the coordinator and every worker."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def training_subset(seed: int, train_size: int):
    """``(x, y)`` tensors of the first ``train_size`` samples of a seeded shuffle."""
    from edgecloud.ml.training.data import load_split

    train = load_split("train")
    if not 0 < train_size <= len(train):
        raise ValueError(f"train_size must be in 1..{len(train)}, not {train_size}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(train))[:train_size])
    return train.subset(idx).tensors()


def _gradient(p: torch.nn.Parameter) -> torch.Tensor:
    # zero_grad(set_to_none=False) before backward() leaves every gradient a tensor.
    assert p.grad is not None, "a parameter without a gradient after backward()"
    return p.grad


def _setup(welcome: Welcome) -> _State:
    import torch

    from edgecloud.ml.training.compression import ErrorFeedback, make_compressor
    from edgecloud.ml.training.edge_dp.model import FashionResNet

    torch.manual_seed(welcome.seed)
    model = FashionResNet(width=welcome.width)
    x, y = training_subset(welcome.seed, welcome.train_size)
    codec = make_compressor(welcome.compression, welcome.topk_ratio)
    ef = ErrorFeedback(codec, enabled=welcome.compression != "fp32")
    return _State(welcome, model, x, y, ef)


def _compute(st: _State, task: Task, payload: bytes, speed: float,
             sample_ms: float) -> tuple[Result, bytes]:
    import torch
    from torch.nn import functional as F
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    from edgecloud.ml.training.compression import decode

    t0 = time.perf_counter()
    (vec,) = decode(payload)
    if task.full or st.weights is None:
        st.weights = vec.copy()
    else:
        st.weights = st.weights + vec
    model = st.model
    vector_to_parameters(torch.from_numpy(st.weights), model.parameters())
    perm = st.perms.get(task.epoch)
    if perm is None:
        st.perms = {task.epoch: epoch_permutation(st.welcome.seed, task.epoch,
                                                  st.welcome.train_size)}
        perm = st.perms[task.epoch]
    idx = torch.from_numpy(perm[task.start:task.start + task.count])
    model.zero_grad(set_to_none=False)
    loss = F.cross_entropy(model(st.x[idx]), st.y[idx])
    loss.backward()
    grad = parameters_to_vector(_gradient(p) for p in model.parameters()).numpy()
    body = st.ef.compress([grad])
    compute = time.perf_counter() - t0
    # The emulated device: this share takes count * sample_ms / speed in all.
    target = task.count * sample_ms / 1000.0 / speed
    if target > compute:
        time.sleep(target - compute)
    busy = time.perf_counter() - t0
    return Result(step=task.step, count=task.count, loss=float(loss.detach()), compute_s=compute,
                  busy_s=busy, overran=compute > target), body


def _connect(address: tuple[str, int], patience: float) -> socket.socket | None:
    deadline = time.monotonic() + patience
    delay = 0.05
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection(address, timeout=5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
            return sock
        except OSError:
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    return None


def _wait_readable(sock: socket.socket, stop: threading.Event | None) -> bool:
    """Block until ``sock`` has data; False if ``stop`` was set meanwhile."""
    if stop is None:
        return True
    while not stop.is_set():
        if select.select([sock], [], [], 0.5)[0]:
            return True
    return False


def run_worker(address: tuple[str, int], name: str, speed: float = 1.0,
               sample_ms: float = 10.0, patience: float = 30.0,
               stop: threading.Event | None = None) -> int:
    """Serve the coordinator at ``address`` until it says stop (0), ``stop`` is set (0)
    or it stays away for ``patience`` seconds (1)."""
    import torch

    torch.set_num_threads(1)  # 2 shared cores: one thread per worker process
    state: _State | None = None
    while stop is None or not stop.is_set():
        sock = _connect(address, patience)
        if sock is None:
            print(f"worker {name}: no coordinator at {address} for {patience}s", flush=True)
            return 1
        try:
            send_frame(sock, Hello(name=name, pid=os.getpid()))
            while True:
                if not _wait_readable(sock, stop):
                    return 0
                msg, payload = recv_frame(sock)
                if isinstance(msg, Welcome):
                    if state is None or state.welcome != msg:
                        state = _setup(msg)
                    state.weights = None  # a (new) coordinator sends full weights first
                    send_frame(sock, Ready())
                elif isinstance(msg, Task) and state is not None:
                    result, body = _compute(state, msg, payload, speed, sample_ms)
                    send_frame(sock, result, body)
                elif isinstance(msg, Stop):
                    print(f"worker {name}: stopped by the coordinator: {msg.reason}",
                          flush=True)
                    return 0
                else:
                    raise ProtocolError(f"unexpected {msg.type} message")
        except (ChannelClosed, ProtocolError) as exc:
            print(f"worker {name}: {exc}; reconnecting", flush=True)
        finally:
            sock.close()
    return 0


def spawn_worker(address: tuple[str, int], name: str, speed: float = 1.0,
                 sample_ms: float = 10.0, patience: float = 30.0,
                 log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a worker as its own OS process.

    Example: ``p = spawn_worker(coord.address, "w3", speed=1/3)``; ``p.kill()`` to lose it.
    """
    cmd = [sys.executable, "-m", "edgecloud.ml.training.edge_dp.worker",
           "--connect", f"{address[0]}:{address[1]}", "--name", name,
           "--speed", repr(speed), "--sample-ms", repr(sample_ms), "--patience",
           repr(patience)]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - child owns it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgecloud.ml.training.edge_dp.worker",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--connect", required=True, help="coordinator HOST:PORT")
    ap.add_argument("--name", required=True)
    ap.add_argument("--speed", type=float, default=1.0,
                    help="emulated speed factor (1 = reference device)")
    ap.add_argument("--sample-ms", type=float, default=10.0,
                    help="ms per sample of the reference device")
    ap.add_argument("--patience", type=float, default=30.0,
                    help="seconds to keep trying to reach the coordinator")
    args = ap.parse_args(argv)
    host, _, port = args.connect.rpartition(":")
    if not host or not port.isdigit():
        ap.error(f"--connect must be HOST:PORT, not {args.connect!r}")
    if args.speed <= 0:
        ap.error(f"--speed must be > 0, not {args.speed}")
    return run_worker((host, int(port)), args.name, args.speed, args.sample_ms,
                      args.patience)


if __name__ == "__main__":
    sys.exit(main())
