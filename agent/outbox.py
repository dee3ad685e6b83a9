"""The durable outbox: every result and sample is committed here before it is published, and leaves only when the
broker acknowledges it (QoS 1 PUBACK; QoS 0 stats leave once written to the socket).

SQLite in WAL mode with ``synchronous=FULL``: a committed row survives SIGKILL and power loss. ``put`` commits at
once; ``stage`` holds a message for the next commit (``flush`` or any ``put``), so that at the maximum frame rate
several results share one transaction and one fsync (``commit_due`` bounds how many and for how long). ``max_bytes``
bounds the files on disk, the database, its write-ahead log and its shared-memory index together (at least 256 KiB):
the log is checkpointed and truncated once it passes ``wal_slack`` (a sixteenth of the bound, 64 KiB to 1 MiB), and
a row is committed only when the database with the row's pages, the log with one more transaction in it and the
index stay within the bound, measured on SQLite's own page counts. When full, rows are evicted lowest priority first
(stats, then samples, results last), oldest first, and counted. Rows the broker or the MQTT client refuses for good
move to ``dead_letter`` (payload cut to 4 KiB; the oldest dropped beyond a sixteenth of the bound). One connection
guarded by a lock, so the pipeline and publisher threads can share it; paho's callbacks never touch it (they run
under paho's lock).
"""
import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional

from ..errors import ConfigError

log = logging.getLogger(__name__)

PRIORITY = {"stats": 0, "sample": 1, "result": 2, "state": 2}
MIN_BYTES = 256 * 1024
DEAD_PAYLOAD = 4096
SHM_BYTES = 32 * 1024  # the -shm index of a WAL database
ROW_OVERHEAD = 100  # the other columns, the cell header and the index entry, bytes
GROUP_ROWS = 16  # group commit: at most this many staged messages wait for one commit ...
GROUP_DELAY = 0.05  # s: ... and none waits longer (commit_due)

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


class Message(NamedTuple):
    """A message to commit."""
    kind: str
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    captured: Optional[float] = None


def commit_due(staged: int, waited: float, next_frame: float, more_waiting: bool) -> bool:
    """Group commit's rule, after a frame: commit what is staged now, unless the next frame is already waiting and
    the group stays within ``GROUP_ROWS`` and, after that frame (``next_frame`` s, the last one's time), within
    ``GROUP_DELAY`` s of its oldest message (``waited``). Below the maximum frame rate nothing is waiting, so every
    result commits at once and latency is unchanged; at the maximum rate results wait at most ``GROUP_DELAY``."""
    if staged == 0:
        return False
    return not (more_waiting and staged < GROUP_ROWS and waited + next_frame < GROUP_DELAY)


class Row(NamedTuple):
    id: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    attempts: int
    captured: Optional[float]
    created: Optional[float] = None  # when it was committed


def disk_cost(size: int, page: int = 4096) -> int:
    """Bytes a row with ``size`` bytes of topic and payload takes in the database file: in its leaf page when it is
    small, else the leaf part plus whole overflow pages (SQLite's own split, file format section 1.6)."""
    p = size + ROW_OVERHEAD
    most, least = page - 35, (page - 12) * 32 // 255 - 23
    if p <= most:
        return p
    local = least + (p - least) % (page - 4)
    if local > most:
        local = least
    return int(math.ceil((p - local) / float(page - 4))) * page + local


def check_path(path: str) -> None:
    """ConfigError naming ``outbox.path`` when ``path`` is a directory or a file that is not an SQLite database."""
    if os.path.isdir(path):
        raise ConfigError("is a directory; give the outbox database file (e.g. /var/lib/edgesight/outbox.db)",
                          file=path, field="outbox.path")
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            raise ConfigError("is not an edgesight outbox (not an SQLite database); move it away or give another "
                              "path", file=path, field="outbox.path")


def open_database(path: str) -> sqlite3.Connection:
    """The outbox database at ``path``; a ConfigError naming ``outbox.path`` when it cannot be one."""
    check_path(path)
    try:
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
    except (sqlite3.DatabaseError, OSError) as exc:
        raise ConfigError("cannot open the outbox database (%s); check the path and its permissions" % exc,
                          file=path, field="outbox.path")
    return db


class Outbox(object):
    def __init__(self, path: str, max_bytes: int = 64 << 20, max_attempts: int = 5) -> None:
        self.path = path
        self.max_bytes = max(int(max_bytes), MIN_BYTES)
        self.max_attempts = int(max_attempts)
        self._lock = threading.Lock()
        self._db = open_database(path)
        self.page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self.wal_slack = min(max(self.max_bytes // 16, 16 * self.page), 1 << 20)
        self._db.execute("PRAGMA journal_size_limit=%d" % self.wal_slack)  # the log is truncated to this
        self._db.execute("PRAGMA wal_autocheckpoint=%d" % max(1, self.wal_slack // self.page))
        self.dead_limit = max(self.max_bytes // 16, 2 * DEAD_PAYLOAD)
        self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])
        self.on_put: Optional[Callable[[], None]] = None  # called after each commit of rows (wakes the publisher)
        self.committed: Dict[str, int] = {}  # rows committed since start, by kind
        self._staged: List[Message] = []  # waiting for the next commit (stage / flush)
        self._staged_since = 0.0

    # -- writing ---------------------------------------------------------------------------------------------
    def put(self, kind: str, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
            captured: Optional[float] = None) -> Optional[int]:
        """Commit one message, with whatever was staged before it; returns its id, or None when it was dropped
        because the outbox is full of messages of equal or higher priority (counted as ``dropped_<kind>``)."""
        return self._commit([Message(kind, topic, payload, qos, retain, captured)])[-1]

    def stage(self, kind: str, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
              captured: Optional[float] = None) -> None:
        """Hold a message for the next commit: :meth:`flush`, or any :meth:`put`, commits everything staged, in
        order, in one transaction (group commit: one fsync for several results when frames arrive faster than a
        commit is worth). A staged message is not accepted yet; the caller flushes within a bounded time
        (:func:`commit_due`), and :meth:`close` flushes what is left."""
        PRIORITY[kind]  # an unknown kind fails here, not at the commit
        with self._lock:
            if not self._staged:
                self._staged_since = time.monotonic()
            self._staged.append(Message(kind, topic, payload, qos, retain, captured))

    @property
    def staged(self) -> int:
        """Messages staged and not committed yet."""
        return len(self._staged)

    def staged_age(self) -> float:
        """Seconds the oldest staged message has waited (0 when none is)."""
        return time.monotonic() - self._staged_since if self._staged else 0.0

    def flush(self) -> List[Optional[int]]:
        """Commit every staged message in one transaction; their ids (None: dropped, the outbox was full)."""
        return self._commit([]) if self._staged else []

    def _commit(self, messages: List["Message"]) -> List[Optional[int]]:
        ids: List[Optional[int]] = []
        added = 0
        taken: List[Message] = []
        try:
            with self._transaction() as cur:
                taken, self._staged = self._staged, []  # under the lock
                messages = taken + messages
                for m in messages:
                    ids.append(self._insert(cur, m))
                    added += (len(m.payload) + len(m.topic)) if ids[-1] is not None else 0
        except BaseException:
            with self._lock:  # nothing was committed: the staged messages wait for the next try
                self._staged = taken + self._staged
            raise
        for m, row_id in zip(messages, ids):
            if row_id is None:
                log.warning("outbox full (%d bytes of messages): dropped a new %s", self._bytes, m.kind)
            else:
                self.committed[m.kind] = self.committed.get(m.kind, 0) + 1
        self._bytes += added
        if added and self.on_put is not None:
            self.on_put()
        return ids

    def _insert(self, cur: sqlite3.Cursor, m: "Message") -> Optional[int]:
        """One message into the transaction of ``cur``: its row id, or None when it does not fit (counted)."""
        prio = PRIORITY[m.kind]
        size = len(m.payload) + len(m.topic)
        cost = disk_cost(size, self.page)
        if not (self._fits(cur, cost) or self._evict(cur, cost, prio)):
            self._count(cur, "dropped_" + m.kind)
            return None
        cur.execute("INSERT INTO outbox (kind, priority, topic, payload, qos, retain, size, created, captured) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (m.kind, prio, m.topic, sqlite3.Binary(m.payload), m.qos,
                                                          int(m.retain), size, time.time(), m.captured))
        return cur.lastrowid

    @contextlib.contextmanager
    def _transaction(self, synchronous: str = "FULL") -> Iterator[sqlite3.Cursor]:
        """BEGIN IMMEDIATE .. COMMIT under the lock (ROLLBACK on any error), then the log is kept small."""
        with self._lock:
            if synchronous != "FULL":
                self._db.execute("PRAGMA synchronous=%s" % synchronous)
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()  # an open statement would hold a read lock and stop the checkpoint
                if synchronous != "FULL":
                    self._db.execute("PRAGMA synchronous=FULL")
            self._keep_log_small()

    def _evict(self, cur: sqlite3.Cursor, cost: int, prio: int) -> bool:
        """Delete lowest-priority, oldest rows (priority <= prio) until a row of ``cost`` fits; nothing is deleted
        when even all of them would not make room. Inside a transaction."""
        victims = cur.execute("SELECT id, kind, size FROM outbox WHERE priority <= ? ORDER BY priority, id",
                              (prio,)).fetchall()
        cur.execute("SAVEPOINT evict")
        chosen = []
        for row_id, kind, size in victims:
            cur.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            chosen.append((row_id, kind, size))
            if self._fits(cur, cost):
                break
        if not chosen or not self._fits(cur, cost):
            cur.execute("ROLLBACK TO evict")  # even all of them would not make room: keep them
            cur.execute("RELEASE evict")
            return False
        cur.execute("RELEASE evict")
        for _, kind, size in chosen:
            self._count(cur, "evicted_" + kind)
            self._bytes -= size
        log.warning("outbox full: evicted %d message(s) (%s)", len(chosen),
                    ", ".join(sorted({k for _, k, _ in chosen})))
        return True

    def _fits(self, cur: sqlite3.Cursor, cost: int) -> bool:
        """A row of ``cost`` bytes fits: the database once the row has taken the free pages it needs and grown by
        the rest, the write-ahead log with the row's pages in it, and the shared-memory index stay within
        ``max_bytes``. Measured on the transaction's own view of the file, not estimated."""
        pages = int(cur.execute("PRAGMA page_count").fetchall()[0][0])  # fetchall: no statement left open
        free = int(cur.execute("PRAGMA freelist_count").fetchall()[0][0])
        need = int(math.ceil(cost / float(self.page))) + 2  # its pages and the b-tree pages it touches
        database = (pages + max(0, need - free)) * self.page
        # the log is truncated once past wal_slack, so it never holds more than that and one transaction
        log_peak = self.wal_slack + (need + 4) * (self.page + 24)
        return database + log_peak + SHM_BYTES <= self.max_bytes

    def _log_bytes(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def _keep_log_small(self) -> None:
        """Checkpoint and truncate the write-ahead log once it is past ``wal_slack`` (lock held)."""
        if self._log_bytes() > self.wal_slack:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _count(self, cur: sqlite3.Cursor, name: str, n: int = 1) -> None:
        cur.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                    "value = value + excluded.value", (name, n))

    # -- reading and acknowledging ---------------------------------------------------------------------------
    def pending(self, limit: int, exclude: Optional[set] = None) -> List[Row]:
        """Oldest first, highest priority first within what is waiting; ``exclude``: ids already in flight."""
        exclude = exclude or set()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, topic, payload, qos, retain, attempts, captured, created FROM outbox "
                "ORDER BY priority DESC, id LIMIT ?", (limit + len(exclude),)).fetchall()
        out = [Row(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6], r[7], r[8]) for r in rows
               if r[0] not in exclude]
        return out[:limit]

    def ack(self, row_id: int) -> bool:
        """The broker acknowledged: delete. False when the row was already gone (a duplicate ack)."""
        return bool(self.ack_many([row_id]))

    def ack_many(self, row_ids: List[int]) -> List[int]:
        """Delete acknowledged rows in one transaction; returns the ids that were still there.

        Deletes commit with ``synchronous=NORMAL``: a delete lost to a power cut only means the message is sent
        once more (delivery is at-least-once), while every insert keeps ``synchronous=FULL``."""
        done: List[int] = []
        freed = 0
        with self._transaction(synchronous="NORMAL") as cur:
            for row_id in row_ids:
                row = cur.execute("SELECT size, kind FROM outbox WHERE id = ?", (row_id,)).fetchone()
                if row is None:
                    continue
                cur.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                self._count(cur, "sent_" + row[1])
                freed += row[0]
                done.append(row_id)
        self._bytes -= freed
        return done

    def refused(self, row_id: int, reason: str) -> bool:
        """The broker refused the message (e.g. not authorized). After ``max_attempts`` it moves to dead_letter.
        Returns True when it was dead-lettered."""
        with self._lock:
            row = self._db.execute("SELECT attempts FROM outbox WHERE id = ?", (row_id,)).fetchone()
            if row is None:
                return False
            if row[0] + 1 < self.max_attempts:
                self._db.execute("UPDATE outbox SET attempts = ? WHERE id = ?", (row[0] + 1, row_id))
                return False
        return self.dead_letter(row_id, reason, row[0] + 1)

    def dead_letter(self, row_id: int, reason: str, attempts: int = 1) -> bool:
        """Move a row that can never be delivered to ``dead_letter`` (a refusal for good: the broker said no
        ``max_attempts`` times, or the MQTT client will not send its topic or payload). True when it was there."""
        reason = reason[:1000]
        with self._lock:
            row = self._db.execute("SELECT kind, topic, payload, created, size FROM outbox WHERE id = ?",
                                   (row_id,)).fetchone()
        if row is None:
            return False
        kind, topic, payload, created, size = row
        kept = bytes(payload)[:DEAD_PAYLOAD]
        with self._transaction() as cur:
            cur.execute("INSERT INTO dead_letter (id, kind, topic, payload, attempts, reason, created, died) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (row_id, kind, topic, sqlite3.Binary(kept), attempts,
                                                            reason, created, time.time()))
            cur.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            self._count(cur, "dead_" + kind)
            self._trim_dead(cur)
        self._bytes -= size
        log.error("dead-lettered message %d on %s after %d attempt(s): %s", row_id, topic[:200], attempts, reason)
        return True

    def _trim_dead(self, cur: sqlite3.Cursor) -> None:
        """Keep the dead letters within ``dead_limit`` bytes: the oldest go first (counted as ``dead_dropped``)."""
        total = "SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + LENGTH(reason) + %d), 0) FROM dead_letter" \
            % ROW_OVERHEAD
        while int(cur.execute(total).fetchone()[0]) > self.dead_limit:
            cur.execute("DELETE FROM dead_letter WHERE id = (SELECT id FROM dead_letter ORDER BY died, id LIMIT 1)")
            self._count(cur, "dead_dropped")

    # -- introspection ---------------------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        """Bytes of messages (topic and payload) waiting."""
        return self._bytes

    def disk_bytes(self) -> int:
        """The outbox's files on disk now: database, write-ahead log and shared-memory index."""
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal", self.path + "-shm")
                   if os.path.exists(p))

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
        """Commit what is staged, then close the database."""
        try:
            self.flush()
        finally:
            with self._lock:
                self._db.close()
