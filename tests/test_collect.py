"""`edgesight collect`: the payload contract, the exactly-once dataset, shared subscriptions, restarts, export."""
import base64
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLE, run_cli
from mqtt_util import Collector as Observer, agent_config, start_agent
from edgesight.contract import payloads
from edgesight.calibration.images import list_images
from edgesight.fleet.intake import Rejected, parse_sample
from edgesight.fleet.store import MANIFEST, REJECTED, Dataset, read_manifest

VAL = os.path.join(EXAMPLE, "images", "val")
MODEL = {"name": "digits-cnn", "version": "1.0.0", "sha256": "0123456789ab"}


def jpeg(seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, "JPEG", quality=80)
    return out.getvalue()


def sample_payload(seed, device="dev1", camera="front", label="three"):
    data = jpeg(seed)
    body = payloads.sample(device, camera, MODEL, "low_confidence", label, 0.42, 0.8,
                           [{"label": label, "score": 0.42}, {"label": "eight", "score": 0.3}], time.time(), data,
                           40, 30, None).model_dump(mode="json")
    return "edgesight/%s/%s/sample" % (device, camera), body


# -- contract (pure) -------------------------------------------------------------------------------------------
def bad_corpus():
    topic, good = sample_payload(1)

    def changed(**kw):
        p = json.loads(json.dumps(good))
        for k, v in kw.items():
            if v is None:
                p.pop(k, None)
            else:
                p[k] = v
        return json.dumps(p).encode()

    img = dict(good["image"])
    huge = dict(img, data=base64.b64encode(b"\xff\xd8" + os.urandom(1_200_000)).decode())
    return [
        ("not JSON", b"this is not json {", "not JSON"),
        ("not an object", b"[1, 2, 3]", "not a JSON object"),
        ("schema v2", changed(v=2), "schema version 2"),
        ("no version", changed(v=None), "schema version None"),
        ("bad base64", changed(image=dict(img, data="@@@not*base64@@@")), "not base64"),
        ("not a jpeg", changed(image=dict(img, data=base64.b64encode(b"GIF89a....").decode())), "not a JPEG"),
        ("truncated jpeg", changed(image=dict(img, data=base64.b64encode(b"\xff\xd8\xff\xe0abc").decode())),
         "does not open"),
        ("wrong size", changed(image=dict(img, width=999)), "the payload says"),
        ("huge image", changed(image=huge), "over the limit"),
        ("score is a string", changed(score="high"), "score"),
        ("top_k wrong type", changed(top_k="three"), "top_k"),
        ("missing id", changed(id=None), "id"),
        ("path in the device", changed(device="../../etc"), "device"),
        ("topic mismatch", changed(camera="back"), "does not match"),
        ("binary garbage", os.urandom(300), "not JSON"),
    ]


@pytest.mark.parametrize("name, body, reason", bad_corpus(), ids=[c[0] for c in bad_corpus()])
def test_bad_payloads_are_rejected_with_a_reason(name, body, reason):
    with pytest.raises(Rejected) as exc:
        parse_sample("edgesight/dev1/front/sample", body, max_bytes=1 << 20)
    assert reason in exc.value.reason


def test_a_good_payload_parses():
    topic, body = sample_payload(2)
    s = parse_sample(topic, payloads.encode(body))
    assert s.payload.label == "three" and s.jpeg.startswith(b"\xff\xd8") and s.payload.top_k[1].label == "eight"


# -- dataset (exactly once on disk) ----------------------------------------------------------------------------
def parsed(seed, **kw):
    topic, body = sample_payload(seed, **kw)
    return parse_sample(topic, payloads.encode(body))


def test_dataset_dedups_by_id_and_image_hash_across_reopen_and_writers(tmp_path):
    root = str(tmp_path / "ds")
    a = Dataset(root, collector="a")
    s1, s2 = parsed(1), parsed(2)
    assert a.add_batch([s1, s2, s1]) == (2, 1)  # the same message twice in one batch
    b = Dataset(root, collector="b")  # another collector on the same folder
    same_image_new_id = parsed(1)  # a replayed frame: new id, same JPEG
    assert b.add_batch([s2, same_image_new_id, parsed(3)]) == (1, 2)
    assert a.add_batch([parsed(3)]) == (0, 1)  # a sees what b appended (catch-up under the lock)
    a.close()
    b.close()
    c = Dataset(root)
    assert len(c) == 3 and c.add_batch([s1]) == (0, 1)
    recs = list(read_manifest(root))
    assert len(recs) == 3 and len({r["id"] for r in recs}) == 3
    for r in recs:
        assert os.path.isfile(os.path.join(root, r["file"])) and r["file"].startswith("three/")
        assert set(r) >= {"device", "camera", "model", "reason", "label", "score", "top_k", "captured", "received"}
    assert not [f for _, _, fs in os.walk(root) for f in fs if f.endswith(".tmp")]


def test_a_torn_manifest_line_is_cut_off(tmp_path):
    root = str(tmp_path / "ds")
    d = Dataset(root)
    d.add_batch([parsed(1)])
    d.close()
    with open(os.path.join(root, MANIFEST), "ab") as f:
        f.write(b'{"id": "half a li')  # a collector killed mid-append
    d = Dataset(root)
    assert len(d) == 1 and d.add_batch([parsed(2)]) == (1, 0)
    d.close()
    lines = open(os.path.join(root, MANIFEST), "rb").read().splitlines()
    assert len(lines) == 2 and all(json.loads(ln) for ln in lines)


# -- the collector process against mosquitto ---------------------------------------------------------------
def start_collector(dataset, port, *extra):
    return subprocess.Popen([sys.executable, "-m", "edgesight", "collect", str(dataset), "--port", str(port),
                             "--host", "127.0.0.1", "--progress-interval", "0.5", "--json"] + list(extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def stop_collector(proc, timeout=30):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out), err


def wait_for(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def manifest_ids(root):
    return [r["id"] for r in read_manifest(str(root))]


class Publisher(object):
    def __init__(self, port):
        import paho.mqtt.client as mqtt

        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()

    def send(self, topic, body):
        self.c.publish(topic, body, qos=1).wait_for_publish(10)

    def sample(self, seed, **kw):
        topic, body = sample_payload(seed, **kw)
        self.send(topic, payloads.encode(body))
        return body["id"]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


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
    summary, _ = stop_collector(proc)
    assert summary["rejected"] == len(corpus) and summary["stored"] == 1
    files = sorted(os.listdir(str(ds / REJECTED)))
    assert len(files) == len(corpus)
    reasons = [json.load(open(str(ds / REJECTED / f)))["reason"] for f in files]
    for _, _, expected in corpus:
        assert any(expected in r for r in reasons), (expected, reasons)
    rec = json.load(open(str(ds / REJECTED / files[0])))
    assert rec["topic"] == "edgesight/dev1/front/sample" and ("payload" in rec or "payload_base64" in rec)


def test_three_agents_two_collectors_store_every_sample_once_then_export_and_convert(broker, tmp_path):
    ds = tmp_path / "dataset"
    observer = Observer(broker.port, topic="edgesight/+/+/sample")
    collectors = [start_collector(ds, broker.port, "--client-id", "c%d" % i, "--group", "g") for i in (1, 2)]
    time.sleep(1.5)  # both subscribed
    files = [p for p, _ in list_images(VAL)]
    agents = []
    for i in range(3):
        folder, home = tmp_path / ("cam%d" % i), tmp_path / ("agent%d" % i)
        folder.mkdir()
        home.mkdir()
        for k, f in enumerate(files[i::3][:60]):  # 60 different frames per device
            os.symlink(f, str(folder / ("%03d_%s" % (k, os.path.basename(f)))))
        cfg = agent_config(home, broker.port, device_id="dev%d" % i, thresholds={"default": 0.0},
                           samples={"strategies": [{"type": "random", "rate": 1.0}], "max_per_minute": None,
                                    "min_gap": 0, "dedup": {"enabled": False}},
                           cameras=[{"name": "cam", "source": {"type": "folder", "path": str(folder), "fps": 40,
                                                               "loop": False}}])
        agents.append(start_agent(cfg))
    for a in agents:
        out, err = a.communicate(timeout=120)
        assert a.returncode == 0, err[-2000:]
    sent = {}
    for _, p, _ in observer.of("sample"):
        sent.setdefault(p["id"], p)
    assert len(sent) >= 150  # three devices, most of their 60 frames each
    digests = {}
    for p in sent.values():  # the collectors keep one copy of byte-identical images
        digests.setdefault(base64.b64decode(p["image"]["data"]), p["id"])
    expected = set(digests.values())
    assert wait_for(lambda: len(manifest_ids(ds)) >= len(expected), 60)
    time.sleep(1.0)
    summaries = [stop_collector(c)[0] for c in collectors]
    observer.close()
    ids = manifest_ids(ds)
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected
    assert all(s["stored"] > 0 for s in summaries), summaries  # the shared subscription split the load
    assert sum(s["stored"] for s in summaries) == len(expected)
    recs = list(read_manifest(str(ds)))
    assert {r["device"] for r in recs} == {"dev0", "dev1", "dev2"}
    assert all(r["label"] == sent[r["id"]]["label"] and r["reason"] == "random" for r in recs)
    for r in recs:
        assert open(str(ds / r["file"]), "rb").read() == base64.b64decode(sent[r["id"]]["image"]["data"])

    # export for Label Studio: the documented task shape, choices that exist in the labelling interface
    import jsonschema

    out = tmp_path / "ls" / "tasks.json"
    r = run_cli("collect", "export", str(ds), "--format", "labelstudio", "--out", str(out),
                "--labels", os.path.join(EXAMPLE, "labels.txt"), "--json")
    assert r.returncode == 0, r.stderr
    tasks = json.load(open(str(out)))
    schema = json.load(open(os.path.join(os.path.dirname(__file__), "labelstudio_tasks.schema.json")))
    jsonschema.validate(tasks, schema)
    assert len(tasks) == len(expected)
    xml = open(str(tmp_path / "ls" / "label_config.xml")).read()
    import xml.etree.ElementTree as ET

    view = ET.fromstring(xml)
    choices = view.find("Choices")
    allowed = {c.get("value") for c in choices.findall("Choice")}
    for t in tasks:
        res = t["predictions"][0]["result"][0]
        assert res["from_name"] == choices.get("name") and res["to_name"] == view.find("Image").get("name")
        assert res["value"]["choices"][0] in allowed
        assert t["data"]["image"].startswith("/data/local-files/?d=dataset/")
        assert os.path.isfile(str(ds / t["data"]["image"].split("?d=dataset/")[1]))

    # the collected dataset and the folder export both feed `edgesight convert` as they are
    folder = tmp_path / "folder"
    r = run_cli("collect", "export", str(ds), "--format", "folder", "--out", str(folder))
    assert r.returncode == 0, r.stderr
    assert sum(len(fs) for _, _, fs in os.walk(str(folder))) == len(expected)
    pkg = tmp_path / "pkg"
    r = run_cli("convert", os.path.join(EXAMPLE, "package", "model.fp32.onnx"), "--calib", str(folder),
                "--val", str(ds), "--labels", os.path.join(EXAMPLE, "labels.txt"),
                "--preprocess", os.path.join(EXAMPLE, "preprocess.yaml"), "--targets", "onnx-int8-cpu",
                "--out", str(pkg), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["calibration"]["images"] == len(expected)
    assert not report["validation_skipped"]  # manifest.jsonl, .collect.lock, _rejected/ are not images
    assert report["artifacts"][0]["gate"]["passed"] and report["fp32"]["metrics"]["top1"] > 0.9


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


def test_export_refuses_a_folder_that_is_not_a_collected_dataset(tmp_path):
    r = run_cli("collect", "export", str(tmp_path), "--format", "folder", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "manifest.jsonl" in r.stderr
