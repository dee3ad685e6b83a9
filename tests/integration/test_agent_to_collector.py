"""The fleet loop end to end: three real agents, two collectors in one shared subscription, one dataset, then export
and convert on it."""
import base64
import hashlib
import json
import os
import time

from edgesight.calibration.images import list_images
from edgesight.fleet.store import read_manifest

from support import EXAMPLE, SUPPORT, run_cli
from support.fleet import VAL, manifest_ids, start_collector, stop_collector, wait_for
from support.mqtt import Collector as Observer, agent_config, start_agent


def run_three_agents(tmp_path, port, frames):
    """Three agent processes, ``frames`` different frames each, every frame sent as a sample; waits for them."""
    files = [p for p, _ in list_images(VAL)]
    agents = []
    for i in range(3):
        folder, home = tmp_path / ("cam%d" % i), tmp_path / ("agent%d" % i)
        folder.mkdir()
        home.mkdir()
        for k, f in enumerate(files[i::3][:frames]):
            os.symlink(f, str(folder / ("%03d_%s" % (k, os.path.basename(f)))))
        cfg = agent_config(home, port, device_id="dev%d" % i, thresholds={"default": 0.0},
                           samples={"strategies": [{"type": "random", "rate": 1.0}], "max_per_minute": None,
                                    "min_gap": 0, "dedup": {"enabled": False}},
                           cameras=[{"name": "cam", "source": {"type": "folder", "path": str(folder), "fps": 40,
                                                               "loop": False}}])
        agents.append(start_agent(cfg))
    for a in agents:
        _, err = a.communicate(timeout=120)
        assert a.returncode == 0, err[-2000:]


def test_three_agents_two_collectors_store_every_sample_once_then_export_and_convert(broker, tmp_path):
    ds = tmp_path / "dataset"
    observer = Observer(broker.port, topic="edgesight/+/+/sample")
    collectors = [start_collector(ds, broker.port, "--client-id", "c%d" % i, "--group", "g") for i in (1, 2)]
    time.sleep(1.5)  # both subscribed
    run_three_agents(tmp_path, broker.port, 60)  # 60 different frames per device
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
    schema = json.load(open(os.path.join(SUPPORT, "labelstudio_tasks.schema.json")))
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


def test_three_agents_two_collectors_write_one_s3_bucket_exactly_once(broker, tmp_path, monkeypatch):
    """The scaled-out layout: collector processes on "different hosts" (nothing shared but the broker and the bucket)
    in one shared subscription, writing one S3 dataset; then the S3 dataset exported for Label Studio."""
    import importlib.util

    from support import require_or_skip

    for module in ("boto3", "moto"):
        require_or_skip(importlib.util.find_spec(module) is not None, module)
    from support.s3 import CREDENTIALS, S3Server

    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    s3 = S3Server().start()
    try:
        s3.bucket("fleet")
        observer = Observer(broker.port, topic="edgesight/+/+/sample")
        collectors = [start_collector("s3://fleet/samples", broker.port, "--client-id", "c%d" % i, "--group", "g",
                                      "--s3-endpoint", s3.url, env=CREDENTIALS) for i in (1, 2)]
        time.sleep(2.0)
        run_three_agents(tmp_path, broker.port, 50)
        sent = {}
        for _, p, _ in observer.of("sample"):
            sent.setdefault(p["id"], p)
        digests = {}
        for p in sent.values():
            digests.setdefault(base64.b64decode(p["image"]["data"]), p["id"])
        assert len(sent) >= 120
        assert wait_for(lambda: len(s3.keys("fleet", "samples/samples/")) >= len(digests), 60)
        time.sleep(1.0)
        summaries = [stop_collector(c)[0] for c in collectors]
        observer.close()
        recs = [json.loads(s3.get("fleet", k)) for k in s3.keys("fleet", "samples/samples/")]
        assert sorted(r["sha256"] for r in recs) == sorted(hashlib.sha256(d).hexdigest() for d in digests)
        assert all(s["stored"] > 0 for s in summaries), summaries  # both collectors took part
        assert sum(s["stored"] for s in summaries) == len(recs)
        for r in recs:
            assert s3.get("fleet", "samples/" + r["file"]) == base64.b64decode(sent[r["id"]]["image"]["data"])
        out = tmp_path / "ls" / "tasks.json"
        r = run_cli("collect", "export", "s3://fleet/samples", "--s3-endpoint", s3.url, "--format", "labelstudio",
                    "--out", str(out), "--labels", os.path.join(EXAMPLE, "labels.txt"), env=CREDENTIALS)
        assert r.returncode == 0, r.stderr
        import jsonschema

        tasks = json.load(open(str(out)))
        jsonschema.validate(tasks, json.load(open(os.path.join(SUPPORT, "labelstudio_tasks.schema.json"))))
        assert len(tasks) == len(recs) and all(t["data"]["image"].startswith("s3://fleet/samples/images/")
                                               for t in tasks)
    finally:
        s3.stop()
