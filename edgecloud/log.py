"""Structured logging: one line per event, `key=value` pairs after the message.

    log = get_logger("bridge")
    log.info("forwarded", topic=t, seq=42)
    # 2026-11-22T10:00:00.123Z INFO bridge forwarded topic=sites/cloud/x seq=42
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{ts}.{int(record.msecs):03d}Z {record.levelname} {record.name} "
        line += record.getMessage()
        fields: dict[str, Any] = getattr(record, "fields", {})
        for key, value in fields.items():
            text = str(value)
            if " " in text or "=" in text or not text:
                text = repr(text)
            line += f" {key}={text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class KVLogger(logging.LoggerAdapter[logging.Logger]):
    """Logger taking keyword fields: `log.info("joined", node="ec-1-pc")`."""

    # The methods below override logging's on purpose: their keywords are log fields, not
    # logging's options (exc_info, extra, ...), hence the ignore[override] on each.

    def _log_kv(self, level: int, msg: str, exc_info: Any = None, **fields: Any) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, msg, exc_info=exc_info, extra={"fields": fields})

    def debug(self, msg: str, *args: Any, **fields: Any) -> None:  # type: ignore[override]
        self._log_kv(logging.DEBUG, msg, **fields)

    def info(self, msg: str, *args: Any, **fields: Any) -> None:  # type: ignore[override]
        self._log_kv(logging.INFO, msg, **fields)

    def warning(self, msg: str, *args: Any, **fields: Any) -> None:  # type: ignore[override]
        self._log_kv(logging.WARNING, msg, **fields)

    def error(self, msg: str, *args: Any, **fields: Any) -> None:  # type: ignore[override]
        self._log_kv(logging.ERROR, msg, **fields)

    def exception(self, msg: str, *args: Any, **fields: Any) -> None:  # type: ignore[override]
        self._log_kv(logging.ERROR, msg, exc_info=True, **fields)


def get_logger(name: str) -> KVLogger:
    return KVLogger(logging.getLogger(f"edgecloud.{name}"), {})


def setup_logging(level: int = logging.INFO, stream: Any = None) -> None:
    """Configure the root edgecloud logger once per process (services call this at start)."""
    root = logging.getLogger("edgecloud")
    if getattr(root, "_edgecloud_configured", False):
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    # A marker on the logger itself: it lives exactly as long as the configuration does.
    root._edgecloud_configured = True  # type: ignore[attr-defined]
