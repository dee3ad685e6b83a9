"""Helpers for the fleet tests: v1 sample payloads built with the contract, a corpus of bad ones, the real
`edgesight collect` in a subprocess, and a plain MQTT publisher."""
import base64
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from edgesight.contract import payloads
from edgesight.fleet.store import read_manifest

from . import EXAMPLE

VAL = os.path.join(EXAMPLE, "images", "val")
MODEL = {"name": "digits-cnn", "version": "1.0.0", "sha256": "0123456789ab"}


def jpeg(seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, "JPEG", quality=80)
    return out.getvalue()


def sample_payload(seed, device="dev1", camera="front", label="three", region=None):
    """(topic, payload) of a sample; with ``region``, a region's sample: its box and the whole frame as context."""
    data = jpeg(seed)
    extra = {} if region is None else {"region": region, "box": (4, 3, 40, 30),
                                       "context": (jpeg(seed + 10000), 40, 30)}
    body = payloads.sample(device, camera, MODEL, "low_confidence", label, 0.42, 0.8,
                           [{"label": label, "score": 0.42}, {"label": "eight", "score": 0.3}], time.time(), data,
                           40, 30, None, **extra).model_dump(mode="json")
    return "/".join(("edgesight", device, camera) + ((region,) if region else ()) + ("sample",)), body


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
        ("nested 5000 deep", b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
        ("NaN threshold", changed(threshold=float("nan")), "not JSON"),
        ("huge exponent score", changed(score=1e308 * 10), "not JSON"),  # json writes Infinity
        ("version true", changed(v=True), "schema version True"),
        ("300-digit ts", changed(ts="2026-11-22T08:34:54." + "9" * 300 + "Z"), "ts"),
        ("60000x60000 JPEG header", changed(image=dict(img, width=16384, height=16384,
                                                       data=base64.b64encode(bomb_header()).decode())),
         "too large"),
        ("label of 300 characters", changed(label="x" * 300), "label"),
        ("21 top_k", changed(top_k=[{"label": "a", "score": 0.1}] * 21), "top_k"),
        ("a region's sample on the camera's topic", changed(region="door", box=[0, 0, 40, 30]), "does not match"),
        ("a box without a region", changed(box=[0, 0, 40, 30]), "belong to a region's sample"),
        ("a context without a region", changed(context=img), "belong to a region's sample"),
        ("a region named ../x", changed(region="../x", box=[0, 0, 4, 4]), "region"),
        ("a box of 3 numbers", changed(box=[1, 2, 3]), "box"),
        ("a box past 100000 px", changed(box=[0, 0, 200000, 4]), "box"),
    ]


def bomb_header() -> bytes:
    """A real JPEG whose frame header (SOF0) says 60000x60000: Pillow's decompression-bomb check fires on open."""
    data = bytearray(jpeg(5))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = (60000).to_bytes(2, "big") * 2  # height, width
    return bytes(data)


RUNNING = []  # every collector a test started; reap() (an autouse fixture in conftest) stops what a failure left


def start_collector(dataset, port, *extra, env=None):
    proc = subprocess.Popen([sys.executable, "-m", "edgesight", "collect", str(dataset), "--port", str(port),
                             "--host", "127.0.0.1", "--progress-interval", "0.5", "--json"] + list(extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            env=dict(os.environ, **(env or {})))
    RUNNING.append(proc)
    return proc


def reap():
    """Kill every collector still running: a test that fails between start and stop must not leave one behind."""
    while RUNNING:
        proc = RUNNING.pop()
        if proc.poll() is None:
            proc.kill()
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass


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
