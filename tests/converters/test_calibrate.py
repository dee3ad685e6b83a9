"""`edgesight calibrate` and convert's confidence step through the real CLI on the example's field set (a labelled
set that makes mistakes): temperatures and thresholds fitted on field/val, checked on field/test only."""
import json
import os
import shutil

import pytest
import yaml

from edgesight.runtimes import load_package

from support import EXAMPLE, EXAMPLE_PACKAGE, run_cli

FIELD = os.path.join(EXAMPLE, "images", "field")
VAL, TEST = os.path.join(FIELD, "val"), os.path.join(FIELD, "test")
SUPPORT = 30  # a class with at least this many accepted test images is held to the target


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("cal") / "pkg")
    shutil.copytree(EXAMPLE_PACKAGE, dst)
    proc = run_cli("calibrate", dst, "--val", VAL, "--test", TEST, "--target-precision", "0.98", "--json", "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dst, json.loads(proc.stdout)


def test_field_set_is_clearly_harder_than_the_clean_images(calibrated):
    _, rep = calibrated
    for f, e in rep["confidence"]["artifacts"].items():
        assert 0.6 < e["test"]["top1"] < 0.95, (f, e["test"]["top1"])  # clean validation: 100%
        assert e["fit"]["ece_before"] > 0.02


def test_calibration_lowers_ece_to_the_target_on_the_test_split(calibrated):
    _, rep = calibrated
    assert set(rep["confidence"]["artifacts"]) == {"model.fp32.onnx", "model.fp32.tflite"}
    for f, e in rep["confidence"]["artifacts"].items():
        t = e["test"]
        assert t["ece_after"] <= 0.03 and t["ece_after"] < t["ece_before"], (f, t["ece_before"], t["ece_after"])
        assert e["fit"]["temperature"] > 1.0  # the example is over-confident on field images


def test_accepted_results_meet_the_precision_target_on_the_test_split(calibrated):
    _, rep = calibrated
    for f, e in rep["confidence"]["artifacts"].items():
        per = e["test"]["selective"]["per_class"]
        held = [c for c, v in per.items() if v["accepted"] >= SUPPORT]
        assert len(held) >= 3, per  # the goal is met for real classes, not vacuously
        for c in held:
            assert per[c]["precision"] >= 0.98, (f, c, per[c])
        for c in e["fit"]["unmet"]:
            assert per[c]["accepted"] == 0 and per[c]["threshold"] == 1.0
        assert 0.1 < e["test"]["selective"]["coverage"] < 1.0


def test_the_manifest_carries_each_artifacts_calibration_and_old_schema_reads(calibrated):
    dst, rep = calibrated
    with open(os.path.join(dst, "edgesight.yaml")) as f:
        raw = yaml.safe_load(f)
    assert raw["schema"] == "edgesight.package/2"
    pkg = load_package(dst)
    for a in pkg.manifest.artifacts:
        fit = rep["confidence"]["artifacts"][a.file]["fit"]
        assert a.calibration.temperature == pytest.approx(fit["temperature"], rel=1e-5)
        assert a.calibration.thresholds.per_class.keys() == set(pkg.labels)
        assert a.calibration.fitted_on["unmet"] == fit["unmet"]
    html = open(os.path.join(dst, "calibration.html")).read()
    assert html.count('class="plot reliability"') == 2 and 'class="plot risk-coverage"' in html


def test_classify_uses_the_calibration(calibrated):
    dst, _ = calibrated
    proc = run_cli("classify", dst, TEST, "--runtime", "onnxruntime", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)["results"][0]
    assert res["calibrated"] is True and 0.1 < res["accepted"] < 1.0
    old = json.loads(run_cli("classify", EXAMPLE_PACKAGE, TEST, "--runtime", "onnxruntime", "--json").stdout)
    assert old["results"][0]["calibrated"] is False


@pytest.mark.parametrize("args, field", [
    (["--val", os.path.join(EXAMPLE, "images", "val", "seven")], "--val"),  # flat: no class folders
    (["--val", VAL, "--test", os.path.join(EXAMPLE, "images", "val", "two")], "--test"),
    (["--val", VAL, "--target-precision", "0.98", "--target-coverage", "0.5"], "--target-coverage"),
    (["--val", VAL, "--target-precision", "1.5"], "--target-precision"),
    (["--val", VAL, "--confidence", "1"], "--confidence"),
])
def test_bad_calibrate_input_is_one_error_naming_the_flag(tmp_path, args, field):
    dst = str(tmp_path / "pkg")
    shutil.copytree(EXAMPLE_PACKAGE, dst)
    before = open(os.path.join(dst, "edgesight.yaml")).read()
    proc = run_cli("calibrate", dst, *args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert field in proc.stderr and "Traceback" not in proc.stderr
    assert open(os.path.join(dst, "edgesight.yaml")).read() == before  # nothing half-written


def test_convert_fits_and_reports_confidence_per_artifact(tmp_path):
    out = tmp_path / "digits"
    proc = run_cli("convert", os.path.join(EXAMPLE_PACKAGE, "model.fp32.onnx"), "--calib",
                   os.path.join(EXAMPLE, "images", "calib"), "--val", VAL, "--test", TEST, "--targets",
                   "onnx-int8-cpu", "--target-precision", "0.98", "--labels", os.path.join(EXAMPLE, "labels.txt"),
                   "--preprocess", os.path.join(EXAMPLE, "preprocess.yaml"), "--out", out, "--json",
                   "--min-agreement", "0.9", "--max-accuracy-drop", "5", "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)
    arts = rep["confidence"]["artifacts"]
    assert set(arts) == {"model.fp32.onnx", "model.int8.cpu.onnx"}
    assert arts["model.int8.cpu.onnx"]["fit"]["temperature"] != arts["model.fp32.onnx"]["fit"]["temperature"]
    for e in arts.values():
        assert e["test"]["ece_after"] <= 0.03 and e["test"]["ece_after"] < e["test"]["ece_before"]
    pkg = load_package(str(out))
    assert all(a.calibration is not None for a in pkg.manifest.artifacts)
    assert 'id="confidence"' in open(os.path.join(str(out), "report.html")).read()


def test_convert_without_labelled_val_says_it_did_not_calibrate(tmp_path):
    out = tmp_path / "digits"
    flat = os.path.join(EXAMPLE, "images", "val", "three")
    proc = run_cli("convert", os.path.join(EXAMPLE_PACKAGE, "model.fp32.onnx"), "--calib", flat, "--val", flat,
                   "--targets", "onnx-int8-cpu", "--labels", os.path.join(EXAMPLE, "labels.txt"), "--preprocess",
                   os.path.join(EXAMPLE, "preprocess.yaml"), "--out", out, "--json", "-q")
    rep = json.loads(proc.stdout)
    assert rep["confidence"] == {"skipped": "not calibrated: the --val images are not labelled by class folders"}
    proc = run_cli("convert", os.path.join(EXAMPLE_PACKAGE, "model.fp32.onnx"), "--calib", flat, "--val", flat,
                   "--targets", "onnx-int8-cpu", "--labels", os.path.join(EXAMPLE, "labels.txt"), "--preprocess",
                   os.path.join(EXAMPLE, "preprocess.yaml"), "--out", tmp_path / "b", "--target-precision", "0.98")
    assert proc.returncode == 2 and "--val" in proc.stderr and "Traceback" not in proc.stderr
