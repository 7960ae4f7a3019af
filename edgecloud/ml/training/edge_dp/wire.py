"""The coordinator <-> worker channel: framed messages over one TCP connection.

A frame is ``<II`` (header length, payload length), a JSON header validated by one
pydantic model per message type (``extra="forbid"``, a ``type`` tag), and an opaque binary
payload — weights or a compressed gradient in the format of
:mod:`edgecloud.ml.training.compression`. Never pickle: a worker may be any device.

Conversation::

    worker                         coordinator
    Hello(name)          ───────▶
                         ◀───────  Welcome(job settings)
    Ready                ───────▶  (data loaded: only now is it given a share)
                         ◀───────  Task(step, epoch, start, count) + weights (full or delta)
    Result(step, loss)   ───────▶  + compressed gradient
                         ...
                         ◀───────  Stop

Example::

    send_frame(sock, Hello(name="w1"))
    msg, payload = recv_frame(sock)      # a Welcome, b""
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL = 1
_PREFIX = struct.Struct("<II")
MAX_HEADER = 1 << 16
MAX_PAYLOAD = 1 << 30


class ChannelClosed(ConnectionError):
    """The peer closed the connection (or it broke) — the peer is gone."""


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: int = PROTOCOL


class Hello(_Msg):
    """A worker introduces itself. Its speed factor is deliberately not sent: the
    coordinator balances on what it measures."""

    type: Literal["hello"] = "hello"
    name: str = Field(min_length=1, max_length=64)
    pid: int = 0


class Welcome(_Msg):
    """What every worker must agree on to compute the same gradients."""

    type: Literal["welcome"] = "welcome"
    width: int
    seed: int
    train_size: int
    compression: str
    topk_ratio: float


class Ready(_Msg):
    """The worker has loaded its data and model and can take tasks."""

    type: Literal["ready"] = "ready"


class Task(_Msg):
    """Compute the gradient on ``count`` samples from ``start`` of epoch ``epoch``'s
    permutation, at the weights in the payload (``full``) or the worker's copy plus the
    payload (a delta)."""

    type: Literal["task"] = "task"
    step: int
    epoch: int
    start: int
    count: int
    full: bool


class Result(_Msg):
    """Mean loss and (in the payload) the mean gradient over the task's samples."""

    type: Literal["result"] = "result"
    step: int
    count: int
    loss: float
    compute_s: float  # real forward/backward time
    busy_s: float     # compute plus the emulated slowdown
    overran: bool = False  # real compute alone exceeded the emulated device's time


class Stop(_Msg):
    type: Literal["stop"] = "stop"
    reason: str = ""


AnyMessage = Hello | Welcome | Ready | Task | Result | Stop
_ADAPTER: TypeAdapter[AnyMessage] = TypeAdapter(
    Annotated[AnyMessage, Field(discriminator="type")])


def send_frame(sock: socket.socket, msg: _Msg, payload: bytes = b"") -> int:
    """Send one message; returns the bytes put on the wire."""
    header = msg.model_dump_json().encode()
    data = _PREFIX.pack(len(header), len(payload)) + header
    try:
        sock.sendall(data)
        if payload:
            sock.sendall(payload)
    except (OSError, TimeoutError) as exc:
        raise ChannelClosed(f"send failed: {exc}") from None
    return len(data) + len(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except (OSError, TimeoutError) as exc:
            raise ChannelClosed(f"receive failed: {exc}") from None
        if k == 0:
            raise ChannelClosed("peer closed the connection")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[AnyMessage, bytes]:
    """Receive one message and its payload (blocking, subject to the socket's timeout)."""
    hlen, plen = _PREFIX.unpack(_recv_exact(sock, _PREFIX.size))
    if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
        raise ProtocolError(f"frame too large (header {hlen} B, payload {plen} B)")
    raw = _recv_exact(sock, hlen)
    try:
        msg = _ADAPTER.validate_python(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ProtocolError(f"bad message header: {exc}") from None
    if msg.v != PROTOCOL:
        raise ProtocolError(f"protocol version {msg.v}, expected {PROTOCOL}")
    payload = _recv_exact(sock, plen) if plen else b""
    return msg, payload


def frame_size(msg: _Msg, payload: bytes = b"") -> int:
    """Bytes :func:`send_frame` puts on the wire for this message."""
    return _PREFIX.size + len(msg.model_dump_json().encode()) + len(payload)
