"""Poison messages against the real broker: a retained bad policy, a redelivered bad sample and an outbox holding
rows no broker takes must neither stop the agent or the collector nor stop them again at the next start."""
import json
import os
import sqlite3
import time

from edgesight.agent.outbox import Outbox
from edgesight.fleet.store import REJECTED, read_manifest

from support.fleet import Publisher, manifest_ids, sample_payload, start_collector, stop_collector, wait_for
from support.mqtt import Collector, agent_config, finish, folder_camera, publish, start_agent


def test_a_retained_recursion_bomb_policy_is_rejected_and_the_next_start_runs_too(broker, tmp_path):
    publish(broker.port, "edgesight/dev1/config/sampling", b"[" * 1000, retain=True)  # 1 KB, under the limit
    sub = Collector(broker.port)
    for start in (1, 2):  # the retained copy is there again at the second start
        cfg = agent_config(tmp_path, broker.port, cameras=folder_camera(fps=50, loop=False))
        code, _, err = finish(start_agent(cfg, "--max-frames", "30"))
        assert code == 0 and "Traceback" not in err, err[-3000:]
        assert "RecursionError" not in err
        assert sub.wait_for(lambda s: sum(1 for _, p, _ in s.of("config/sampling/status")
                                          if p["state"] == "rejected") >= start, 10)
    rejected = [p for _, p, _ in sub.of("config/sampling/status") if p["state"] == "rejected"]
    assert "nested too deeply" in rejected[-1]["error"] and rejected[-1]["source"] == "config"
    assert len([p for _, p, _ in sub.of("result")]) >= 60  # both runs classified their frames
    sub.close()


def test_a_sample_that_cannot_be_stored_is_rejected_acknowledged_and_not_redelivered(broker, tmp_path):
    ds = tmp_path / "ds"
    proc = start_collector(ds, broker.port, "--client-id", "c-poison")
    pub = Publisher(broker.port)
    try:
        time.sleep(1.5)
        topic, bad = sample_payload(1)
        bad["ts"] = "2026-11-22T08:34:54." + "7" * 300 + "Z"  # once made a file name over 255 bytes
        pub.send(topic, json.dumps(bad).encode())
        good_ids = [pub.sample(10 + i) for i in range(3)]
        assert wait_for(lambda: len(manifest_ids(ds)) == 3, 30)
        assert proc.poll() is None
    finally:
        pub.close()
    summary, err = stop_collector(proc)
    assert summary["rejected"] == 1 and "Traceback" not in err
    proc = start_collector(ds, broker.port, "--client-id", "c-poison", "--idle-exit", "3")  # the same session
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and json.loads(out)["received"] == 0, err[-2000:]  # nothing redelivered
    reasons = [json.load(open(str(ds / REJECTED / f)))["reason"] for f in os.listdir(str(ds / REJECTED))]
    assert len(reasons) == 1 and "ts" in reasons[0]
    assert sorted(manifest_ids(ds)) == sorted(good_ids)
    assert all(len(os.path.basename(r["file"])) < 100 for r in read_manifest(str(ds)))


def test_rows_no_broker_takes_are_dead_lettered_and_the_agent_runs_at_every_start(broker, tmp_path):
    """An outbox written by a config whose prefix was `edge/#` (before topics were checked): after the prefix is
    fixed the agent must run, not exit 6 at every start until someone deletes outbox.db."""
    path = str(tmp_path / "outbox.db")
    ob = Outbox(path)
    bad = [ob.put("result", "edge/#/dev1/front/result", b'{"v":1}'), ob.put("state", "edge/+/dev1/front/state",
                                                                           b'{"v":1}', retain=True)]
    ob.close()
    sub = Collector(broker.port)
    for _ in range(2):
        cfg = agent_config(tmp_path, broker.port, outbox={"path": path})
        code, _, err = finish(start_agent(cfg, "--max-frames", "20"))
        assert code == 0, err[-3000:]
    db = sqlite3.connect(path)
    dead = {r[0]: r[1] for r in db.execute("SELECT id, reason FROM dead_letter")}
    assert set(dead) == set(bad) and all("refuses" in r for r in dead.values())
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    db.close()
    assert sub.wait_for(lambda s: len(s.of("result")) >= 40, 10)
    sub.close()
