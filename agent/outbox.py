"""The durable outbox: every result and sample is committed here before it is published, and leaves only when the
broker acknowledges it (QoS 1 PUBACK; QoS 0 stats leave once written to the socket).

SQLite in WAL mode with ``synchronous=FULL``: a committed row survives SIGKILL and power loss. ``put`` commits at
once; ``stage`` holds a message for the next commit (``flush`` or any ``put``), at most ``GROUP_DELAY`` or
``GROUP_ROWS`` (``commit_due``), so that several results share one transaction and one fsync; meanwhile the
publisher may send it (``fresh``), and one the broker acknowledges first is never written (agent/staging.py). A
message is accepted once committed or acknowledged: a crash can lose only what was staged, at most ``GROUP_DELAY``
of results that the broker had not acknowledged either. ``max_bytes``
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

from .outbox_db import count, disk_cost, keep_log_small, open_database, trim_dead
from .staging import Message, Staged, Staging

log = logging.getLogger(__name__)

PRIORITY = {"stats": 0, "sample": 1, "result": 2, "state": 2}
MIN_BYTES = 256 * 1024
DEAD_PAYLOAD = 4096
SHM_BYTES = 32 * 1024  # the -shm index of a WAL database
class Row(NamedTuple):
    id: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    attempts: int
    captured: Optional[float]
    created: Optional[float] = None  # when it was committed (staged, for one sent before its commit)


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
        self._rows = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])  # kept by each commit
        self._tx_rows = 0  # rows the open transaction adds (less those it deletes)
        self.on_put: Optional[Callable[[], None]] = None  # called after each commit of rows and by ``offer``
        self.committed: Dict[str, int] = {}  # accepted since start, by kind: committed, or acknowledged before
        self._staging = Staging()  # waiting for the next commit (stage / flush), sent meanwhile where possible
        self._early: Dict[int, str] = {}  # key -> kind: acknowledged before its commit, not counted on disk yet

    # -- writing ---------------------------------------------------------------------------------------------
    def put(self, kind: str, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
            captured: Optional[float] = None) -> Optional[int]:
        """Commit one message, with whatever was staged before it; returns its id, or None when it was dropped
        because the outbox is full of messages of equal or higher priority (counted as ``dropped_<kind>``)."""
        return self._commit([Message(kind, topic, payload, qos, retain, captured)])[-1]

    def stage(self, kind: str, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
              captured: Optional[float] = None) -> int:
        """Hold a message for the next commit (agent/staging.py): :meth:`flush`, or any :meth:`put`, commits what is
        staged, in order, in one transaction, unless the broker acknowledged it first (:meth:`fresh`,
        :meth:`ack_many`). A staged message is accepted once committed or acknowledged; the caller flushes within
        a bounded time (:func:`commit_due`), and :meth:`close` commits what is left. Returns its key (below 0)."""
        PRIORITY[kind]  # an unknown kind fails here, not at the commit
        with self._lock:
            return self._staging.add(Message(kind, topic, payload, qos, retain, captured), time.monotonic(),
                                     time.time())

    def offer(self) -> None:
        """What is staged may be sent before its commit: wake the publisher (once per frame, not per message)."""
        if self._staging and self.on_put is not None:
            self.on_put()

    @property
    def staged(self) -> int:
        """Messages staged and neither committed nor acknowledged yet."""
        return len(self._staging)

    def staged_age(self) -> float:
        """Seconds the oldest staged message has waited (0 when none is)."""
        oldest = self._staging.oldest()
        return 0.0 if oldest is None else time.monotonic() - oldest

    def flush(self) -> List[Optional[int]]:
        """Commit every staged message in one transaction; their ids (None: dropped, the outbox was full)."""
        return self._commit([]) if self._staging else []

    def _commit(self, messages: List["Message"]) -> List[Optional[int]]:
        ids: List[Optional[int]] = []
        taken: List[Staged] = []
        done: List[Message] = []

        def after() -> None:  # under the lock, once the rows are durable
            self._staging.committed(zip(taken, ids))
            for m, row_id in zip(done, ids):
                if row_id is not None:
                    self.committed[m.kind] = self.committed.get(m.kind, 0) + 1

        added = 0
        try:
            with self._transaction(after=after) as cur:
                taken[:] = self._staging.take()  # under the lock
                done[:] = [s.message for s in taken] + messages
                for m in done:
                    ids.append(self._insert(cur, m))
                    added += (len(m.payload) + len(m.topic)) if ids[-1] is not None else 0
        except BaseException:
            with self._lock:  # nothing was committed: the staged messages wait for the next try
                self._staging.put_back(taken)
            raise
        for m, row_id in zip(done, ids):
            if row_id is None:
                log.warning("outbox full (%d bytes of messages): dropped a new %s", self._bytes, m.kind)
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
            count(cur, "dropped_" + m.kind)
            return None
        cur.execute("INSERT INTO outbox (kind, priority, topic, payload, qos, retain, size, created, captured) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (m.kind, prio, m.topic, sqlite3.Binary(m.payload), m.qos,
                                                          int(m.retain), size, time.time(), m.captured))
        self._tx_rows += 1
        return cur.lastrowid

    @contextlib.contextmanager
    def _transaction(self, synchronous: str = "FULL", after: Optional[Callable[[], None]] = None
                     ) -> Iterator[sqlite3.Cursor]:
        """BEGIN IMMEDIATE .. COMMIT under the lock (ROLLBACK on any error), then ``after`` (lock held) and the log
        is kept small."""
        with self._lock:
            if synchronous != "FULL":
                self._db.execute("PRAGMA synchronous=%s" % synchronous)
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            self._tx_rows = 0
            try:
                yield cur
                cur.execute("COMMIT")
                self._rows += self._tx_rows
                if after is not None:
                    after()
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()  # an open statement would hold a read lock and stop the checkpoint
                if synchronous != "FULL":
                    self._db.execute("PRAGMA synchronous=FULL")
            keep_log_small(self._db, self.path, self.wal_slack)

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
        self._tx_rows -= len(chosen)
        for _, kind, size in chosen:
            count(cur, "evicted_" + kind)
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

    # -- reading and acknowledging ---------------------------------------------------------------------------
    def pending(self, limit: int, exclude: Optional[set] = None) -> List[Row]:
        """Committed rows, oldest first, highest priority first; ``exclude``: ids (or staged keys) already in
        flight. No query while the outbox holds no row (below the maximum rate, with the broker there)."""
        with self._lock:
            if self._rows <= 0:
                return []
            busy = self._staging.rows_of(exclude or ())
            rows = self._db.execute(
                "SELECT id, kind, topic, payload, qos, retain, attempts, captured, created FROM outbox "
                "ORDER BY priority DESC, id LIMIT ?", (limit + len(busy),)).fetchall()
        out = [Row(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6], r[7], r[8]) for r in rows
               if r[0] not in busy]
        return out[:limit]

    def fresh(self, limit: int) -> List[Row]:
        """Up to ``limit`` staged messages not sent yet, oldest first, to send before their commit; each has its
        staged key (below 0) as ``id``, for :meth:`ack_many`, :meth:`refused` and ``exclude``."""
        with self._lock:
            out = self._staging.hand(limit)
        return [Row(s.key, s.message.kind, s.message.topic, s.message.payload, s.message.qos, s.message.retain, 0,
                    s.message.captured, s.wall) for s in out]

    def ack(self, row_id: int) -> bool:
        """The broker acknowledged: delete. False when the row was already gone (a duplicate ack)."""
        return bool(self.ack_many([row_id]))

    def ack_many(self, row_ids: List[int]) -> List[int]:
        """The broker acknowledged these rows or staged keys: delete the rows in one transaction, and a staged
        message acknowledged before its commit is never written (counted as sent all the same). Returns the ids and
        keys that were still there.

        Deletes commit with ``synchronous=NORMAL``: a delete lost to a power cut only means the message is sent
        once more (delivery is at-least-once), while every insert keeps ``synchronous=FULL``."""
        done: List[int] = []
        early: Dict[str, int] = {}  # kind -> acknowledged before their commit
        with self._lock:
            for key in row_ids:
                if key >= 0:
                    continue
                self._unstage(key)  # when still staged
                kind = self._early.pop(key, None)
                if kind is not None:
                    early[kind] = early.get(kind, 0) + 1
                    done.append(key)
        gone = set(done)
        rest = [k for k in row_ids if k not in gone]
        if not rest and not early:
            return done
        freed = 0
        with self._transaction(synchronous="NORMAL") as cur:
            for key in rest:
                row_id = self._staging.row_of(key, forget=True)
                row = None if row_id is None else cur.execute("SELECT size, kind FROM outbox WHERE id = ?",
                                                              (row_id,)).fetchone()
                if row is None:
                    continue
                cur.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                self._tx_rows -= 1
                count(cur, "sent_" + row[1])
                freed += row[0]
                done.append(key)
            for kind, n in early.items():
                count(cur, "sent_" + kind, n)
        self._bytes -= freed
        return done

    def unstage(self, key: int) -> bool:
        """The broker acknowledged the staged message of ``key``: it leaves the group now and is never written;
        :meth:`ack_many` counts it as sent with the next deletes. False when it is not staged (committed)."""
        with self._lock:
            return self._unstage(key) is not None

    def _unstage(self, key: int) -> Optional[str]:
        s = self._staging.acknowledged(key)
        if s is None:
            return None
        self._early[key] = s.message.kind
        self.committed[s.message.kind] = self.committed.get(s.message.kind, 0) + 1
        return s.message.kind

    def _row_id(self, key: int) -> Optional[int]:
        """The row of an id or staged key; a staged message is committed first (it is about to be refused)."""
        if key >= 0:
            return key
        with self._lock:
            staged = self._staging.is_staged(key)
        if staged:
            self.flush()
        with self._lock:
            return self._staging.row_of(key, forget=True)

    def refused(self, row_id: int, reason: str) -> bool:
        """The broker refused the message (e.g. not authorized). After ``max_attempts`` it moves to dead_letter.
        Returns True when it was dead-lettered."""
        found = self._row_id(row_id)
        if found is None:
            return False
        row_id = found
        with self._lock:
            row = self._db.execute("SELECT attempts FROM outbox WHERE id = ?", (row_id,)).fetchone()
            if row is None:
                return False
            if row[0] + 1 < self.max_attempts:
                self._db.execute("UPDATE outbox SET attempts = ? WHERE id = ?", (row[0] + 1, row_id))
                return False
        return self.dead_letter(row_id, reason, row[0] + 1)

    def dead_letter(self, row_id: int, reason: str, attempts: int = 1) -> bool:
        """Move a row (or a staged message, committed first) that can never be delivered to ``dead_letter`` (a
        refusal for good: the broker said no ``max_attempts`` times, or the MQTT client will not send its topic or
        payload). True when it was there."""
        reason = reason[:1000]
        found = self._row_id(row_id)
        if found is None:
            return False
        row_id = found
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
            self._tx_rows -= 1
            count(cur, "dead_" + kind)
            trim_dead(cur, self.dead_limit)
        self._bytes -= size
        log.error("dead-lettered message %d on %s after %d attempt(s): %s", row_id, topic[:200], attempts, reason)
        return True

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
        """Rows in the outbox (staged messages not counted), counted by SQLite."""
        with self._lock:
            self._rows = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            return self._rows

    def counters(self) -> Dict[str, int]:
        """The counters on disk, with the messages acknowledged before their commit that are not counted there yet."""
        with self._lock:
            out = {k: int(v) for k, v in self._db.execute("SELECT name, value FROM counters")}
            for kind in self._early.values():
                out["sent_" + kind] = out.get("sent_" + kind, 0) + 1
        return out

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
