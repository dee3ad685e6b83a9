"""`edgesight convert` end to end with the real tools (onnxruntime quantization, onnx2tf, LiteRT)."""
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from edgesight.calibration.dataset import ImageFolder
from edgesight.converters import toolchain
from edgesight.converters.qdq_verify import check_tensorrt_qdq
from edgesight.errors import PackageError
from edgesight.runtimes import load_package

from support import EXAMPLE, chromium_binary, require_or_skip, run_cli
from support.onnx_models import tiny_cnn, vector_model

MODEL = os.path.join(EXAMPLE, "package", "model.fp32.onnx")
CALIB = os.path.join(EXAMPLE, "images", "calib")
VAL = os.path.join(EXAMPLE, "images", "val")
COMMON = ["--labels", os.path.join(EXAMPLE, "labels.txt"), "--preprocess", os.path.join(EXAMPLE, "preprocess.yaml")]


def convert(*args):
    return run_cli("convert", *[str(a) for a in args])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    require_or_skip(toolchain.tool_path("tflite") is not None, "the tflite toolchain (edgesight toolchain install "
                                                               "tflite)")
    out = tmp_path_factory.mktemp("conv") / "digits"
    proc = convert(MODEL, "--calib", CALIB, "--val", VAL, "--out", out, "--name", "digits-cnn", "--json", *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out), json.loads(proc.stdout), proc


def test_all_cpu_targets_are_produced(converted):
    out, rep, _ = converted
    assert [a["target"] for a in rep["artifacts"]] == ["onnx-int8-trt", "onnx-int8-cpu", "tflite-int8"]
    pkg = load_package(out)  # schema, files and hashes
    assert [(a.runtime, a.file, a.precision) for a in pkg.manifest.artifacts] == [
        ("onnxruntime", "model.fp32.onnx", "fp32"), ("onnxruntime", "model.int8.onnx", "int8"),
        ("onnxruntime", "model.int8.cpu.onnx", "int8"), ("tflite", "model.int8.tflite", "int8")]
    assert pkg.manifest.artifacts[1].profile == "tensorrt-qdq"
    assert pkg.manifest.validation["passed"] is True


def test_tensorrt_target_skips_cleanly_without_tensorrt(converted):
    _, rep, proc = converted
    assert rep["failed"] == []
    assert any("device builds its own engine" in n and "model.int8.onnx" in n for n in rep["notes"])


def test_int8_accuracy_within_one_point_of_fp32(converted):
    _, rep, _ = converted
    fp32 = rep["fp32"]["metrics"]["top1"]
    assert fp32 >= 0.98
    for a in rep["artifacts"]:
        assert a["metrics"]["top1"] >= fp32 - 0.01, a["target"]
        assert a["gate"]["passed"], a["gate"]


def test_trt_artifact_passes_the_verifier(converted):
    out, _, _ = converted
    assert check_tensorrt_qdq(os.path.join(out, "model.int8.onnx")) == []


def test_tflite_artifact_runs_in_the_tflite_backend_and_agrees(converted):
    out, _, _ = converted
    pkg = load_package(out)
    val = ImageFolder(VAL).load(pkg.preprocess)
    with pkg.open_runtime("onnxruntime") as fp32, pkg.open_runtime("tflite") as int8:
        assert int8.inputs[0].dtype == "float32" and int8.inputs[0].quant is None  # default: float I/O
        a = next(iter(fp32.infer(val.tensors).values())).argmax(1)
        b = next(iter(int8.infer(val.tensors).values())).argmax(1)
    assert (a == b).mean() >= 0.98
    art = [x for x in pkg.manifest.artifacts if x.runtime == "tflite"][0]
    assert art.io == {"input": {"dtype": "float32"}, "output": {"dtype": "float32"}}
    types = tflite_op_input_types(os.path.join(out, art.file))
    assert types.pop("QUANTIZE") == {"float32"} and types.pop("DEQUANTIZE") == {"int8"}  # the two ends
    assert "CONV_2D" in types and "FULLY_CONNECTED" in types
    assert all(t == {"int8"} for t in types.values()), types  # every op between them is int8


def tflite_op_input_types(path):
    """{op name: numpy dtype names of its first input} for every op of a .tflite model (XNNPACK off)."""
    from edgesight.runtimes.tflite_backend import import_interpreter

    Interpreter, _ = import_interpreter()
    interp = Interpreter(model_path=path)
    types = {}
    for op in interp._get_ops_details():
        types.setdefault(op["op_name"], set()).add(op["operand_types"][0].__name__)
    return types


def tflite_only(out, *options):
    """The example converted to the tflite-int8 target alone: (the package, its TFLite artifact, the report)."""
    require_or_skip(toolchain.tool_path("tflite") is not None, "the tflite toolchain")
    proc = convert(MODEL, "--calib", CALIB, "--val", VAL, "--out", out, "--targets", "tflite-int8", "--calib-count",
                   "100", "--json", *(list(options) + COMMON))
    assert proc.returncode == 0, proc.stderr[-3000:]
    pkg = load_package(str(out))
    return pkg, [x for x in pkg.manifest.artifacts if x.runtime == "tflite"][0], json.loads(proc.stdout)


def test_tflite_int8_io_records_quant_params_and_agrees(tmp_path):
    out = tmp_path / "int8io"
    pkg, art, _ = tflite_only(out, "--tflite-io", "int8")
    assert art.io["input"]["dtype"] == "int8" and art.io["input"]["scale"] > 0  # quant params recorded
    assert art.io["output"]["dtype"] == "int8" and "zero_point" in art.io["output"]
    assert "QUANTIZE" not in tflite_op_input_types(os.path.join(str(out), art.file))
    val = ImageFolder(VAL).load(pkg.preprocess)
    with pkg.open_runtime("onnxruntime") as fp32, pkg.open_runtime("tflite") as int8:
        assert int8.inputs[0].dtype == "int8" and int8.inputs[0].quant.scale == art.io["input"]["scale"]
        a = next(iter(fp32.infer(val.tensors).values())).argmax(1)
        b = next(iter(int8.infer(val.tensors).values())).argmax(1)  # the backend quantizes in numpy
    assert (a == b).mean() >= 0.98


def test_a_tflite_that_misses_the_fidelity_target_goes_dynamic_range_where_that_meets_it(tmp_path, monkeypatch):
    """Full-integer INT8 reaches about 0.9999 on the example, dynamic-range about 1.0: a target between them ships
    the dynamic-range file (int8 weights, float activations), and a device without LiteRT does not choose it."""
    out = tmp_path / "dyn"
    pkg, art, rep = tflite_only(out, "--min-cosine", "0.99999")
    assert art.profile == "dynamic-range" and art.precision == "int8" and art.passed_validation
    steps = [a for a in rep["artifacts"] if a["target"] == "tflite-int8"][0]["steps"]
    full, dyn = (float(x) for x in re.findall(r"(?:full-integer: logit cosine|dynamic-range:) ([0-9.]+)",
                                                steps["fidelity"]))
    assert full < 0.99999 <= dyn and steps["fidelity"].endswith("shipped") and "dynamic-range" in steps["onnx2tf"]
    types = tflite_op_input_types(os.path.join(str(out), art.file))
    assert "QUANTIZE" not in types and types["CONV_2D"] == {"float32"}  # float activations, int8 weights
    with pkg.open_runtime("tflite") as rt:  # LiteRT runs it
        assert pkg.artifact_for("tflite").artifact.file == art.file and rt.inputs[0].dtype == "float32"
    from edgesight.runtimes import package as package_module

    monkeypatch.setattr(package_module, "runs_dynamic_range_tflite", lambda: False)  # tflite-runtime 2.14 only
    with pytest.raises(PackageError, match="dynamic-range TFLite needs LiteRT"):
        pkg.artifact_for("tflite")
    assert pkg.artifact_for("auto", machine="aarch64").runtime == "onnxruntime"  # the FP32 ONNX instead


def test_report_json_content(converted):
    out, _, _ = converted
    with open(os.path.join(out, "report.json")) as f:
        rep = json.load(f)
    fp32 = rep["fp32"]["metrics"]
    assert len(fp32["confusion"]) == 10 and sum(map(sum, fp32["confusion"])) == 300
    assert len(fp32["per_class"]) == 10 and fp32["per_class"][0]["label"] == "zero"
    for a in rep["artifacts"]:
        assert a["size_bytes"] < rep["fp32"]["size_bytes"] * 0.35
        assert a["latency_ms"] > 0 and 0.99 < a["metrics"]["cosine_mean"] <= 1.0 + 1e-6
    assert rep["calibration"]["images"] == 300 and rep["calibration"]["method"] == "minmax"


def test_html_report_renders_with_plots(converted, tmp_path):
    out, _, _ = converted
    chromium = chromium_binary()
    require_or_skip(chromium is not None, "chromium (apt-get install chromium)")
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--user-data-dir=%s" % (tmp_path / "profile"), "--dump-dom",
           "file://" + os.path.abspath(os.path.join(out, "report.html"))]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    dom = proc.stdout
    assert proc.returncode == 0 and "<table" in dom, proc.stderr[-2000:]
    assert dom.count('class="plot confusion"') == 4  # FP32 + 3 INT8 artifacts
    assert dom.count('class="plot recall"') == 1 and dom.count('class="plot histogram"') == 1
    assert dom.count('class="cell"') >= 4 * 100 and dom.count('class="bar"') > 10
    shot = tmp_path / "report.png"
    subprocess.run(cmd[:-2] + ["--screenshot=%s" % shot, "--window-size=1400,1800", cmd[-1]],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20000  # a rendered page, not a blank one


def test_gate_fails_with_an_impossible_threshold(tmp_path):
    out = tmp_path / "gated"
    proc = convert(MODEL, "--calib", CALIB, "--val", VAL, "--out", out, "--targets", "onnx-int8-cpu",
                   "--min-agreement", "1.01", "--calib-count", "50", *COMMON)
    assert proc.returncode == 8, proc.stderr
    assert "gate failed" in proc.stderr and "Traceback" not in proc.stderr
    with open(str(out / "edgesight.yaml")) as f:
        manifest = yaml.safe_load(f)
    int8 = manifest["artifacts"][1]
    assert int8["validation"]["passed"] is False and "agreement" in int8["validation"]["reasons"][0]
    assert manifest["validation"]["passed"] is False


def test_unsupported_op_names_op_and_node_and_other_targets_are_produced(tmp_path):
    require_or_skip(toolchain.tool_path("tflite") is not None, "the tflite toolchain")
    model = tiny_cnn(tmp_path / "odd.onnx", extra_op="CastLike")
    out = tmp_path / "odd"
    proc = convert(model, "--calib", CALIB, "--out", out, "--targets", "onnx-int8-cpu,tflite-int8",
                   "--calib-count", "20", "--min-agreement", "0", "--max-accuracy-drop", "100", *COMMON)
    assert proc.returncode == 7, proc.stderr
    assert "CastLike" in proc.stdout and "'odd_castlike'" in proc.stdout
    assert (out / "model.int8.cpu.onnx").exists() and not (out / "model.int8.tflite").exists()
    assert [a.file for a in load_package(str(out)).manifest.artifacts] == ["model.fp32.onnx", "model.int8.cpu.onnx"]


def test_missing_toolchain_says_how_to_install(tmp_path):
    env_dir = tmp_path / "no-toolchains"
    proc = subprocess.run(
        [sys.executable, "-m", "edgesight", "convert", MODEL, "--calib", CALIB, "--out", str(tmp_path / "p"),
         "--targets", "tflite-int8", "--calib-count", "10"] + COMMON,
        env=dict(os.environ, EDGESIGHT_TOOLCHAINS=str(env_dir)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=300)
    assert proc.returncode == 7
    assert "edgesight toolchain install tflite" in proc.stdout


# -- bad input: each a clear message, non-zero exit, no traceback ---------------------------------------------
def bad(proc, *needles):
    assert proc.returncode not in (0, 1), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_not_an_onnx_file(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_text("hello")
    bad(convert(f, "--calib", CALIB, "--out", tmp_path / "p"), "model.onnx", "not a readable ONNX model")


def test_several_inputs(tmp_path):
    m = tiny_cnn(tmp_path / "two.onnx", two_inputs=True)
    bad(convert(m, "--calib", CALIB, "--out", tmp_path / "p"), "two.onnx", "exactly one input", "x2")


def test_non_image_input(tmp_path):
    m = vector_model(tmp_path / "vec.onnx")
    bad(convert(m, "--calib", CALIB, "--out", tmp_path / "p"), "vec.onnx", "4-D float32 image tensor")


def test_dynamic_spatial_dims_need_a_size(tmp_path):
    m = tiny_cnn(tmp_path / "dyn.onnx", dynamic_hw=True)
    bad(convert(m, "--calib", CALIB, "--out", tmp_path / "p"), "dynamic spatial dimensions", "--size")


def test_labels_count_mismatch(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    bad(convert(MODEL, "--calib", CALIB, "--out", tmp_path / "p", "--labels", labels),
        "outputs 10 scores but 2 labels", "field 'labels'")


def test_empty_calibration_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    bad(convert(MODEL, "--calib", tmp_path / "empty", "--out", tmp_path / "p", *COMMON), "empty", "no images found")


def test_all_calibration_images_corrupt(tmp_path):
    d = tmp_path / "corrupt"
    d.mkdir()
    for i in range(3):
        (d / ("x%d.png" % i)).write_bytes(b"\x89PNG broken")
    bad(convert(MODEL, "--calib", d, "--out", tmp_path / "p", "--targets", "onnx-int8-cpu", *COMMON),
        "none of the 3 images could be read")


def test_fewer_images_than_requested_warns_and_goes_on(tmp_path):
    proc = convert(MODEL, "--calib", os.path.join(CALIB, "three"), "--val", VAL, "--out", tmp_path / "p",
                   "--targets", "onnx-int8-cpu", "--calib-count", "500", "--max-accuracy-drop", "100",
                   "--min-agreement", "0", *COMMON)
    assert proc.returncode == 0, proc.stderr
    assert "fewer than the 500 requested" in proc.stderr
