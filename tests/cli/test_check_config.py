"""`edgesight agent --check-config` through the real CLI: every bad config ends in exit 2 with the field and its
line and no traceback; relative paths are relative to the config file's folder, wherever the agent starts."""
import os
import shutil

import pytest
import yaml

from support import EXAMPLE_PACKAGE, ROOT, run_cli

BASE = """device_id: dev1
package: %s
cameras:
  - name: front
    source: {type: folder, path: /tmp}
""" % EXAMPLE_PACKAGE


def check(tmp_path, text, name="agent.yaml"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return run_cli("agent", "--config", p, "--check-config")


@pytest.mark.parametrize("text, field, line, needle", [
    (BASE + "thresholds:\n  per_class: {sevn: 0.9}\n", "thresholds.per_class.sevn", 7, "not among the labels"),
    (BASE + "thresholds:\n  per_class: {eight: 7}\n", "thresholds.per_class.eight", 7, "less than or equal to 1"),
    (BASE + "thresholds:\n  default: .nan\n", "thresholds.default", 7, "finite"),
    (BASE + "device_id: dev2\n", "device_id", 6, "duplicate key 'device_id'"),
    (BASE + "runtime_options: {threads: many}\n", "runtime_options.threads", 6, "valid integer"),
    (BASE + "runtime: onnxruntime\nruntime_options: {threads: many}\n", "runtime_options.threads", 7,
     "valid integer"),
    (BASE + "runtime_options: {thread: 2}\n", "runtime_options", 6, "no runtime has the option"),
    (BASE + "runtime_options: {tflite: {threads: 0}}\n", "runtime_options.tflite.threads", 6, "greater than"),
    (BASE + "mqtt:\n  topic_prefix: 'edge/#'\n", "mqtt.topic_prefix", 7, "wildcards"),
    (BASE.replace("name: front", "name: 'front/+'"), "cameras[0].name", 4, "pattern"),
    (BASE + "mqtt: &m {host: a}\nmetrics: *m\n", "mqtt", 6, "anchors"),
])
def test_bad_configs_exit_2_naming_field_and_line(tmp_path, text, field, line, needle):
    r = check(tmp_path, text)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "field '%s'" % field in r.stderr and "line %d" % line in r.stderr and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("data, needle", [
    (bytes(range(256)) * 4, "not UTF-8"),
    (b"\x00\x01\x02binary", "NUL byte"),
    ("package: x\n\x07cameras: []\n".encode(), "control character"),
    (b"[" * 1000, "nested deeper"),
    ("a: &a [x, x]\nb: &b [*a, *a]\n".encode() * 1, "anchors"),
    (b"- just\n- a\n- list\n", "expected a YAML mapping"),
    (b"", "empty file"),
])
def test_garbage_configs_exit_2_with_one_paragraph(tmp_path, data, needle):
    r = check(tmp_path, data)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert str(tmp_path / "agent.yaml") in r.stderr  # the file is named


def test_a_config_that_is_a_directory_or_missing(tmp_path):
    r = run_cli("agent", "--config", tmp_path, "--check-config")
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("agent", "--config", tmp_path / "nope.yaml", "--check-config")
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_per_class_labels_are_checked_against_the_package_when_it_is_there(tmp_path):
    ok = check(tmp_path, BASE + "thresholds:\n  per_class: {eight: 0.95}\n")
    assert ok.returncode == 0 and "valid" in ok.stdout, ok.stderr
    later = check(tmp_path, BASE.replace(EXAMPLE_PACKAGE, str(tmp_path / "not-yet")) +
                  "thresholds:\n  per_class: {sevn: 0.9}\n")
    assert later.returncode == 0 and "not checked" in later.stdout, later.stderr


def test_runtime_options_per_runtime_and_flat(tmp_path):
    from edgesight.agent.config import load_config

    p = tmp_path / "a.yaml"
    p.write_text(BASE + "runtime_options: {onnxruntime: {threads: 2, spinning: false}, tflite: {threads: 3}}\n")
    cfg = load_config(str(p))
    assert cfg.runtime_options.for_runtime("onnxruntime").threads == 2
    assert cfg.runtime_options.for_runtime("tflite").threads == 3 and cfg.runtime_options.tensorrt is None
    p.write_text(BASE + "runtime_options: {threads: 2}\n")  # auto: every runtime that has `threads`
    cfg = load_config(str(p))
    assert cfg.runtime_options.onnxruntime.threads == cfg.runtime_options.tflite.threads == 2
    assert cfg.runtime_options.tensorrt is None  # TensorRT has no threads option: it gets its defaults
    # the agent's ONNX Runtime workers do not spin-wait unless asked to (3x the CPU at a paced camera)
    ort = cfg.runtime_options.for_runtime("onnxruntime")
    assert ort.threads == 2 and ort.spinning is False
    p.write_text(BASE + "runtime_options: {onnxruntime: {spinning: true}}\n")
    assert load_config(str(p)).runtime_options.for_runtime("onnxruntime").spinning is True
    p.write_text(BASE)
    assert load_config(str(p)).runtime_options.for_runtime("onnxruntime").spinning is False


def test_relative_paths_resolve_against_the_config_folder_from_anywhere(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(EXAMPLE_PACKAGE, str(site / "models" / "digits"))
    (site / "frames").mkdir()
    cfg = {"device_id": "dev1", "package": "models/digits",
           "cameras": [{"name": "front", "source": {"type": "folder", "path": "frames"}}],
           "outbox": {"path": "state/outbox.db"}, "thresholds": {"per_class": {"sevn": 0.9}}}
    (site / "agent.yaml").write_text(yaml.safe_dump(cfg))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli("agent", "--config", site / "agent.yaml", "--check-config", cwd=str(elsewhere))
    # the package was found relative to the config (so per_class was checked against its labels)
    assert r.returncode == 2 and "not among the labels of %s" % (site / "models" / "digits") in r.stderr, r.stderr
    from edgesight.agent.config import load_config

    cfg["thresholds"] = {}
    (site / "agent.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_config(str(site / "agent.yaml"))
    assert loaded.package == str(site / "models" / "digits")
    assert loaded.cameras[0].source.path == str(site / "frames") and loaded.outbox.path == str(site / "state" /
                                                                                              "outbox.db")


def test_the_example_config_checks_from_the_repository_and_from_elsewhere(tmp_path):
    example = os.path.join(ROOT, "examples", "agent.yaml")
    for cwd in (ROOT, str(tmp_path)):
        r = run_cli("agent", "--config", example, "--check-config", cwd=cwd)
        assert r.returncode == 0 and os.path.join(ROOT, "examples", "digits", "package") in r.stdout, r.stderr
        assert "2 camera(s), 2 region(s) of interest" in r.stdout  # the counter's two wheels
