"""Secure aggregation: the server learns the sum of the clients' vectors and nothing else.

A simplified Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving
Machine Learning"), semi-honest server, four steps:

1. **advertise** — every client makes two X25519 key pairs: ``c`` (to encrypt shares to
   each other) and ``s`` (to agree pairwise masks), and sends both public keys.
2. **share** — every client draws a self-mask seed ``b``, splits ``b`` and its ``s``
   private key into Shamir ``t``-of-``n`` shares (field ``GF(2^521 - 1)``), and sends
   each peer its two shares encrypted with AES-GCM under a key derived (HKDF) from their
   ``c`` agreement; the server only forwards ciphertexts.
3. **masked input** — client ``u`` sends
   ``y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)  (mod 2^32)``
   where ``s_uv`` is the X25519 agreement of ``u`` and ``v`` (both derive the same one)
   and PRG is AES-256-CTR keyed by HKDF of the seed: the pairwise masks cancel in the sum.
4. **unmask** — the server names who sent a masked input (survivors) and who did not
   (dropped). Each client still online returns, for every survivor, its share of ``b``,
   and for every dropped client, its share of the ``s`` private key — never both for the
   same client. With ``t`` shares the server removes the survivors' self-masks and
   recomputes the dropped clients' pairwise masks, leaving exactly ``sum x_u``.

So a client that drops *after* masking is survivable (its ``b`` is rebuilt from others'
shares), and so is one that drops before (its pairwise masks are rebuilt). Any single
``y_u`` is uniformly distributed given ``x_u``. Not covered (as "simplified" says):
signatures against an active server, and the consistency round.

Vectors are uint32 modulo 2^32; :func:`encode_fixed` / :func:`decode_fixed` map floats to
fixed point. Example (in-process; on a network each method call is a message)::

    clients = [SecAggClient(i, threshold=2) for i in range(3)]
    keys = {c.id: c.advertise() for c in clients}
    boxes = {c.id: c.share(keys) for c in clients}           # {to: ciphertext}
    for c in clients:
        c.receive_shares({u: boxes[u][c.id] for u in boxes if c.id in boxes[u]})
    masked = {c.id: c.masked_input(vec[c.id]) for c in clients}
    reveal = {c.id: c.unmask(survivors=set(masked), dropped=set()) for c in clients}
    total = unmask_sum(masked, reveal, keys, threshold=2, length=len(vec[0]))
"""

from __future__ import annotations

import os
import secrets
import struct
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PRIME = 2 ** 521 - 1  # a Mersenne prime above every 256-bit secret we share
_RAW = serialization.Encoding.Raw


class SecAggError(RuntimeError):
    """The protocol cannot complete (too few shares, tampered ciphertext...)."""


@dataclass(frozen=True)
class PublicKeys:
    """What a client advertises: its encryption (``c``) and masking (``s``) public keys."""

    c_pk: bytes
    s_pk: bytes


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def prg(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random uint32 from AES-256-CTR keyed by HKDF(seed).

    Example: ``prg(b"k" * 32, 4)`` is the same four numbers on every machine.
    """
    key = _hkdf(seed, b"edgecloud secagg prg")
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
    return np.frombuffer(enc.update(b"\0" * (4 * length)), dtype="<u4").astype(np.uint32)


def _agree(private: X25519PrivateKey, public: bytes) -> bytes:
    return private.exchange(X25519PublicKey.from_public_bytes(public))


# -- Shamir secret sharing over GF(PRIME) ---------------------------------------------------
def shamir_split(secret: int, n: int, t: int) -> list[tuple[int, int]]:
    """``n`` shares ``(x, y)`` of ``secret``; any ``t`` rebuild it, fewer reveal nothing.

    Example: ``shamir_combine(shamir_split(42, 5, 3)[1:4])`` → 42.
    """
    if not 1 <= t <= n:
        raise ValueError(f"threshold must be in 1..{n}, not {t}")
    if not 0 <= secret < PRIME:
        raise ValueError("secret out of the field")
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append((x, y))
    return shares


def shamir_combine(shares: list[tuple[int, int]]) -> int:
    """The secret from shares by Lagrange interpolation at 0."""
    secret = 0
    for j, (xj, yj) in enumerate(shares):
        num, den = 1, 1
        for m, (xm, _) in enumerate(shares):
            if m != j:
                num = num * (-xm) % PRIME
                den = den * (xj - xm) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    return secret


# -- fixed point ------------------------------------------------------------------------------
def encode_fixed(x: np.ndarray, scale: float) -> np.ndarray:
    """Floats to uint32 fixed point (two's complement mod 2^32): ``round(x * scale)``.

    The sum of all clients' ``|x| * scale`` must stay below 2^31 (choose ``scale``).
    """
    return np.rint(np.asarray(x, np.float64) * scale).astype(np.int64).astype(np.uint32)


def decode_fixed(v: np.ndarray, scale: float) -> np.ndarray:
    """Inverse of :func:`encode_fixed` (for a sum too)."""
    return (np.asarray(v, np.uint32).view(np.int32).astype(np.float64) / scale)


# -- the protocol -----------------------------------------------------------------------------
class SecAggClient:
    """One participant. ``id`` is a small positive integer, unique in the round."""

    def __init__(self, client_id: int, threshold: int) -> None:
        if client_id < 1:
            raise ValueError("client ids start at 1 (0 is the Shamir secret's point)")
        self.id = client_id
        self.threshold = threshold
        self._c = X25519PrivateKey.generate()
        self._s = X25519PrivateKey.generate()
        self._b = os.urandom(32)
        self.keys: dict[int, PublicKeys] = {}
        self._held: dict[int, tuple[int, int]] = {}  # owner -> (share of b, share of s_sk)

    def advertise(self) -> PublicKeys:
        return PublicKeys(self._c.public_key().public_bytes_raw(),
                          self._s.public_key().public_bytes_raw())

    def _box_key(self, other: int) -> bytes:
        return _hkdf(_agree(self._c, self.keys[other].c_pk), b"edgecloud secagg box")

    def share(self, keys: dict[int, PublicKeys]) -> dict[int, bytes]:
        """Encrypted shares of ``b`` and of the ``s`` private key, one box per peer."""
        if len(keys) < self.threshold:
            raise SecAggError(f"{len(keys)} clients advertised keys; threshold is "
                              f"{self.threshold}")
        self.keys = dict(keys)
        ids = sorted(keys)
        s_sk = int.from_bytes(self._s.private_bytes_raw(), "big")
        b_sh = dict(zip(ids, (y for _, y in shamir_split(int.from_bytes(self._b, "big"),
                                                          len(ids), self.threshold)),
                        strict=True))
        s_sh = dict(zip(ids, (y for _, y in shamir_split(s_sk, len(ids), self.threshold)),
                        strict=True))
        # Share x-coordinates are positions 1..n in the sorted id list.
        self._xs = {cid: i + 1 for i, cid in enumerate(ids)}
        boxes = {}
        for v in ids:
            plain = struct.pack(">II", self.id, v) + b_sh[v].to_bytes(66, "big") + \
                s_sh[v].to_bytes(66, "big")
            if v == self.id:
                self._held[self.id] = (b_sh[v], s_sh[v])
                continue
            nonce = os.urandom(12)
            boxes[v] = nonce + AESGCM(self._box_key(v)).encrypt(nonce, plain, None)
        return boxes

    def receive_shares(self, boxes: dict[int, bytes]) -> None:
        """Decrypt the shares other clients sent this client (forwarded by the server)."""
        for u, box in boxes.items():
            try:
                plain = AESGCM(self._box_key(u)).decrypt(box[:12], box[12:], None)
            except Exception as exc:  # InvalidTag: tampered or misrouted
                raise SecAggError(f"share box from client {u} does not decrypt: {exc!r}") \
                    from None
            src, dst = struct.unpack(">II", plain[:8])
            if (src, dst) != (u, self.id):
                raise SecAggError(f"share box from {u} is addressed {src}->{dst}")
            self._held[u] = (int.from_bytes(plain[8:74], "big"),
                             int.from_bytes(plain[74:140], "big"))

    def masked_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` (uint32) plus the self-mask and the pairwise masks, mod 2^32."""
        x = np.asarray(x, np.uint32)
        y = x + prg(self._b, x.size)
        for v, pk in self.keys.items():
            if v == self.id:
                continue
            mask = prg(_agree(self._s, pk.s_pk), x.size)
            y = y + mask if self.id < v else y - mask
        return y

    def unmask(self, survivors: set[int], dropped: set[int]) -> dict[int, tuple[str, int, int]]:
        """Shares the server needs: ``{owner: ("b"|"s", x, y)}``; never both for one owner."""
        if survivors & dropped:
            raise SecAggError("a client cannot both survive and drop")
        out = {}
        for owner, (b_share, s_share) in self._held.items():
            if owner in survivors:
                out[owner] = ("b", self._xs[self.id], b_share)
            elif owner in dropped:
                out[owner] = ("s", self._xs[self.id], s_share)
        return out


def unmask_sum(masked: dict[int, np.ndarray], reveals: dict[int, dict[int, tuple[str, int, int]]],
               keys: dict[int, PublicKeys], threshold: int, length: int) -> np.ndarray:
    """The server's last step: ``sum x_u`` over the clients in ``masked`` (uint32).

    ``reveals`` are the :meth:`SecAggClient.unmask` answers of the clients still online;
    ``keys`` everyone who advertised. Clients in ``keys`` but not in ``masked`` dropped.
    """
    total = np.zeros(length, np.uint32)
    for y in masked.values():
        total = total + np.asarray(y, np.uint32)
    dropped = set(keys) - set(masked)

    def shares_of(owner: int, kind: str) -> list[tuple[int, int]]:
        got = [(x, y) for r in reveals.values() for o, (k, x, y) in r.items()
               if o == owner and k == kind]
        if len(got) < threshold:
            raise SecAggError(f"only {len(got)} shares of client {owner}'s {kind!r} secret; "
                              f"{threshold} needed (too many clients dropped)")
        return got[:threshold]

    for u in masked:  # remove the survivors' self-masks
        b = shamir_combine(shares_of(u, "b")).to_bytes(32, "big")
        total = total - prg(b, length)
    for v in dropped:  # remove the pairwise masks the survivors added with dropped clients
        s_v = X25519PrivateKey.from_private_bytes(
            shamir_combine(shares_of(v, "s")).to_bytes(32, "big"))
        for u in masked:
            mask = prg(_agree(s_v, keys[u].s_pk), length)
            # u added +mask if u < v, else -mask: undo it
            total = total - mask if u < v else total + mask
    return total
