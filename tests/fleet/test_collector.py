"""The real `edgesight collect` against mosquitto: bad payloads, SIGKILL and restart, broker restart, options,
export."""
import json
import os
import signal
import time

import pytest

from edgesight.contract import payloads
from edgesight.fleet.store import REJECTED, read_manifest

from support import run_cli
from support.fleet import (Publisher, bad_corpus, manifest_ids, sample_payload, start_collector, stop_collector,
                           wait_for)


def test_bad_payload_corpus_over_mqtt_lands_in_rejected_and_the_collector_carries_on(broker, tmp_path):
    ds = tmp_path / "ds"
    proc = start_collector(ds, broker.port, "--client-id", "c-bad", "--max-bytes", "1000000")
    pub = Publisher(broker.port)
    try:
        assert wait_for(lambda: "connected" in (proc.stderr.readline() or ""), 20)
        corpus = bad_corpus()
        for _, body, _ in corpus:
            pub.send("edgesight/dev1/front/sample", body)
        topic, good = sample_payload(7)
        pub.send(topic, payloads.encode(good))
        assert wait_for(lambda: len(manifest_ids(ds)) == 1, 30)
        assert proc.poll() is None
    finally:
        pub.close()
    summary, err = stop_collector(proc)
    assert summary["rejected"] == len(corpus) and summary["stored"] == 1
    assert "Traceback" not in err  # a rejected payload is one log line with its reason
    files = sorted(os.listdir(str(ds / REJECTED)))
    assert len(files) == len(corpus)
    reasons = [json.load(open(str(ds / REJECTED / f)))["reason"] for f in files]
    for _, _, expected in corpus:
        assert any(expected in r for r in reasons), (expected, reasons)
    rec = json.load(open(str(ds / REJECTED / files[0])))
    assert rec["topic"] == "edgesight/dev1/front/sample" and ("payload" in rec or "payload_base64" in rec)


def test_collector_killed_mid_stream_and_restarted_misses_nothing_and_stores_nothing_twice(broker, tmp_path):
    ds = tmp_path / "ds"
    proc = start_collector(ds, broker.port, "--client-id", "c-kill")
    time.sleep(1.5)
    pub = Publisher(broker.port)
    ids = []
    try:
        for i in range(400):
            topic, body = sample_payload(1000 + i, device="dev%d" % (i % 3))
            pub.send(topic, payloads.encode(body))
            ids.append(body["id"])
            if i == 150:
                assert wait_for(lambda: len(manifest_ids(ds)) >= 50, 30)
                proc.kill()  # SIGKILL: whatever it was doing, it stops there
                proc.wait(10)
                killed_at = len(manifest_ids(ds))
            if i == 250:  # 100 more were sent while it was away: the broker queues them for its session
                proc = start_collector(ds, broker.port, "--client-id", "c-kill")
            time.sleep(0.005)
        assert wait_for(lambda: len(manifest_ids(ds)) >= 400, 60)
        time.sleep(1.0)
    finally:
        pub.close()
    summary, _ = stop_collector(proc)
    stored = manifest_ids(ds)
    assert 0 < killed_at < 400
    assert len(stored) == len(set(stored)) == 400 and set(stored) == set(ids)
    on_disk = {os.path.relpath(os.path.join(d, f), str(ds)) for d, _, fs in os.walk(str(ds)) for f in fs
               if f.endswith(".jpg")}
    assert on_disk == {r["file"] for r in read_manifest(str(ds))}  # no orphan or half-written image
    assert not [f for _, _, fs in os.walk(str(ds)) for f in fs if f.endswith(".tmp")]
    assert summary["stored"] == 400 - killed_at  # the restarted collector stored exactly the rest


def test_plain_subscription_collector_keeps_samples_sent_while_it_reconnects_after_a_broker_restart(broker, tmp_path):
    """mosquitto 2.0 restores plain persistent subscriptions after a restart but not shared ones (measured, see
    docs/collect.md): with --no-share, samples published before the collector is back are queued for it."""
    ds = tmp_path / "ds"
    proc = start_collector(ds, broker.port, "--client-id", "c-plain", "--no-share", "--reconnect-max", "4")
    try:
        time.sleep(1.5)
        pub = Publisher(broker.port)
        for i in range(5):
            pub.sample(2000 + i)
        pub.close()
        assert wait_for(lambda: len(manifest_ids(ds)) == 5, 20)
        broker.proc.send_signal(signal.SIGTERM)  # a clean broker restart (it saves its sessions)
        broker.proc.wait(10)
        broker.start()
        pub = Publisher(broker.port)  # at once: the collector is still waiting out its backoff
        for i in range(5, 10):
            pub.sample(2000 + i)
        pub.close()
        assert wait_for(lambda: len(manifest_ids(ds)) == 10, 30)
    finally:
        summary, err = stop_collector(proc)
    assert "reconnecting" in err and summary["stored"] == 10


@pytest.mark.parametrize("args, code, needle", [
    (["--username", "u", "--password-env", "EDGESIGHT_NO_SUCH_VAR"], 2, "--password-env"),
    (["--password-file", "/nonexistent/pw"], 2, "--password-file"),
    (["--port", "1", "--host", "127.0.0.1"], 9, "cannot connect"),
])
def test_collect_bad_options_fail_with_the_option_named(tmp_path, args, code, needle):
    r = run_cli("collect", str(tmp_path / "ds"), *args)
    assert r.returncode == code and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_missing_pillow_fails_at_start_not_on_every_sample(tmp_path):
    shadow = tmp_path / "shadow" / "PIL"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('PIL is broken on this host')\n")
    r = run_cli("collect", tmp_path / "ds", "--port", "1", env={"PYTHONPATH": str(shadow.parent)})
    assert r.returncode == 5 and "Pillow" in r.stderr and "edgesight[fleet]" in r.stderr, r.stderr
    assert not (tmp_path / "ds").exists()  # nothing was started


def test_manifest_lines_that_are_not_records_are_skipped_by_collect_and_export(tmp_path):
    from edgesight.fleet.store import Dataset

    ds = tmp_path / "ds"
    d = Dataset(str(ds))
    topic, body = sample_payload(4)
    from edgesight.fleet.intake import parse_sample

    d.add_batch([parse_sample(topic, payloads.encode(body))])
    d.close()
    with open(str(ds / "manifest.jsonl"), "a") as f:
        f.write('{"valid": "json", "but": "no id"}\n[1, 2]\n{"id": 7, "file": "x"}\n')
    d = Dataset(str(ds))  # catches up past the bad lines instead of a KeyError
    assert len(d) == 1
    d.close()
    r = run_cli("collect", "export", ds, "--format", "folder", "--out", tmp_path / "out", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == 1, r.stderr
    assert "line 2 is not a sample record" in r.stderr and "Traceback" not in r.stderr


def test_export_refuses_a_folder_that_is_not_a_collected_dataset(tmp_path):
    r = run_cli("collect", "export", str(tmp_path), "--format", "folder", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "manifest.jsonl" in r.stderr


def test_a_collector_left_running_by_a_failing_test_is_reaped(broker, tmp_path):
    from support import fleet

    proc = start_collector(tmp_path / "ds", broker.port, "--client-id", "c-left")
    assert wait_for(lambda: (tmp_path / "ds").exists(), 30) or proc.poll() is None
    fleet.reap()  # what the autouse fixture in conftest does after every test
    assert proc.poll() is not None and proc not in fleet.RUNNING
