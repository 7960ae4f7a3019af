"""Parsing of the quantities written in edgecloud files: rates, durations, memory, CPU.

Kept in one place so every file format accepts the same spellings:
rates `20mbit`, `1.5Gbit`, `500kbit`, `2MB/s` (bytes), bare numbers in bit/s;
durations `50ms`, `1.5s`, `2m`, bare numbers in seconds;
memory `4Gi`, `512Mi`, `1G`, bare numbers in bytes (Kubernetes spelling);
CPU `4`, `0.5`, `500m` (millicores).
"""

from __future__ import annotations

import re

_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

_RATE_UNITS = {
    "": 1.0, "bit": 1.0, "bps": 1.0, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6,
    "gbit": 1e9, "gbps": 1e9, "b/s": 8.0, "kb/s": 8e3, "mb/s": 8e6, "gb/s": 8e9,
}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "m": 60.0, "min": 60.0, "h": 3600.0}
_MEMORY_UNITS = {
    "": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
}


def _split(value: str | int | float, what: str, example: str) -> tuple[float, str]:
    if isinstance(value, bool):
        raise ValueError(f"expected a {what} such as {example!r}, got {value!r}")
    if isinstance(value, int | float):
        return float(value), ""
    m = re.fullmatch(_NUM + r"\s*([A-Za-z/]*)", str(value).strip())
    if not m:
        raise ValueError(f"expected a {what} such as {example!r}, got {value!r}")
    return float(m.group(1)), m.group(2).lower()


def parse_rate(value: str | int | float) -> float:
    """Return a link rate in bits per second (`20mbit` -> 20e6)."""
    number, unit = _split(value, "rate", "20mbit")
    if unit not in _RATE_UNITS:
        raise ValueError(f"unknown rate unit {unit!r} in {value!r}; use bit, kbit, mbit, gbit")
    rate = number * _RATE_UNITS[unit]
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {value!r}")
    return rate


def parse_duration(value: str | int | float) -> float:
    """Return a duration in seconds (`50ms` -> 0.05)."""
    number, unit = _split(value, "duration", "50ms")
    if unit not in _DURATION_UNITS:
        raise ValueError(f"unknown duration unit {unit!r} in {value!r}; use ms, s, m, h")
    return number * _DURATION_UNITS[unit]


def parse_memory(value: str | int | float) -> int:
    """Return a memory size in bytes (`4Gi` -> 4294967296)."""
    number, unit = _split(value, "memory size", "4Gi")
    unit = unit.removesuffix("b") if unit not in ("", "b") else ""
    if unit not in _MEMORY_UNITS:
        raise ValueError(f"unknown memory unit in {value!r}; use Ki, Mi, Gi, Ti (or K, M, G)")
    return int(number * _MEMORY_UNITS[unit])


def parse_cpu(value: str | int | float) -> float:
    """Return CPU cores (`500m` -> 0.5)."""
    number, unit = _split(value, "CPU amount", "0.5")
    if unit not in ("", "m"):
        raise ValueError(f"unknown CPU unit in {value!r}; use cores (2, 0.5) or millicores (500m)")
    return number / 1000 if unit == "m" else number


def format_rate(bps: float | None) -> str:
    """Human spelling of a rate in bit/s (`2e7` -> `20mbit`)."""
    if bps is None:
        return "unlimited"
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g}{unit}"
    return f"{bps:g}bit"


def format_bytes(n: float) -> str:
    """Human spelling of a byte count (`1536` -> `1.5 KiB`)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
