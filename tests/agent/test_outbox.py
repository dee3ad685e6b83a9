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
    """The bound is the files on disk (issue: 7.6 MB of disk for max_bytes 2 MB), so the rows that fit are found by
    filling, not computed: then stats go first, then samples, a sample never pushes out a result, and a full outbox
    of results drops its oldest."""
    ob = Outbox(str(tmp_path / "o.db"), max_bytes=1 << 20)
    size = 100000
    ids = {"stats": ob.put("stats", "s", b"s" * size), "sample": ob.put("sample", "p", b"p" * size)}
    results = []
    while not ob.counters():  # results until the first one needs room
        results.append(ob.put("result", "r", b"r" * size))
        assert len(results) < 20
    assert len(results) >= 5
    c = ob.counters()
    assert c == {"evicted_stats": 1}  # the last result needed room: the stats row went first
    assert ob.put("result", "r", b"r" * size) is not None  # then the sample
    assert ob.counters()["evicted_sample"] == 1
    assert ob.put("sample", "p", b"p" * size) is None  # a sample cannot push out results
    assert ob.counters()["dropped_sample"] == 1
    assert ob.put("result", "r", b"r" * size) is not None  # full of results: the oldest result goes, counted
    assert ob.counters()["evicted_result"] == 1
    left = {r.id for r in ob.pending(100)}
    assert ids["stats"] not in left and ids["sample"] not in left and results[0] not in left
    assert ob.bytes <= 1 << 20 and ob.disk_bytes() <= 1 << 20


def test_outbox_files_stay_within_max_bytes_under_a_long_outage(tmp_path):
    """Results, samples and stats for hours of a broker outage, some acknowledged out of order: the database, its
    write-ahead log and its index never take more than max_bytes together, and results are never evicted while
    there are samples or stats to evict."""
    import random

    rng = random.Random(0)
    bound = 2 << 20
    ob = Outbox(str(tmp_path / "o.db"), max_bytes=bound)
    peak, live = 0, []
    for i in range(3000):
        kind = rng.choices(["result", "sample", "stats"], [20, 2, 1])[0]
        n = {"result": rng.randint(500, 700), "sample": rng.randint(20000, 130000), "stats": rng.randint(1500, 3000)}
        row = ob.put(kind, "edgesight/dev1/front/" + kind, bytes(rng.getrandbits(8) for _ in range(64)) * (
            n[kind] // 64))
        if row is not None:
            live.append(row)
        if i > 1500 and rng.random() < 0.3 and live:  # the broker is back for a while: a few acks
            ob.ack(live.pop(rng.randrange(min(5, len(live)))))
        peak = max(peak, ob.disk_bytes())
    c = ob.counters()
    assert peak <= bound, (peak, bound)
    assert c.get("evicted_sample", 0) > 0 and c.get("evicted_stats", 0) > 0
    assert "evicted_result" not in c or ob.depth() == sum(1 for r in ob.pending(100000) if r.kind == "result")
    ob.close()
    assert Outbox(str(tmp_path / "o.db"), max_bytes=bound).bytes == ob.bytes  # the accounting survives reopen


def test_outbox_dead_letters_after_max_attempts(tmp_path):
    ob = Outbox(str(tmp_path / "o.db"), max_attempts=2)
    i = ob.put("result", "denied/topic", b"{}")
    assert ob.refused(i, "Not authorized") is False
    assert ob.refused(i, "Not authorized") is True
    assert ob.depth() == 0 and ob.bytes == 0
    assert ob.dead_letters() == [{"id": i, "kind": "result", "topic": "denied/topic", "attempts": 2,
                                  "reason": "Not authorized"}]
    assert ob.counters()["dead_result"] == 1
