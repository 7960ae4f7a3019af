"""The wire format of every MQTT payload edgecloud publishes: a msgpack envelope.

    {"_ec": 1, "id": "<unique str>", "ts": <unix float>, "src": "<sender>", "body": <any>}

`id` lets receivers (and the bridge) drop duplicates that QoS 1 and crash recovery can
produce: `RecentIds` is the one duplicate filter, `peek_id` reads an id without decoding
the body. `body` is any msgpack value, bytes included. Decoding is tolerant so edgecloud
components interoperate with other MQTT tools: a payload that is not an envelope decodes
to an `Envelope` with `id=""` and `body` = the parsed JSON document, or the raw bytes.
Never pickle: a payload must not be able to run code in its receiver.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any, cast

import msgpack

MAGIC_KEY = "_ec"
VERSION = 1

# Unique ids without a syscall per message: a random per-process prefix + a counter.
# 12 hex chars of randomness make collisions between processes negligible.
_PREFIX = os.urandom(6).hex()
_COUNTER = count(1)


class PayloadError(ValueError):
    """A payload that cannot be decoded (or a body that cannot be encoded)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded payload. `id` is "" for payloads that were not edgecloud envelopes."""

    id: str
    ts: float
    src: str
    body: Any
    raw: bytes


def new_id() -> str:
    """A message id unique across processes (random prefix + per-process counter)."""
    return f"{_PREFIX}-{next(_COUNTER):x}"


def encode(body: Any, *, src: str = "", msg_id: str | None = None) -> bytes:
    """Wrap `body` in an envelope and serialise it with msgpack."""
    env = {MAGIC_KEY: VERSION, "id": msg_id or new_id(), "ts": time.time(), "src": src,
           "body": body}
    try:
        return cast(bytes, msgpack.packb(env, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"cannot encode message body of type {type(body).__name__}: {exc} "
                           "(use dicts, lists, str, bytes, numbers, bool, None)") from None


def encode_json(body: Any) -> bytes:
    """Plain JSON (no envelope), for tools outside edgecloud that expect JSON payloads."""
    try:
        return json.dumps(body, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"cannot encode message body as JSON: {exc}") from None


def decode(data: bytes | bytearray | memoryview) -> Envelope:
    """Decode a payload: an edgecloud envelope, else JSON, else raw bytes.

    Raises PayloadError when the payload claims to be an envelope (msgpack map with
    "_ec") but is broken, or is not bytes at all.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PayloadError(f"payload must be bytes, got {type(data).__name__}")
    raw = bytes(data)
    if raw[:1] and 0x80 <= raw[0] <= 0x8F or raw[:1] in (b"\xde", b"\xdf"):
        # A msgpack map: the only shape an envelope can have.
        env = _unpack_envelope(raw)
        if env is not None:
            return env
    return Envelope(id="", ts=0.0, src="", body=_foreign_body(raw), raw=raw)


_MAGIC_HEAD = msgpack.packb(MAGIC_KEY) + msgpack.packb(VERSION) + msgpack.packb("id")
_PEEK_ERRORS = (ValueError, msgpack.OutOfData, msgpack.FormatError, msgpack.StackError,
                UnicodeDecodeError)


def peek_id(data: bytes) -> str:
    """The envelope id of a payload, "" if it is not an envelope (never raises).

    Reads the map header and the keys up to "id" only; the body is never unpacked, so a
    large or even broken body costs nothing (the bridge's hot path).
    """
    raw = bytes(data) if not isinstance(data, bytes) else data
    if raw[1:1 + len(_MAGIC_HEAD)] == _MAGIC_HEAD and 0x81 <= raw[0] <= 0x8F:
        # The layout `encode` writes: {"_ec": 1, "id": <fixstr>, ...}.
        at = 1 + len(_MAGIC_HEAD)
        head = raw[at:at + 1]
        if head and 0xA0 <= head[0] <= 0xBF:
            end = at + 1 + (head[0] - 0xA0)
            if end <= len(raw):
                try:
                    return raw[at + 1:end].decode()
                except UnicodeDecodeError:
                    return ""
    return _peek_id_slow(raw)


def _peek_id_slow(raw: bytes) -> str:
    """peek_id for any key order: skip values until both "_ec" and "id" were read."""
    if not (raw[:1] and 0x80 <= raw[0] <= 0x8F or raw[:1] in (b"\xde", b"\xdf")):
        return ""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(raw)
    msg_id: Any = None
    magic = False
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == MAGIC_KEY:
                magic = unpacker.unpack() == VERSION
            elif key == "id":
                msg_id = unpacker.unpack()
            else:
                unpacker.skip()
            if magic and msg_id is not None:
                break
    except _PEEK_ERRORS:
        return ""
    return msg_id if magic and isinstance(msg_id, str) else ""


class RecentIds:
    """The one duplicate filter of edgecloud: a bounded LRU of envelope ids.

    Used by `MqttClient` (drop on receipt), the bridge (drop at ingress) and a
    component's inbox (drop before `on_message`, seeded from its journal). Not
    thread-safe: each user calls it from one thread.
    """

    def __init__(self, capacity: int, initial: Iterable[str] = ()) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        for msg_id in initial:
            self.add(msg_id)

    def __contains__(self, msg_id: str) -> bool:
        return msg_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        """The remembered ids, least recently seen first."""
        return iter(list(self._ids))

    def add(self, msg_id: str) -> None:
        """Remember `msg_id` (the oldest id is forgotten beyond `capacity`)."""
        self.check_and_add(msg_id)

    def check_and_add(self, msg_id: str) -> bool:
        """True if `msg_id` was seen recently (a duplicate); else remember it, False."""
        ids = self._ids
        if msg_id in ids:
            ids.move_to_end(msg_id)
            return True
        ids[msg_id] = None
        if len(ids) > self.capacity:
            ids.popitem(last=False)
        return False


def _unpack_envelope(raw: bytes) -> Envelope | None:
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        if raw.find(MAGIC_KEY.encode()) >= 0:
            raise PayloadError(f"malformed edgecloud envelope ({len(raw)} bytes): {exc}") from None
        return None
    except UnicodeDecodeError:
        return None  # some binary blob that happens to start like a msgpack map
    if not isinstance(obj, dict) or MAGIC_KEY not in obj:
        return None
    if obj.get(MAGIC_KEY) != VERSION:
        raise PayloadError(f"unsupported envelope version {obj.get(MAGIC_KEY)!r} "
                           f"(this edgecloud reads version {VERSION})")
    msg_id, ts, src = obj.get("id"), obj.get("ts", 0.0), obj.get("src", "")
    if not isinstance(msg_id, str) or not isinstance(ts, int | float) or not isinstance(src, str):
        raise PayloadError("malformed edgecloud envelope: id and src must be strings and ts a "
                           f"number (got id={msg_id!r}, ts={ts!r}, src={src!r})")
    return Envelope(id=msg_id, ts=float(ts), src=src, body=obj.get("body"), raw=raw)


def _foreign_body(raw: bytes) -> Any:
    """Body of a non-envelope payload: parsed JSON if it is JSON, else the bytes as they are."""
    head = raw.lstrip()[:1]
    if head and head in b'{["-0123456789tfn':
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            pass
    return raw
