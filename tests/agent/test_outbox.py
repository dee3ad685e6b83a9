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


# -- group commit --------------------------------------------------------------------------------------------------
def test_staged_messages_commit_together_in_order_and_a_close_commits_what_is_left(tmp_path):
    path = str(tmp_path / "o.db")
    ob = Outbox(path)
    woken = []
    ob.on_put = lambda: woken.append(1)
    ob.stage("result", "t/r", b"r1")
    ob.stage("state", "t/st", b"s1", retain=True)
    assert ob.staged == 2 and ob.pending(10) == [] and ob.bytes == 0 and woken == []  # not accepted yet
    ids = ob.flush()
    assert len(ids) == 2 and None not in ids and woken == [1] and ob.staged == 0 and ob.staged_age() == 0.0
    assert [(r.topic, r.payload, r.retain) for r in ob.pending(10)] == [("t/r", b"r1", False), ("t/st", b"s1", True)]
    assert ob.flush() == [] and woken == [1]  # nothing staged: no transaction, no wake-up
    ob.stage("result", "t/r", b"r2")
    sample = ob.put("sample", "t/p", b"p")  # a put commits what was staged before it, in the same transaction
    rows = ob.pending(10)
    assert [r.payload for r in rows] == [b"r1", b"s1", b"r2", b"p"] and rows[-1].id == sample
    assert rows[2].id < sample and ob.committed == {"result": 2, "state": 1, "sample": 1}
    ob.stage("result", "t/r", b"r3")
    ob.close()  # a staged result is not left behind at a stop
    ob = Outbox(path)
    assert b"r3" in [r.payload for r in ob.pending(10)]
    ob.close()


def test_a_failed_group_commit_keeps_its_messages_staged(tmp_path, monkeypatch):
    import pytest

    ob = Outbox(str(tmp_path / "o.db"))
    ob.stage("result", "t/r", b"r1")
    ob.stage("result", "t/r", b"r2")
    real = Outbox._insert

    def failing(self, cur, m):
        if m.payload == b"r2":
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, cur, m)

    monkeypatch.setattr(Outbox, "_insert", failing)
    with pytest.raises(sqlite3.OperationalError):
        ob.flush()
    assert ob.pending(10) == [] and ob.staged == 2 and ob.bytes == 0  # r1 rolled back with the group
    monkeypatch.setattr(Outbox, "_insert", real)
    assert len(ob.flush()) == 2 and [r.payload for r in ob.pending(10)] == [b"r1", b"r2"]
    with pytest.raises(KeyError):
        ob.stage("bogus", "t", b"")  # an unknown kind fails where it is staged, not in someone else's commit
    ob.close()


def test_commit_due_groups_within_its_bounds_at_any_frame_rate():
    from edgesight.agent.staging import GROUP_DELAY, GROUP_ROWS, commit_due

    assert not commit_due(0, 0.0, 0.0)  # nothing staged
    assert not commit_due(1, 0.0, 0.01)  # a young group waits: the broker may acknowledge it first
    assert commit_due(GROUP_ROWS, 0.0, 0.001)  # full
    assert commit_due(1, GROUP_DELAY - 0.01, 0.02)  # the next frame would take it past the delay
    assert commit_due(1, 0.0, GROUP_DELAY)  # a slow model (a Pi at 10 fps) never holds a result back
    assert not commit_due(GROUP_ROWS - 1, GROUP_DELAY - 0.02, 0.01)


# -- sent before the commit ----------------------------------------------------------------------------------------
def test_a_staged_message_acknowledged_before_its_commit_is_never_written_and_counts_as_sent(tmp_path):
    ob = Outbox(str(tmp_path / "o.db"))
    inserts = []
    real = ob._insert
    ob._insert = lambda cur, m: inserts.append(m.payload) or real(cur, m)
    k1 = ob.stage("result", "t/r", b"r1", captured=5.0)
    k2 = ob.stage("state", "t/st", b"s1", retain=True)
    assert k1 < 0 and k2 < 0 and k1 != k2
    sent = ob.fresh(10)
    assert [(r.id, r.payload, r.retain, r.captured) for r in sent] == [(k1, b"r1", False, 5.0), (k2, b"s1", True, None)]
    assert ob.fresh(10) == [] and ob.pending(10, exclude={k1, k2}) == []  # each is handed once
    assert ob.unstage(k1) and not ob.unstage(k1) and ob.staged == 1  # acknowledged: out of the group at once
    assert ob.counters().get("sent_result") == 1  # counted before the deletes' transaction writes it
    ids = ob.flush()  # s1 was not acknowledged in time: committed; its key now stands for its row
    assert inserts == [b"s1"] and len(ids) == 1 and ob.pending(10, exclude={k2}) == []  # still in flight
    assert sorted(ob.ack_many([k1, k2])) == sorted([k1, k2])  # r1 counted on disk, s1's row deleted
    assert ob.depth() == 0 and ob.pending(10) == [] and inserts == [b"s1"]
    assert ob.counters()["sent_result"] == 1 and ob.counters()["sent_state"] == 1
    assert ob.committed == {"result": 1, "state": 1}  # both accepted, one of them never written
    assert ob.ack_many([k1, k2]) == []  # duplicate acknowledgements
    ob.close()


def test_a_refused_or_unsendable_staged_message_is_committed_first_and_nothing_is_lost_at_a_close(tmp_path):
    path = str(tmp_path / "o.db")
    ob = Outbox(path, max_attempts=2)
    k1 = ob.stage("result", "t/r", b"r1")
    k2 = ob.stage("result", "t/r", b"r2")
    k3 = ob.stage("result", "bad/#", b"r3")
    assert [r.id for r in ob.fresh(3)] == [k1, k2, k3]
    assert not ob.refused(k1, "Not authorized")  # the first refusal: committed, one attempt counted
    assert ob.staged == 0 and [r.payload for r in ob.pending(10)] == [b"r1", b"r2", b"r3"]
    r1 = ob.pending(10)[0]
    assert r1.attempts == 1 and not ob.refused(k1, "again")  # the key is spent: the row is sent again by its id
    assert ob.refused(r1.id, "Not authorized")  # and dead-lettered at the second refusal
    assert ob.dead_letter(k3, "the MQTT client refuses it")
    assert [d["topic"] for d in ob.dead_letters()] == ["t/r", "bad/#"]
    k4 = ob.stage("result", "t/r", b"r4")
    ob.fresh(1)
    ob.close()  # staged and in flight at a stop: committed, sent again at the next start
    ob = Outbox(path)
    assert [r.payload for r in ob.pending(10)] == [b"r2", b"r4"] and ob.ack_many([k2, k4]) == []  # keys are gone
    ob.close()


def test_the_outbox_reads_no_row_while_it_holds_none(tmp_path):
    ob = Outbox(str(tmp_path / "o.db"))
    rid = ob.put("result", "t/r", b"r")
    assert [r.id for r in ob.pending(10)] == [rid]
    ob.ack_many([rid])
    calls = []
    db = ob._db
    ob._db = type("Spy", (), {"execute": lambda self, *a: calls.append(a) or db.execute(*a)})()
    try:
        assert ob.pending(10) == [] and calls == []  # no query: nothing is there
    finally:
        ob._db = db
    raw = sqlite3.connect(str(tmp_path / "o.db"))  # a row the count did not see (another writer, a bug) is
    raw.execute("INSERT INTO outbox (kind, priority, topic, payload, qos, retain, size, created) "  # found again
                "VALUES ('result', 2, 't/r', x'00', 1, 0, 4, 0)")
    raw.commit()
    raw.close()
    assert ob.depth() == 1 and len(ob.pending(10)) == 1  # by the next count (stats, the drain)
    ob.close()
