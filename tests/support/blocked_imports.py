"""Run by tests/integration/test_architecture.py in a fresh interpreter: block the heavy optional packages named in
$EDGESIGHT_BLOCK, import every edgesight module, then use each feature that needs one of them and report (JSON on
stdout) which error it raised."""
import importlib
import json
import os
import pkgutil
import sys

BLOCKED = tuple(os.environ["EDGESIGHT_BLOCK"].split(","))


class Block(object):
    """A meta path finder that makes the blocked packages (and their sub-modules) fail to import."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("%s is blocked for this test" % name)
        return None


sys.meta_path.insert(0, Block())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]

import edgesight  # noqa: E402

failures, count = {}, 0
for mod in pkgutil.walk_packages(edgesight.__path__, "edgesight."):
    if mod.name.split(".")[1] in ("tests", "bench", "examples", "docs", "systemd", "build") or \
            mod.name.endswith("__main__"):
        continue
    count += 1
    try:
        importlib.import_module(mod.name)
    except Exception as exc:  # what this test is looking for
        failures[mod.name] = "%s: %s" % (type(exc).__name__, exc)


def outcome(fn):
    try:
        fn()
    except Exception as exc:  # the point: which error, naming which extra
        extra = getattr(exc, "extra", "")
        return "%s:%s" % (type(exc).__name__, extra)
    return "no error"


work = sys.argv[1]
model = os.path.join(work, "m.bin")
with open(model, "wb") as f:
    f.write(b"\0" * 64)

from edgesight.runtimes.registry import create_runtime  # noqa: E402

features = {
    "onnxruntime backend": lambda: create_runtime("onnxruntime", model).load(),
    "tflite backend": lambda: create_runtime("tflite", model).load(),
    "tensorrt backend": lambda: create_runtime("tensorrt", model).load(),
}


def _image():
    from edgesight.calibration.images import load_image

    load_image(model)


def _camera():
    from edgesight.agent.sources import OpenCVSource

    OpenCVSource(0, "v4l2").open()


def _link():
    from edgesight.agent.config import MqttConfig
    from edgesight.agent.mqtt import MqttLink

    MqttLink(MqttConfig(), "dev1")


def _collector():
    from edgesight.fleet.collector import CollectOptions, Collector

    Collector(CollectOptions(dataset=os.path.join(work, "ds")))


def _onnx():
    from edgesight.converters.onnx_model import read_interface

    read_interface(model)


def _temperature():
    from edgesight.converters.confidence import fit_temperature
    import numpy as np

    fit_temperature(np.zeros((4, 2)), np.array([0, 1, 0, 1]))


def _verify():
    from edgesight.contract.signing import open_envelope, trusted

    open_envelope(b'{"kind": "edgesight.signed/1", "key": "k", "sig": "AA==", "body": "e30="}', trusted([model]))


def _s3():
    from edgesight.fleet.stores import open_store

    open_store("s3://bucket/prefix")


features.update({"the S3 store": _s3, "verifying a signed rollout": _verify, "reading an image": _image, "a camera": _camera, "the agent's MQTT link": _link,
                 "the collector": _collector, "reading an ONNX model": _onnx, "fitting a temperature": _temperature})
print(json.dumps({"modules": count, "import_failures": failures,
                  "features": {k: outcome(v) for k, v in features.items()}}))
