"""Differential privacy for federated updates: clipping, Gaussian noise, an RDP accountant.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models"): every client clips its update to L2 norm ``clip``; the server adds
``N(0, (noise_multiplier * clip)^2)`` to the *sum* of the clipped updates and divides by
the number of clients sampled. Each round is then one step of the sampled Gaussian
mechanism with sampling rate ``q = clients per round / clients in total`` and noise
multiplier ``sigma``: :class:`RDPAccountant` composes its Rényi-DP over rounds and
converts to ``(epsilon, delta)``.

The RDP of the sampled Gaussian mechanism at integer order ``a`` is computed exactly
(Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian
Mechanism", eq. for integer alpha)::

    A_a = sum_{k=0..a} C(a, k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 sigma^2))
    RDP(a) = log(A_a) / (a - 1)

and converted with ``eps = min_a  T * RDP(a) + log(1/delta) / (a - 1)`` (Mironov 2017,
Prop. 3). Only integer orders 2..256 are tried, so epsilon is an upper bound slightly
above what fractional orders would give. With ``q = 1`` (every client every round)
this is the plain Gaussian mechanism, ``RDP(a) = a / (2 sigma^2)``.

Example::

    acc = RDPAccountant(noise_multiplier=1.0, sample_rate=0.1)
    acc.step(100)
    acc.epsilon(delta=1e-5)        # the epsilon spent after 100 rounds
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Arrays = list[np.ndarray]
ORDERS = tuple(range(2, 257))


@dataclass(frozen=True)
class DPConfig:
    """Client-level DP: ``clip`` (L2 bound of an update), ``noise_multiplier`` (sigma)."""

    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.clip <= 0:
            raise ValueError("clip must be > 0")
        if self.noise_multiplier < 0:
            raise ValueError("noise_multiplier must be >= 0")
        if not 0 < self.delta < 1:
            raise ValueError("delta must be in (0, 1)")


def global_norm(arrays: Arrays) -> float:
    """L2 norm of all values together. Example: ``global_norm([np.array([3., 4.])])`` → 5."""
    return float(math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64)))
                               for a in arrays)))


def clip_update(arrays: Arrays, clip: float) -> tuple[Arrays, float]:
    """``(arrays scaled to norm <= clip, norm before clipping)``.

    Example: ``clip_update([np.array([3., 4.])], 1.0)`` → ``([array([0.6, 0.8])], 5.0)``.
    """
    norm = global_norm(arrays)
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return [(a * factor).astype(np.float32) for a in arrays], norm


def add_gaussian_noise(arrays: Arrays, std: float, rng: np.random.Generator) -> Arrays:
    """``arrays + N(0, std^2)`` per value (the server's noise on the sum)."""
    return [(a + rng.normal(0.0, std, size=a.shape)).astype(np.float32) for a in arrays]


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def rdp_sampled_gaussian(q: float, sigma: float, order: int) -> float:
    """RDP at integer ``order`` of one step of the sampled Gaussian mechanism."""
    if not 0 <= q <= 1:
        raise ValueError("sample rate must be in [0, 1]")
    if q == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    if q == 1:
        return order / (2 * sigma ** 2)
    log_a = -math.inf  # sum in log space: the terms overflow floats for large orders
    for k in range(order + 1):
        term = (math.lgamma(order + 1) - math.lgamma(k + 1) - math.lgamma(order - k + 1)
                + (order - k) * math.log1p(-q) + k * math.log(q)
                + (k * k - k) / (2 * sigma ** 2))
        log_a = _log_add(log_a, term)
    return log_a / (order - 1)


class RDPAccountant:
    """Privacy spent by repeated sampled Gaussian steps (one per federated round)."""

    def __init__(self, noise_multiplier: float, sample_rate: float) -> None:
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sample_rate
        self.steps = 0
        self._rdp = [rdp_sampled_gaussian(sample_rate, noise_multiplier, a) for a in ORDERS]

    def step(self, n: int = 1) -> None:
        """Account ``n`` more rounds."""
        self.steps += n

    def epsilon(self, delta: float) -> float:
        """Smallest epsilon over the orders for the rounds accounted so far."""
        if self.steps == 0:
            return 0.0
        return min(self.steps * r + math.log(1 / delta) / (a - 1)
                   for a, r in zip(ORDERS, self._rdp, strict=True))
