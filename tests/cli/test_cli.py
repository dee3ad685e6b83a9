"""The real ``edgesight`` command, run as a subprocess the way users run it."""
import json
import os

import yaml

from edgesight import __version__
from edgesight.runtimes.package import sha256_file

from support import EXAMPLE, run_cli


def assert_clean_error(proc, *needles):
    """A user error: non-zero exit, one paragraph on stderr, no traceback."""
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert err.startswith("edgesight: error:"), err
    assert "\n\n" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == "edgesight %s" % __version__


def test_info_example(example_package):
    proc = run_cli("info", example_package)
    assert proc.returncode == 0, proc.stderr
    assert "digits-cnn 1.0.0" in proc.stdout
    assert "hashes verified" in proc.stdout
    assert "model.fp32.tflite" in proc.stdout and "model.fp32.onnx" in proc.stdout
    assert "[?x3x32x32] float32 nchw" in proc.stdout  # the ONNX input, read from the real model


def test_info_json(example_package):
    proc = run_cli("info", example_package, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["manifest"]["schema"] == "edgesight.package/1"
    assert info["manifest"]["labels"][3] == "three"
    assert [c["status"] for c in info["checks"]] == ["ok", "ok"]
    assert info["artifacts"][0]["size_bytes"] == os.path.getsize(os.path.join(example_package, "model.fp32.onnx"))


def test_classify_every_backend(example_package):
    proc = run_cli("classify", example_package, os.path.join(EXAMPLE, "images", "val"), "--runtime", "all", "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert [r["runtime"] for r in results] == ["onnxruntime", "tflite"]
    for r in results:
        assert r["images"] == r["labelled"] == 300
        assert r["accuracy"] >= 0.98
    assert results[1]["agreement_with_first"] == 1.0


def test_classify_one_image_prints_its_label(example_package):
    img = os.path.join(EXAMPLE, "images", "val", "seven")
    first = sorted(os.listdir(img))[0]
    proc = run_cli("classify", example_package, os.path.join(img, first), "--runtime", "onnxruntime")
    assert proc.returncode == 0, proc.stderr
    assert "-> seven" in proc.stdout


def test_nonexistent_path():
    assert_clean_error(run_cli("info", "/no/such/package"), "/no/such/package", "no such package")


def test_yaml_syntax_error(package_copy):
    with open(os.path.join(package_copy, "edgesight.yaml"), "a") as f:
        f.write("labels: [zero, one\n")
    assert_clean_error(run_cli("info", package_copy), "edgesight.yaml", "YAML syntax error at line")


def _replace_artifact(pkg_dir, name, data):
    path = os.path.join(pkg_dir, name)
    with open(path, "wb") as f:
        f.write(data)
    manifest = os.path.join(pkg_dir, "edgesight.yaml")
    with open(manifest) as f:
        m = yaml.safe_load(f)
    for ref in [m["source"]] + m["artifacts"]:
        if ref["file"] == name:
            ref["sha256"] = sha256_file(path)  # consistent hash: the loader must notice the content itself
    with open(manifest, "w") as f:
        yaml.safe_dump(m, f, sort_keys=False)


def test_truncated_onnx(package_copy):
    with open(os.path.join(package_copy, "model.fp32.onnx"), "rb") as f:
        head = f.read(20000)
    _replace_artifact(package_copy, "model.fp32.onnx", head)
    assert_clean_error(run_cli("info", package_copy), "model.fp32.onnx", "onnxruntime cannot load this model")


def test_truncated_onnx_on_create(tmp_path):
    cut = tmp_path / "cut.onnx"
    with open(os.path.join(EXAMPLE, "package", "model.fp32.onnx"), "rb") as f:
        cut.write_bytes(f.read()[:20000])
    proc = run_cli("package", "create", cut, "--labels", os.path.join(EXAMPLE, "labels.txt"),
                   "--preprocess", os.path.join(EXAMPLE, "preprocess.yaml"), "--out", tmp_path / "p")
    assert_clean_error(proc, "cut.onnx", "not a readable ONNX model")


def test_tflite_that_is_not_a_flatbuffer(package_copy):
    _replace_artifact(package_copy, "model.fp32.tflite", b"PK\x03\x04 this is a zip, not a flatbuffer" * 100)
    assert_clean_error(run_cli("info", package_copy), "model.fp32.tflite", "not a TFLite model")


def test_wrong_hash_is_reported_with_field(package_copy):
    with open(os.path.join(package_copy, "model.fp32.onnx"), "ab") as f:
        f.write(b"x")
    assert_clean_error(run_cli("info", package_copy), "source.sha256", "changed or corrupted")


def test_package_create_then_info(tmp_path):
    out = tmp_path / "pkg"
    proc = run_cli("package", "create", os.path.join(EXAMPLE, "package", "model.fp32.onnx"),
                   "--labels", os.path.join(EXAMPLE, "labels.txt"),
                   "--preprocess", os.path.join(EXAMPLE, "preprocess.yaml"),
                   "--tflite", os.path.join(EXAMPLE, "package", "model.fp32.tflite"),
                   "--out", out, "--name", "digits-copy")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(run_cli("info", out, "--json").stdout)
    assert info["manifest"]["name"] == "digits-copy"
    assert [c["status"] for c in info["checks"]] == ["ok", "ok"]


def test_package_create_label_mismatch(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    proc = run_cli("package", "create", os.path.join(EXAMPLE, "package", "model.fp32.onnx"), "--labels", labels,
                   "--preprocess", os.path.join(EXAMPLE, "preprocess.yaml"), "--out", tmp_path / "p")
    assert_clean_error(proc, "field 'labels'", "outputs 10 scores but 3 labels")


def test_bad_preprocess_file_names_the_field(tmp_path):
    pre = tmp_path / "pre.yaml"
    pre.write_text("size: [32, 32]\nresize: squash\n")
    proc = run_cli("package", "create", os.path.join(EXAMPLE, "package", "model.fp32.onnx"),
                   "--labels", os.path.join(EXAMPLE, "labels.txt"), "--preprocess", pre, "--out", tmp_path / "p")
    assert_clean_error(proc, "pre.yaml", "field 'resize'")


def test_unreadable_image(example_package, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert_clean_error(run_cli("classify", example_package, bad), "broken.png", "cannot read image")


def test_no_command_prints_usage():
    proc = run_cli()
    assert proc.returncode == 2
    assert "usage: edgesight" in proc.stderr


def test_a_metrics_port_in_use_is_a_config_error_before_anything_starts(tmp_path):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(yaml.safe_dump({
            "device_id": "dev1", "package": os.path.join(EXAMPLE, "package"),
            "cameras": [{"name": "front", "source": {"type": "folder",
                                                     "path": os.path.join(EXAMPLE, "images", "val")}}],
            "mqtt": {"host": "127.0.0.1", "port": 1}, "outbox": {"path": str(tmp_path / "o.db")},
            "metrics": {"enabled": True, "port": busy.getsockname()[1]}}))
        proc = run_cli("agent", "--config", cfg, "--drain-timeout", "0")
    finally:
        busy.close()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "edgesight: error: field 'metrics.port'" in proc.stderr and "choose another" in proc.stderr
