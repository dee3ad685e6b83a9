"""Packaging and compatibility rules from DESIGN.md, checked on the real tree."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from support import ROOT

with open(os.path.join(ROOT, ".ci", "device-side")) as _f:  # the one list, shared with .ci/run
    DEVICE_SIDE = [ln.strip() for ln in _f if ln.strip() and not ln.startswith("#")]
TOP_LEVEL = ["agent", "cli", "contract", "converters", "runtimes", "calibration", "fleet", "systemd", "tests", "bench",
             "examples", "docs"]


def test_layout_matches_design():
    for name in TOP_LEVEL + ["pyproject.toml", "README.md"]:
        assert os.path.exists(os.path.join(ROOT, name)), name


def test_device_side_code_is_python38_compatible():
    missing = [p for p in DEVICE_SIDE if not os.path.exists(os.path.join(ROOT, p))]
    assert not missing, "listed in .ci/device-side but not there: %s" % missing
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    if not os.path.exists(vermin):
        pytest.fail("vermin is not installed: pip install 'edgesight[test]'")
    proc = subprocess.run([vermin, "--target=3.8-", "--violations", "--eval-annotations", "--no-tips",
                           "--backport", "typing"] + DEVICE_SIDE, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    assert proc.returncode == 0, proc.stdout


def test_subpackages_import_under_the_edgesight_namespace_only(tmp_path):
    code = ("import importlib, sys\n"
            "import edgesight.runtimes, edgesight.calibration, edgesight.converters, edgesight.agent, edgesight.fleet\n"
            "import edgesight.cli, edgesight.contract\n"
            "for bare in ('runtimes', 'calibration', 'converters', 'agent', 'fleet', 'cli', 'contract', 'errors',\n"
            "             'configfile', 'files'):\n"
            "    try:\n"
            "        importlib.import_module(bare)\n"
            "    except ImportError:\n"
            "        continue\n"
            "    sys.exit('bare top-level module importable: ' + bare)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


def test_base_import_does_not_pull_heavy_packages():
    code = ("import sys, edgesight, edgesight.runtimes, edgesight.calibration, edgesight.cli\n"
            "heavy = [m for m in ('onnxruntime', 'onnx', 'ai_edge_litert', 'tensorflow', 'tensorrt', 'cv2', 'PIL',"
            " 'torch') if m in sys.modules]\n"
            "sys.exit('imported at start-up: %s' % heavy if heavy else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.slow
def test_wheel_contains_only_the_edgesight_namespace(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), ROOT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    (wheel,) = [f for f in os.listdir(str(tmp_path)) if f.endswith(".whl")]
    names = zipfile.ZipFile(str(tmp_path / wheel)).namelist()
    code = [n for n in names if not n.startswith("edgesight-") or ".dist-info/" not in n]
    assert code and all(n.startswith("edgesight/") for n in code), code
    for module in ("edgesight/cli/__init__.py", "edgesight/cli/agent.py", "edgesight/contract/payloads.py",
                   "edgesight/configfile.py", "edgesight/files.py", "edgesight/errors.py", "edgesight/runtimes/ort_backend.py",
                   "edgesight/runtimes/tflite_backend.py", "edgesight/calibration/preprocess.py",
                   "edgesight/converters/package_builder.py", "edgesight/agent/__init__.py",
                   "edgesight/fleet/__init__.py"):
        assert module in names, module
    assert not any(n.startswith("edgesight/tests/") or n.startswith("edgesight/bench/") for n in names)
    examples = [n for n in names if n.startswith("edgesight/examples/")]  # only the package `doctor` loads
    assert examples and all(n.startswith("edgesight/examples/digits/package/") for n in examples), examples
    assert "edgesight/systemd/edgesight-agent.service" in names  # `service install` writes it
