"""The outbox's file: its schema, opening it (a clear error naming ``outbox.path`` when it cannot be an outbox) and
what a row costs on disk. agent/outbox.py holds the outbox itself."""
import math
import os
import sqlite3

from ..errors import ConfigError

ROW_OVERHEAD = 100  # the other columns, the cell header and the index entry, bytes

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




def count(cur: sqlite3.Cursor, name: str, n: int = 1) -> None:
    """Add ``n`` to the counter ``name`` (sent_result, evicted_sample, dead_dropped ...), inside a transaction."""
    cur.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                "value = value + excluded.value", (name, n))


def trim_dead(cur: sqlite3.Cursor, limit: int) -> None:
    """Keep the dead letters within ``limit`` bytes: the oldest go first (counted as ``dead_dropped``)."""
    total = "SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + LENGTH(reason) + %d), 0) FROM dead_letter" \
        % ROW_OVERHEAD
    while int(cur.execute(total).fetchone()[0]) > limit:
        cur.execute("DELETE FROM dead_letter WHERE id = (SELECT id FROM dead_letter ORDER BY died, id LIMIT 1)")
        count(cur, "dead_dropped")


def keep_log_small(db: sqlite3.Connection, path: str, slack: int) -> None:
    """Checkpoint and truncate the write-ahead log of the database at ``path`` once it is past ``slack`` bytes."""
    try:
        size = os.path.getsize(path + "-wal")
    except OSError:
        return
    if size > slack:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
