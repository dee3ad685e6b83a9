"""The bad-input corpus, through the real CLI: configs, packages, models, images, convert inputs and options. Each
case must end with its documented exit code, one paragraph on stderr naming the file or field, and no traceback.
The MQTT payloads of the corpus go through the real broker in tests/fleet/test_collector.py (samples) and
tests/integration/test_poison.py and tests/agent/test_sampling_mqtt.py (policies); the figure is printed here."""
import json
import os
import shutil

import pytest
import yaml

from support import EXAMPLE, EXAMPLE_PACKAGE, run_cli
from support.onnx_models import tiny_cnn, vector_model

VAL = os.path.join(EXAMPLE, "images", "val")
CALIB = os.path.join(EXAMPLE, "images", "calib")
MODEL = os.path.join(EXAMPLE_PACKAGE, "model.fp32.onnx")
LABELS = os.path.join(EXAMPLE, "labels.txt")
PREP = os.path.join(EXAMPLE, "preprocess.yaml")
CONFIG = {"device_id": "dev1", "package": EXAMPLE_PACKAGE,
          "cameras": [{"name": "front", "source": {"type": "folder", "path": VAL}}]}


def _config(tmp, data=None, text=None, **sections):
    path = tmp / "agent.yaml"
    if text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    else:
        cfg = dict(CONFIG if data is None else data)
        cfg.update(sections)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return ["agent", "--config", path, "--check-config"]


def _keys(tmp):
    """A key pair in tmp/keys (made once per test)."""
    folder = tmp / "keys"
    if not folder.exists():
        r = run_cli("keys", "generate", "--out", folder)
        assert r.returncode == 0, r.stderr
    return str(folder)


def _broken_package(tmp):
    dst = tmp / "broken"
    shutil.copytree(EXAMPLE_PACKAGE, str(dst))
    with open(str(dst / "model.fp32.onnx"), "ab") as f:
        f.write(b"tampered")
    return str(dst)


def _file(tmp, name, data):
    p = tmp / name
    p.write_bytes(data)
    return str(p)


def _package(tmp, edit=None, damage=None):
    dst = tmp / "pkg"
    shutil.copytree(EXAMPLE_PACKAGE, str(dst))
    path = dst / "edgesight.yaml"
    if edit is not None:
        data = yaml.safe_load(path.read_text())
        edit(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    if damage is not None:
        damage(dst, path)
    return ["info", dst]


def _convert(tmp, *args, model=MODEL):
    return ["convert", model if not callable(model) else model(tmp), "--out", tmp / "out", "-q"] + list(args)


def _pem(tmp):
    return _file(tmp, "ca.pem", b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")


CASES = [
    # -- agent configs (exit 2) --------------------------------------------------------------------------------
    ("config binary garbage", lambda t: _config(t, text=bytes(range(256)) * 8), 2, ["not UTF-8", "agent.yaml"]),
    ("config NUL bytes", lambda t: _config(t, text=b"package: x\x00\n"), 2, ["NUL"]),
    ("config control character", lambda t: _config(t, text=b"package: x\x1b[31m\n"), 2, ["control character"]),
    ("config empty", lambda t: _config(t, text=b""), 2, ["empty file"]),
    ("config a list", lambda t: _config(t, text=b"- a\n- b\n"), 2, ["mapping"]),
    ("config nested 1000 deep", lambda t: _config(t, text=b"a: " + b"[" * 1000), 2, ["nested deeper"]),
    ("config alias bomb", lambda t: _config(t, text=b"a: &a [1, 1]\nb: [*a, *a]\n"), 2, ["anchors", "field 'a'"]),
    ("config duplicate device_id", lambda t: _config(t, text=yaml.safe_dump(CONFIG) + "device_id: dev2\n"), 2,
     ["duplicate key 'device_id'", "field 'device_id'"]),
    ("config unknown key", lambda t: _config(t, camras=[]), 2, ["field 'camras'", "unknown field"]),
    ("config per_class not a label", lambda t: _config(t, thresholds={"per_class": {"sevn": 0.9}}), 2,
     ["thresholds.per_class.sevn", "line"]),
    ("config per_class out of range", lambda t: _config(t, thresholds={"per_class": {"eight": 7}}), 2,
     ["thresholds.per_class.eight"]),
    ("config threshold negative", lambda t: _config(t, thresholds={"default": -0.5}), 2, ["thresholds.default"]),
    ("config threshold infinite", lambda t: _config(t, text=yaml.safe_dump(CONFIG) + "thresholds: {default: .inf}\n"),
     2, ["thresholds.default", "finite"]),
    ("config runtime_options threads many", lambda t: _config(t, runtime_options={"threads": "many"}), 2,
     ["runtime_options.threads"]),
    ("config runtime_options unknown", lambda t: _config(t, runtime_options={"fast": True}), 2,
     ["runtime_options", "no runtime has"]),
    ("config runtime_options for tflite", lambda t: _config(t, runtime="tflite", runtime_options={"providers": []}),
     2, ["runtime_options.providers"]),
    ("config runtime unknown", lambda t: _config(t, runtime="cuda"), 2, ["field 'runtime'"]),
    ("config topic_prefix wildcard", lambda t: _config(t, mqtt={"topic_prefix": "edge/#"}), 2,
     ["mqtt.topic_prefix"]),
    ("config topic_prefix $SYS", lambda t: _config(t, mqtt={"topic_prefix": "$SYS/x"}), 2, ["mqtt.topic_prefix"]),
    ("config topic_prefix empty level", lambda t: _config(t, mqtt={"topic_prefix": "a//b"}), 2,
     ["mqtt.topic_prefix"]),
    ("config camera name with /", lambda t: _config(t, cameras=[{"name": "a/b", "source": {"type": "folder",
                                                                                         "path": VAL}}]),
     2, ["cameras[0].name"]),
    ("config duplicate camera names", lambda t: _config(t, cameras=json.loads(json.dumps(CONFIG["cameras"] * 2))), 2,
     ["field 'cameras'", "unique"]),
    ("config source type unknown", lambda t: _config(t, cameras=[{"name": "a", "source": {"type": "webcam"}}]), 2,
     ["cameras[0].source"]),
    ("config url without scheme", lambda t: _config(t, cameras=[{"name": "a", "source": {"type": "url",
                                                                                        "url": "cam.lan"}}]),
     2, ["cameras[0].source", "rtsp://"]),
    ("config fps zero", lambda t: _config(t, cameras=[{"name": "a", "source": {"type": "folder", "path": VAL,
                                                                              "fps": 0}}]), 2,
     ["cameras[0].source.fps"]),
    ("config privacy mask of 2 points", lambda t: _config(t, cameras=[dict(CONFIG["cameras"][0], privacy_masks=[
        [[0, 0], [1, 1]]])]), 2, ["cameras[0]", "3 to 1024 points"]),
    ("config tls ca not PEM", lambda t: _config(t, mqtt={"tls": {"ca_file": _pem(t)}}), 2,
     ["mqtt.tls.ca_file", "PEM"]),
    ("config tls ca missing", lambda t: _config(t, mqtt={"tls": {"ca_file": str(t / "no.pem")}}), 2,
     ["mqtt.tls.ca_file", "no such file"]),
    ("config tls cert without key", lambda t: _config(t, mqtt={"tls": {"cert_file": _pem(t)}}), 2, ["mqtt.tls"]),
    ("config tls cert not PEM", lambda t: _config(t, mqtt={"tls": {"cert_file": _pem(t), "key_file": _pem(t)}}), 2,
     ["mqtt.tls.cert_file"]),
    ("config password_file a directory", lambda t: _config(t, mqtt={"username": "u", "password_file": str(t)}), 2,
     ["mqtt.password_file", "directory"]),
    ("config password_file not UTF-8", lambda t: _config(t, mqtt={"username": "u", "password_file": _file(
        t, "pw", b"\xff\xfe\xfd")}), 2, ["mqtt.password_file", "UTF-8"]),
    ("config password without username", lambda t: _config(t, mqtt={"password_env": "X"}), 2, ["field 'mqtt'"]),
    ("config outbox path a directory", lambda t: _config(t, outbox={"path": str(t)}), 2, ["outbox.path",
                                                                                         "directory"]),
    ("config outbox not SQLite", lambda t: _config(t, outbox={"path": _file(t, "o.db", b"hello" * 100)}), 2,
     ["outbox.path", "not an SQLite"]),
    ("config outbox too small", lambda t: _config(t, outbox={"max_bytes": 1000}), 2, ["outbox.max_bytes"]),
    ("config mqtt port 70000", lambda t: _config(t, mqtt={"port": 70000}), 2, ["mqtt.port"]),
    ("config mqtt protocol 4", lambda t: _config(t, mqtt={"protocol": 4}), 2, ["mqtt.protocol"]),
    ("config log_level loud", lambda t: _config(t, log_level="loud"), 2, ["log_level"]),
    ("config strategy unknown", lambda t: _config(t, samples={"strategies": [{"type": "psychic"}]}), 2,
     ["samples.strategies[0]"]),
    ("config sample max_bytes 1 GB", lambda t: _config(t, samples={"max_bytes": 1 << 30}), 2,
     ["samples.max_bytes"]),
    ("config device_id with a space", lambda t: _config(t, device_id="dev 1"), 2, ["device_id"]),
    ("config over 1 MiB", lambda t: _config(t, text=b"a: " + b"x" * (1 << 21)), 2, ["larger than"]),
    ("config is a directory", lambda t: ["agent", "--config", t, "--check-config"], 2, ["is a directory"]),
    ("config missing", lambda t: ["agent", "--config", t / "none.yaml"], 2, ["cannot read", "none.yaml"]),
    ("config package broken", lambda t: _config(t, package=str(_package(t, edit=lambda d: d.pop("labels"))[1]),
                                                thresholds={"per_class": {"a": 0.5}}), 3, ["field 'labels'"]),
    # -- packages (exit 3) ---------------------------------------------------------------------------------------
    ("package not a directory", lambda t: ["info", MODEL], 3, ["model.fp32.onnx", "directory"]),
    ("package no manifest", lambda t: ["info", t], 3, ["edgesight.yaml"]),
    ("package YAML syntax", lambda t: _package(t, damage=lambda d, p: p.write_text("name: [x\n")), 3,
     ["YAML syntax error at line"]),
    ("package binary manifest", lambda t: _package(t, damage=lambda d, p: p.write_bytes(os.urandom(500))), 3,
     ["edgesight.yaml"]),
    ("package no schema", lambda t: _package(t, edit=lambda d: d.pop("schema")), 3, ["field 'schema'"]),
    ("package schema 9", lambda t: _package(t, edit=lambda d: d.update(schema="edgesight.package/9")), 3,
     ["field 'schema'", "unsupported"]),
    ("package unknown field", lambda t: _package(t, edit=lambda d: d.update(lables=[])), 3, ["field 'lables'"]),
    ("package repeated labels", lambda t: _package(t, edit=lambda d: d["labels"].__setitem__(1, "zero")), 3,
     ["field 'labels'", "repeated"]),
    ("package path outside", lambda t: _package(t, edit=lambda d: d["artifacts"][0].update(file="../x.onnx")), 3,
     ["artifacts[0].file"]),
    ("package symlink outside", lambda t: _package(t, damage=lambda d, p: (
        shutil.copyfile(str(d / "model.fp32.tflite"), str(t / "x.tflite")), os.unlink(str(d / "model.fp32.tflite")),
        os.symlink(str(t / "x.tflite"), str(d / "model.fp32.tflite")))), 3, ["artifacts[1].file", "outside"]),
    ("package missing file", lambda t: _package(t, damage=lambda d, p: os.unlink(str(d / "model.fp32.tflite"))), 3,
     ["artifacts[1].file"]),
    ("package temperature 0", lambda t: _package(t, edit=lambda d: d["artifacts"][0].update(
        calibration={"temperature": 0})), 3, ["artifacts[0].calibration.temperature"]),
    ("package temperature inf", lambda t: _package(t, edit=lambda d: d["artifacts"][0].update(
        calibration={"temperature": float("inf")})), 3, ["artifacts[0].calibration.temperature"]),
    ("package fitted threshold 7", lambda t: _package(t, edit=lambda d: d["artifacts"][0].update(
        calibration={"temperature": 1.2, "thresholds": {"per_class": {"one": 7}}})), 3,
     ["artifacts[0].calibration.thresholds.per_class.one"]),
    ("package fitted unknown label", lambda t: _package(t, edit=lambda d: d["artifacts"][1].update(
        calibration={"temperature": 1.2, "thresholds": {"per_class": {"sevn": 0.9}}})), 3,
     ["artifacts[1].calibration.thresholds.per_class", "sevn"]),
    ("calibrate unlabelled val", lambda t: ["calibrate", _package(t)[1], "--val", os.path.join(
        EXAMPLE, "images", "val", "one")], 2, ["--val", "labelled"]),
    ("calibrate two goals", lambda t: ["calibrate", _package(t)[1], "--val", VAL, "--target-precision", "0.9",
                                       "--target-coverage", "0.5"], 2, ["--target-coverage"]),
    ("package wrong sha256", lambda t: _package(t, edit=lambda d: d["artifacts"][0].update(sha256="0" * 64)), 3,
     ["artifacts[0].sha256"]),
    ("package alias bomb", lambda t: _package(t, damage=lambda d, p: p.write_text(
        p.read_text() + "validation:\n  a: &a [x, x, x, x, x, x, x, x, x]\n  b: [*a, *a, *a, *a, *a, *a, *a, *a]\n")),
     3, ["anchors", "field 'validation.a'"]),
    ("package duplicate key", lambda t: _package(t, damage=lambda d, p: p.write_text(p.read_text() + "name: y\n")),
     3, ["duplicate key 'name'"]),
    ("package per_class non-label", lambda t: _package(t, edit=lambda d: d["thresholds"].update(
        per_class={"cat": 0.5})), 3, ["thresholds"]),
    ("package threshold 2", lambda t: _package(t, edit=lambda d: d["thresholds"].update(default=2)), 3,
     ["thresholds.default"]),
    ("package truncated ONNX", lambda t: _package(t, damage=lambda d, p: (
        (d / "model.fp32.onnx").write_bytes((d / "model.fp32.onnx").read_bytes()[:500]),
        p.write_text(p.read_text().replace(yaml.safe_load(p.read_text())["source"]["sha256"], "0" * 64)))), 3,
     ["sha256"]),
    ("package tflite not a flatbuffer", lambda t: ["info", "--no-verify", _package(t, damage=lambda d, p: (
        d / "model.fp32.tflite").write_bytes(b"garbage" * 100))[1]], 3, ["model.fp32.tflite", "TFL3"]),
    ("package label count mismatch", lambda t: ["info", _package(t, edit=lambda d: d["labels"].append("ten"))[1]],
     3, ["field 'labels'", "11 labels"]),
    # -- models and convert inputs ---------------------------------------------------------------------------
    ("convert not ONNX", lambda t: _convert(t, "--calib", CALIB, model=lambda t: _file(t, "m.onnx", b"no")), 3,
     ["m.onnx"]),
    ("convert vector model", lambda t: _convert(t, "--calib", CALIB, model=lambda t: vector_model(t / "v.onnx")),
     3, ["4-D"]),
    ("convert two inputs", lambda t: _convert(t, "--calib", CALIB, model=lambda t: tiny_cnn(
        t / "two.onnx", two_inputs=True)), 3, ["exactly one input"]),
    ("convert dynamic size", lambda t: _convert(t, "--calib", CALIB, model=lambda t: tiny_cnn(
        t / "d.onnx", dynamic_hw=True)), 2, ["preprocess.size"]),
    ("convert labels count", lambda t: _convert(t, "--calib", CALIB, "--labels", _file(t, "l.txt", b"a\nb\n"),
                                                "--preprocess", PREP), 2, ["labels"]),
    ("convert labels not UTF-8", lambda t: _convert(t, "--calib", CALIB, "--labels", _file(t, "l.txt", b"\xff\xfe"),
                                                    "--preprocess", PREP), 2, ["--labels", "UTF-8"]),
    ("convert labels repeated", lambda t: _convert(t, "--calib", CALIB, "--labels", _file(t, "l.txt", b"a\na\n")),
     2, ["--labels", "repeated"]),
    ("convert empty calibration", lambda t: (os.makedirs(str(t / "empty")), _convert(
        t, "--calib", t / "empty", "--preprocess", PREP))[1], 2, ["empty", "no images"]),
    ("convert corrupt calibration", lambda t: (os.makedirs(str(t / "bad")), [_file(t, "bad/%d.png" % i, b"x" * 99)
                                                                           for i in range(3)],
                                              _convert(t, "--calib", t / "bad", "--preprocess", PREP))[2], 2,
     ["could be read"]),
    ("convert --out an existing file", lambda t: ["convert", MODEL, "--calib", CALIB, "--preprocess", PREP,
                                                  "--out", _file(t, "f.txt", b"x"), "-q"], 2, ["--out", "f.txt"]),
    ("convert --calib-count 0", lambda t: _convert(t, "--calib", CALIB, "--calib-count", "0"), 2,
     ["--calib-count"]),
    ("convert unknown target", lambda t: _convert(t, "--calib", CALIB, "--targets", "coreml", "--preprocess", PREP),
     2, ["targets", "coreml"]),
    ("convert preprocess not YAML", lambda t: _convert(t, "--calib", CALIB, "--preprocess", _file(
        t, "p.yaml", b"size: [32\n")), 2, ["p.yaml", "YAML syntax error"]),
    ("convert preprocess bad field", lambda t: _convert(t, "--calib", CALIB, "--preprocess", _file(
        t, "p.yaml", b"size: [32, 32]\ncolor: purple\n")), 2, ["p.yaml", "field 'color'"]),
    ("convert --mean of two", lambda t: _convert(t, "--calib", CALIB, "--preprocess", PREP, "--mean", "0.1", "0.2"),
     2, ["--mean"]),
    ("convert --threshold 2", lambda t: _convert(t, "--calib", CALIB, "--threshold", "2"), 2, ["--threshold"]),
    ("package create label mismatch", lambda t: ["package", "create", MODEL, "--labels", _file(t, "l.txt", b"a\n"),
                                                 "--preprocess", PREP, "--out", t / "p"], 2, ["labels"]),
    # -- images (exit 4) -------------------------------------------------------------------------------------
    ("classify corrupt image", lambda t: ["classify", EXAMPLE_PACKAGE, _file(t, "x.png", b"\x89PNG" + b"0" * 40)],
     4, ["x.png"]),
    ("classify not an image", lambda t: ["classify", EXAMPLE_PACKAGE, _file(t, "x.jpg", b"hello")], 4, ["x.jpg"]),
    ("classify missing image", lambda t: ["classify", EXAMPLE_PACKAGE, t / "none.png"], 4, ["none.png"]),
    # -- collector options -------------------------------------------------------------------------------------
    ("collect --port 70000", lambda t: ["collect", t / "ds", "--port", "70000"], 2, ["--port"]),
    ("collect password file missing", lambda t: ["collect", t / "ds", "--password-file", t / "pw"], 2,
     ["--password-file"]),
    ("collect topic prefix wildcard", lambda t: ["collect", t / "ds", "--topic-prefix", "edge/+"], 2,
     ["--topic-prefix"]),
    ("collect ca not PEM", lambda t: ["collect", t / "ds", "--ca-file", _pem(t)], 2, ["--ca-file", "PEM"]),
    ("collect export not a dataset", lambda t: ["collect", "export", t, "--format", "folder", "--out", t / "o"], 2,
     ["manifest.jsonl"]),
    ("collect s3 bucket name bad", lambda t: ["collect", "s3://a_b/x", "--s3-endpoint", "http://127.0.0.1:9"], 2,
     ["s3://a_b/x", "BUCKET"]),
    # -- rollout (keys, pack, deploy, the agent's models section) ----------------------------------------------
    ("keys generate over an existing pair", lambda t: ["keys", "generate", "--out", _keys(t)], 2,
     ["already exists"]),
    ("pack key is not a key", lambda t: ["package", "pack", EXAMPLE_PACKAGE, "--out", t / "p.espkg", "--key",
                                         _file(t, "k.key", b"hello")], 2, ["k.key", "--key"]),
    ("pack key is the public half", lambda t: ["package", "pack", EXAMPLE_PACKAGE, "--out", t / "p.espkg",
                                               "--key", os.path.join(_keys(t), "edgesight.pub")], 2, ["--key"]),
    ("pack neither key nor --unsigned", lambda t: ["package", "pack", EXAMPLE_PACKAGE, "--out", t / "p.espkg"], 2,
     ["--key"]),
    ("pack broken package", lambda t: ["package", "pack", _broken_package(t), "--out", t / "p.espkg", "--unsigned"],
     3, ["sha256"]),
    ("deploy not a pack", lambda t: ["deploy", _file(t, "x.espkg", b"not a tar"), "--url", "http://h/x", "--device",
                                     "d1", "--unsigned", "--port", "9"], 3, ["x.espkg", "packed package"]),
    ("deploy no --url", lambda t: ["deploy", _file(t, "x.espkg", b""), "--device", "d1", "--unsigned"], 2,
     ["--url"]),
    ("deploy url not http", lambda t: ["deploy", _file(t, "x.espkg", b""), "--url", "file:///etc/passwd", "--device",
                                       "d1", "--unsigned"], 2, ["--url"]),
    ("deploy device with a wildcard", lambda t: ["deploy", _file(t, "x.espkg", b""), "--url", "http://h/x",
                                                 "--device", "d/+", "--unsigned"], 2, ["--device"]),
    ("agent trusted key not a key", lambda t: _config(t, models={"trusted_keys": [_file(t, "k.pub", b"nope")]}), 2,
     ["k.pub", "models.trusted_keys"]),
    ("agent models unknown key", lambda t: _config(t, models={"keeep": 2}), 2, ["models.keeep"]),
    ("collect export labels not UTF-8", lambda t: ["collect", "export", t, "--format", "labelstudio", "--out",
                                                   t / "o.json", "--labels", _file(t, "l.txt", b"\xff")], 2,
     ["--labels"]),
]


def test_the_corpus_is_big_enough():
    print("bad-input corpus: %d CLI cases here" % len(CASES))
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, argv, code, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, name, argv, code, needles):
    r = run_cli(*argv(tmp_path))
    err = r.stderr
    assert r.returncode == code, (r.returncode, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in r.stdout, err[-3000:]
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("edgesight: error:") or
             ln.startswith("usage:") or "error: argument" in ln]
    assert lines, err
    for needle in needles:
        assert needle in err, (needle, err[-2000:])
