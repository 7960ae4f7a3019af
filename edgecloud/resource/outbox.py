"""The bridge's durable outbox: one SQLite (WAL) table of messages per direction.

Each direction (`up` = edge -> cloud, `down` = cloud -> edge) is a queue of rows
`(seq, topic, payload, retain, msg_id)` with a contiguous, increasing `seq`, plus a
delivery mark: every row with `seq <= mark` was acknowledged by the target broker.
Rows after the mark are what a (re)started bridge must send again. Delivered rows are kept
for a while (`KEEP_DELIVERED` per direction) only so their envelope ids still catch the
redeliveries a source broker makes after a bridge crash.

Writes are batched by the caller (one transaction per batch of messages). WAL with
synchronous=NORMAL: a committed batch survives the bridge being killed (SIGKILL); a power
loss may lose the last batches committed before it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

DIRECTIONS = ("up", "down")
KEEP_DELIVERED = 20_000

Row = tuple[str, bytes, int, str]  # topic, payload, retain, msg_id


class Outbox:
    """A durable per-direction message queue with delivery marks (see module docstring)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection, used by the bridge's pump thread (and at start/stop); the lock
        # only guards against accidental concurrent use.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for d in DIRECTIONS:
            self._db.execute(f"CREATE TABLE IF NOT EXISTS out_{d} (seq INTEGER PRIMARY KEY, "
                             "topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL,"
                             " msg_id TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS marks (dir TEXT PRIMARY KEY, "
                         "delivered INTEGER NOT NULL)")
        self.marks: dict[str, int] = {d: 0 for d in DIRECTIONS}
        for d, seq in self._db.execute("SELECT dir, delivered FROM marks"):
            self.marks[d] = seq
        self.last_seq: dict[str, int] = {}
        for d in DIRECTIONS:
            (top,) = self._db.execute(f"SELECT MAX(seq) FROM out_{d}").fetchone()
            # An empty (pruned) table continues after its mark, never reusing a seq.
            self.last_seq[d] = max(top or 0, self.marks[d])

    def write(self, appends: Mapping[str, Sequence[Row]], marks: Mapping[str, int]
              ) -> dict[str, int]:
        """Append rows and move delivery marks in ONE transaction.

        Returns, per direction appended to, the seq of its first new row (the rest follow
        contiguously).
        """
        first: dict[str, int] = {}
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                for d, rows in appends.items():
                    if not rows:
                        continue
                    start = self.last_seq[d] + 1
                    db.executemany(f"INSERT INTO out_{d} VALUES (?, ?, ?, ?, ?)",
                                   [(start + i, *r) for i, r in enumerate(rows)])
                    first[d] = start
                for d, seq in marks.items():
                    db.execute("INSERT OR REPLACE INTO marks VALUES (?, ?)", (d, seq))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            for d, start in first.items():
                self.last_seq[d] = start + len(appends[d]) - 1
            self.marks.update(marks)
        return first

    def read(self, direction: str, after: int, limit: int) -> list[tuple[int, str, bytes, int]]:
        """Rows `(seq, topic, payload, retain)` of `direction` with seq > after, in order."""
        with self._lock:
            return self._db.execute(
                f"SELECT seq, topic, payload, retain FROM out_{direction} WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (after, limit)).fetchall()

    def depth(self, direction: str) -> int:
        """Rows accepted but not yet acknowledged by the target."""
        return self.last_seq[direction] - self.marks[direction]

    def recent_ids(self) -> Iterable[str]:
        """Envelope ids of every stored row, oldest first (to seed duplicate detection)."""
        with self._lock:
            ids: list[str] = []
            for d in DIRECTIONS:
                ids += [i for (i,) in self._db.execute(
                    f"SELECT msg_id FROM out_{d} WHERE msg_id != '' ORDER BY seq")]
            return ids

    def prune(self, keep: int = KEEP_DELIVERED) -> int:
        """Delete delivered rows except the newest `keep` of each direction."""
        removed = 0
        with self._lock:
            for d in DIRECTIONS:
                cur = self._db.execute(f"DELETE FROM out_{d} WHERE seq <= ? AND seq <= ?",
                                       (self.marks[d], self.last_seq[d] - keep))
                removed += cur.rowcount
        return removed

    def close(self) -> None:
        with self._lock:
            self._db.close()
