"""The durable outbox: every result and sample is committed here before it is published, and leaves only when the
broker acknowledges it (QoS 1 PUBACK; QoS 0 stats leave once written to the socket).

SQLite in WAL mode with ``synchronous=FULL``: a committed row survives SIGKILL and power loss. Bounded in bytes;
when full, rows are evicted lowest priority first (stats, then samples, results last), oldest first, and counted.
Rows the broker refuses ``max_attempts`` times move to ``dead_letter``. One connection guarded by a lock, so the
pipeline and publisher threads can share it; paho's callbacks never touch it (they run under paho's lock).
"""
import logging
import os
import sqlite3
import threading
import time
from typing import Dict, List, NamedTuple, Optional

log = logging.getLogger(__name__)

PRIORITY = {"stats": 0, "sample": 1, "result": 2, "state": 2}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, priority INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, captured REAL);
CREATE INDEX IF NOT EXISTS outbox_evict ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY, kind TEXT, topic TEXT, payload BLOB, attempts INTEGER, reason TEXT,
    created REAL, died REAL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Row(NamedTuple):
    id: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    attempts: int
    captured: Optional[float]


class Outbox(object):
    def __init__(self, path: str, max_bytes: int = 64 << 20, max_attempts: int = 5) -> None:
        self.path = path
        self.max_bytes = int(max_bytes)
        self.max_attempts = int(max_attempts)
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])

    # -- writing ---------------------------------------------------------------------------------------------
    def put(self, kind: str, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
            captured: Optional[float] = None) -> Optional[int]:
        """Commit one message; returns its id, or None when it was dropped because the outbox is full of messages
        of equal or higher priority (counted as ``dropped_<kind>``)."""
        prio = PRIORITY[kind]
        size = len(payload) + len(topic)
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                if self._bytes + size > self.max_bytes and not self._evict(cur, size, prio):
                    self._count(cur, "dropped_" + kind)
                    cur.execute("COMMIT")
                    log.warning("outbox full (%d bytes): dropped a new %s", self._bytes, kind)
                    return None
                cur.execute("INSERT INTO outbox (kind, priority, topic, payload, qos, retain, size, created, "
                            "captured) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (kind, prio, topic, sqlite3.Binary(payload), qos, int(retain), size, time.time(),
                             captured))
                row_id = cur.lastrowid
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            self._bytes += size
            return row_id

    def _evict(self, cur: sqlite3.Cursor, needed: int, prio: int) -> bool:
        """Delete lowest-priority, oldest rows (priority <= prio) until ``needed`` bytes fit. Inside a transaction."""
        victims = cur.execute("SELECT id, kind, size FROM outbox WHERE priority <= ? ORDER BY priority, id",
                              (prio,)).fetchall()
        free = self.max_bytes - self._bytes
        chosen = []
        for row_id, kind, size in victims:
            if free >= needed:
                break
            chosen.append((row_id, kind, size))
            free += size
        if free < needed:
            return False
        for row_id, kind, size in chosen:
            cur.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            self._count(cur, "evicted_" + kind)
            self._bytes -= size
        if chosen:
            log.warning("outbox full: evicted %d message(s) (%s)", len(chosen),
                        ", ".join(sorted({k for _, k, _ in chosen})))
        return True

    def _count(self, cur: sqlite3.Cursor, name: str, n: int = 1) -> None:
        cur.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                    "value = value + excluded.value", (name, n))

    # -- reading and acknowledging ---------------------------------------------------------------------------
    def pending(self, limit: int, exclude: Optional[set] = None) -> List[Row]:
        """Oldest first, highest priority first within what is waiting; ``exclude``: ids already in flight."""
        exclude = exclude or set()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, topic, payload, qos, retain, attempts, captured FROM outbox "
                "ORDER BY priority DESC, id LIMIT ?", (limit + len(exclude),)).fetchall()
        out = [Row(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6], r[7]) for r in rows if r[0] not in exclude]
        return out[:limit]

    def ack(self, row_id: int) -> bool:
        """The broker acknowledged: delete. False when the row was already gone (a duplicate ack)."""
        return bool(self.ack_many([row_id]))

    def ack_many(self, row_ids: List[int]) -> List[int]:
        """Delete acknowledged rows in one transaction; returns the ids that were still there.

        Deletes commit with ``synchronous=NORMAL``: a delete lost to a power cut only means the message is sent
        once more (delivery is at-least-once), while every insert keeps ``synchronous=FULL``."""
        done: List[int] = []
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for row_id in row_ids:
                    row = cur.execute("SELECT size, kind FROM outbox WHERE id = ?", (row_id,)).fetchone()
                    if row is None:
                        continue
                    cur.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                    self._count(cur, "sent_" + row[1])
                    self._bytes -= row[0]
                    done.append(row_id)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
        return done

    def refused(self, row_id: int, reason: str) -> bool:
        """The broker refused the message (e.g. not authorized). After ``max_attempts`` it moves to dead_letter.
        Returns True when it was dead-lettered."""
        with self._lock:
            row = self._db.execute("SELECT kind, topic, payload, attempts, created, size FROM outbox WHERE id = ?",
                                   (row_id,)).fetchone()
            if row is None:
                return False
            attempts = row[3] + 1
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            if attempts >= self.max_attempts:
                cur.execute("INSERT INTO dead_letter (id, kind, topic, payload, attempts, reason, created, died) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (row_id, row[0], row[1], row[2], attempts, reason,
                                                                row[4], time.time()))
                cur.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                self._count(cur, "dead_" + row[0])
                cur.execute("COMMIT")
                self._bytes -= row[5]
                log.error("dead-lettered message %d on %s after %d refusals: %s", row_id, row[1], attempts, reason)
                return True
            cur.execute("UPDATE outbox SET attempts = ? WHERE id = ?", (attempts, row_id))
            cur.execute("COMMIT")
            return False

    # -- introspection ---------------------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return self._bytes

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def counters(self) -> Dict[str, int]:
        with self._lock:
            return {k: int(v) for k, v in self._db.execute("SELECT name, value FROM counters")}

    def dead_letters(self) -> List[Dict[str, object]]:
        with self._lock:
            return [{"id": r[0], "kind": r[1], "topic": r[2], "attempts": r[3], "reason": r[4]}
                    for r in self._db.execute("SELECT id, kind, topic, attempts, reason FROM dead_letter")]

    def close(self) -> None:
        with self._lock:
            self._db.close()
