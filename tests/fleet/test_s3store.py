"""The S3 store against a real S3 HTTP endpoint on loopback (moto's standalone server): exactly once without a lock
across stores and collector processes, SIGKILL and restart, an S3 outage mid-stream, the bad-payload corpus, export."""
import base64
import importlib.util
import json
import os
import threading
import time

import pytest

from edgesight.contract import payloads
from edgesight.errors import ConfigError
from edgesight.fleet.intake import parse_sample

from support import require_or_skip, run_cli
from support.fleet import Publisher, bad_corpus, sample_payload, start_collector, stop_collector, wait_for

from support.s3 import CREDENTIALS, S3Server


@pytest.fixture
def s3(monkeypatch):
    for module in ("boto3", "moto"):  # edgesight[all] installs both; CI fails rather than skips without them
        require_or_skip(importlib.util.find_spec(module) is not None, module)
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    server = S3Server().start()
    server.bucket("fleet")
    yield server
    server.stop()


def samples(n, offset=0):
    out = []
    for i in range(n):
        topic, body = sample_payload(offset + i, device="dev%d" % (i % 3))
        out.append(parse_sample(topic, payloads.encode(body), 1 << 20))
    return out


def records(s3, prefix="ds"):
    return [json.loads(s3.get("fleet", k)) for k in s3.keys("fleet", prefix + "/samples/")]


def test_two_stores_writing_the_same_samples_at_once_store_each_exactly_once(s3):
    from edgesight.fleet.s3store import S3Store

    a, b = S3Store("s3://fleet/ds", "a", endpoint=s3.url), S3Store("s3://fleet/ds", "b", endpoint=s3.url)
    batch = samples(60)
    got = {}
    threads = [threading.Thread(target=lambda st=st, name=name: got.__setitem__(name, st.add_batch(batch)))
               for st, name in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got["a"][0] + got["b"][0] == 60 and got["a"][1] + got["b"][1] == 60  # each stored once, once a dup
    recs = records(s3)
    assert sorted(r["id"] for r in recs) == sorted(s.payload.id for s in batch)
    for r in recs:  # the record names its content-addressed image, and the bytes are the sample's
        assert s3.get("fleet", "ds/" + r["file"]) == next(s.jpeg for s in batch if s.payload.id == r["id"])
    assert a.total() == 60 and len(s3.keys("fleet", "ds/images/")) == 60
    assert a.add_batch(batch[:10]) == (0, 10)  # a redelivery


def test_a_bucket_that_does_not_exist_or_missing_credentials_are_config_errors(s3, monkeypatch):
    from edgesight.fleet.s3store import S3Store

    with pytest.raises(ConfigError, match="NoSuchBucket|404|Not Found"):
        S3Store("s3://nope-bucket/ds", endpoint=s3.url)
    with pytest.raises(ConfigError, match="BUCKET"):
        S3Store("s3://", endpoint=s3.url)
    for k in CREDENTIALS:
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="credentials"):
        S3Store("s3://fleet/ds", endpoint=s3.url)


def _collector(s3, port, *extra):
    return start_collector("s3://fleet/ds", port, "--s3-endpoint", s3.url, *extra, env=CREDENTIALS)


def test_bad_payload_corpus_lands_under_rejected_objects(broker, s3, tmp_path):
    proc = _collector(s3, broker.port, "--client-id", "c-bad")
    pub = Publisher(broker.port)
    try:
        assert wait_for(lambda: "connected" in (proc.stderr.readline() or ""), 30)
        corpus = bad_corpus()
        for _, body, _ in corpus:
            pub.send("edgesight/dev1/front/sample", body)
        topic, good = sample_payload(7)
        pub.send(topic, payloads.encode(good))
        topic, region = sample_payload(8, region="door")  # on <camera>/<region>/sample: the second subscription
        pub.send(topic, payloads.encode(region))
        assert wait_for(lambda: len(s3.keys("fleet", "ds/samples/")) == 2, 30)
    finally:
        pub.close()
    summary, err = stop_collector(proc)
    assert summary["rejected"] == len(corpus) and summary["stored"] == 2 and summary["dataset"] == "s3://fleet/ds"
    rec = [r for r in records(s3) if r["id"] == region["id"]][0]
    assert rec["region"] == "door" and rec["box"] == [4, 3, 40, 30] and rec["context_file"].startswith("frames/")
    assert s3.get("fleet", "ds/" + rec["context_file"]) == base64.b64decode(region["context"]["data"])
    assert "Traceback" not in err
    keys = s3.keys("fleet", "ds/_rejected/")
    assert len(keys) == len(corpus)
    reasons = [json.loads(s3.get("fleet", k))["reason"] for k in keys]
    for _, _, expected in corpus:
        assert any(expected in r for r in reasons), (expected, reasons)


def test_collector_killed_mid_stream_and_an_s3_outage_lose_nothing_and_store_nothing_twice(broker, s3):
    proc = _collector(s3, broker.port, "--client-id", "c-kill")
    time.sleep(2.0)
    pub = Publisher(broker.port)
    ids = []
    try:
        for i in range(360):
            topic, body = sample_payload(2000 + i, device="dev%d" % (i % 3))
            pub.send(topic, payloads.encode(body))
            ids.append(body["id"])
            if i == 100:
                assert wait_for(lambda: len(s3.keys("fleet", "ds/samples/")) >= 40, 30)
                proc.kill()  # SIGKILL mid-stream
                proc.wait(10)
                time.sleep(1.0)  # puts it sent before it died may still land
                killed_at = len(s3.keys("fleet", "ds/samples/"))
            if i == 160:
                proc = _collector(s3, broker.port, "--client-id", "c-kill")
            if i == 240:
                s3.pause()  # the S3 server stops answering for 10 s while samples keep coming
                paused = time.time()
            if i == 300:
                time.sleep(max(0.0, 10.0 - (time.time() - paused)))
                s3.resume()
            time.sleep(0.01)
        assert wait_for(lambda: len(s3.keys("fleet", "ds/samples/")) >= 360, 90)
        time.sleep(1.0)
    finally:
        s3.resume()
        pub.close()
    summary, err = stop_collector(proc)
    recs = records(s3)
    assert 0 < killed_at < 360
    assert len(recs) == 360 and sorted(r["id"] for r in recs) == sorted(ids)  # none missing, none twice
    assert summary["rejected"] == 0 and "again in" in err  # it retried the outage, rejected nothing
    # a put whose reply the outage cut off is retried and meets its own record: a duplicate, not a second copy
    assert summary["stored"] <= 360 - killed_at <= summary["stored"] + summary["duplicates"]


def test_export_from_s3_to_label_studio_and_class_folders(s3, tmp_path):
    from edgesight.fleet.s3store import S3Store

    batch = samples(12)
    S3Store("s3://fleet/ds", endpoint=s3.url).add_batch(batch)
    r = run_cli("collect", "export", "s3://fleet/ds", "--s3-endpoint", s3.url, "--format", "labelstudio", "--out",
                str(tmp_path / "ls" / "tasks.json"), "--json", env=CREDENTIALS)
    assert r.returncode == 0, r.stderr
    tasks = json.load(open(str(tmp_path / "ls" / "tasks.json")))
    assert len(tasks) == 12 and all(t["data"]["image"].startswith("s3://fleet/ds/images/") for t in tasks)
    r = run_cli("collect", "export", "s3://fleet/ds", "--s3-endpoint", s3.url, "--format", "folder", "--out",
                str(tmp_path / "folders"), "--json", env=CREDENTIALS)
    assert r.returncode == 0, r.stderr
    files = {f: open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(str(tmp_path / "folders")) for f in fs}
    assert sorted(files.values()) == sorted(s.jpeg for s in batch)
    assert os.listdir(str(tmp_path / "folders")) == ["three"]
