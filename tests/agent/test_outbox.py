"""The durable outbox on a real SQLite file: acks, reopen, eviction by priority, dead letters."""
import sqlite3

from edgesight.agent.outbox import Outbox


# -- outbox ----------------------------------------------------------------------------------------------------
def test_outbox_ack_and_survives_reopen(tmp_path):
    path = str(tmp_path / "o.db")
    ob = Outbox(path)
    a = ob.put("result", "t/r", b"x" * 10)
    b = ob.put("sample", "t/s", b"y" * 10)
    assert [r.id for r in ob.pending(10)] == [a, b]  # results before samples
    assert ob.ack(a) and not ob.ack(a)
    ob.close()
    ob = Outbox(path)  # what was committed is still there
    assert [r.id for r in ob.pending(10)] == [b] and ob.bytes == 13
    assert ob.counters()["sent_result"] == 1
    ob.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_outbox_evicts_stats_then_samples_never_results_for_lower(tmp_path):
    ob = Outbox(str(tmp_path / "o.db"), max_bytes=1 << 16)
    size = 10000
    ids = {"stats": ob.put("stats", "s", b"s" * size), "sample": ob.put("sample", "p", b"p" * size)}
    results = [ob.put("result", "r", b"r" * size) for _ in range(4)]  # 6 x 10 KB = 60 KB of 64 KB
    assert ob.put("result", "r", b"r" * size) is not None  # needs room: the stats row goes first
    c = ob.counters()
    assert c == {"evicted_stats": 1}
    assert ob.put("result", "r", b"r" * size) is not None  # then the sample
    assert ob.counters()["evicted_sample"] == 1
    assert ob.put("sample", "p", b"p" * size) is None  # a sample cannot push out results
    assert ob.counters()["dropped_sample"] == 1
    assert ob.put("result", "r", b"r" * size) is not None  # full of results: the oldest result goes, counted
    assert ob.counters()["evicted_result"] == 1
    left = {r.id for r in ob.pending(100)}
    assert ids["stats"] not in left and ids["sample"] not in left and results[0] not in left
    assert ob.bytes <= 1 << 16


def test_outbox_dead_letters_after_max_attempts(tmp_path):
    ob = Outbox(str(tmp_path / "o.db"), max_attempts=2)
    i = ob.put("result", "denied/topic", b"{}")
    assert ob.refused(i, "Not authorized") is False
    assert ob.refused(i, "Not authorized") is True
    assert ob.depth() == 0 and ob.bytes == 0
    assert ob.dead_letters() == [{"id": i, "kind": "result", "topic": "denied/topic", "attempts": 2,
                                  "reason": "Not authorized"}]
    assert ob.counters()["dead_result"] == 1
