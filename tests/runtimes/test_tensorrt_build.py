"""Engine building, checked against a fake tensorrt module that records calls; a real build behind `device`."""
import os

import pytest

from edgesight.converters import tensorrt_engine
from edgesight.runtimes.tensorrt_build import EngineBuildError

from support import EXAMPLE_PACKAGE
from support import fake_tensorrt


@pytest.fixture
def onnx_file(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"onnx-bytes")
    return str(p)


def names(trt):
    return [c[0] for c in trt.calls]


@pytest.mark.parametrize("version,flags,precision_flags", [("8.5.2", 1, True), ("8.6.1", 1, True),
                                                           ("10.3.0", 2, False)])
def test_build_flags_per_version(monkeypatch, onnx_file, tmp_path, version, flags, precision_flags):
    trt = fake_tensorrt.install(monkeypatch, version=version)
    engine = str(tmp_path / "m.engine")
    built = tensorrt_engine.build_engine(onnx_file, engine, (3, 32, 32), max_batch=4, workspace_mb=64)
    # before 10: EXPLICIT_BATCH (bit 0) and the INT8 (+FP16) flags; from 10 on: STRONGLY_TYPED (bit 1), the Q/DQ
    # nodes decide the precisions and no precision flag may be set
    assert ("create_network", flags) in trt.calls
    assert (("set_flag", "INT8") in trt.calls) is precision_flags
    assert (("set_flag", "FP16") in trt.calls) is precision_flags
    assert ("set_memory_pool_limit", "WORKSPACE", 64 << 20) in trt.calls
    assert ("set_shape", "image", (1, 3, 32, 32), (1, 3, 32, 32), (4, 3, 32, 32)) in trt.calls
    assert names(trt).index("add_optimization_profile") < names(trt).index("build_serialized_network")
    with open(engine, "rb") as f:
        assert f.read() == b"FAKE-ENGINE"
    assert built["tensorrt"] == version and set(built) == {"tensorrt", "device", "compute"}


def test_static_batch_needs_no_profile(monkeypatch, onnx_file, tmp_path):
    trt = fake_tensorrt.install(monkeypatch, input_shape=(1, 3, 32, 32), fp16=False)
    tensorrt_engine.build_engine(onnx_file, str(tmp_path / "e"), (3, 32, 32))
    assert "add_optimization_profile" not in names(trt)


def test_no_fp16_flag_without_fast_fp16(monkeypatch, onnx_file, tmp_path):
    trt = fake_tensorrt.install(monkeypatch, version="8.6.1", fp16=False)
    tensorrt_engine.build_engine(onnx_file, str(tmp_path / "e"), (3, 32, 32))
    assert ("set_flag", "INT8") in trt.calls and ("set_flag", "FP16") not in trt.calls


def test_parser_errors_are_reported(monkeypatch, onnx_file, tmp_path):
    fake_tensorrt.install(monkeypatch, parse_ok=False)
    with pytest.raises(EngineBuildError, match="INVALID_NODE: fake parser error"):
        tensorrt_engine.build_engine(onnx_file, str(tmp_path / "e"), (3, 32, 32))
    assert not os.path.exists(str(tmp_path / "e"))


def test_failed_build_is_an_error(monkeypatch, onnx_file, tmp_path):
    fake_tensorrt.install(monkeypatch, build_ok=False)
    with pytest.raises(EngineBuildError, match="failed to build"):
        tensorrt_engine.build_engine(onnx_file, str(tmp_path / "e"), (3, 32, 32))


def test_version_probe(monkeypatch):
    fake_tensorrt.install(monkeypatch, version="10.3.0")
    assert tensorrt_engine.tensorrt_version() == "10.3.0"


@pytest.mark.device
def test_real_engine_build_from_example(tmp_path):
    """Runs only where the real tensorrt imports (a Jetson or a TensorRT workstation)."""
    from edgesight.calibration.dataset import ImageFolder, OrtCalibrationReader
    from edgesight.converters.onnx_quant import quantize_onnx
    from edgesight.runtimes import load_package

    pkg = load_package(EXAMPLE_PACKAGE)
    data = ImageFolder(os.path.join(os.path.dirname(EXAMPLE_PACKAGE), "images", "calib")).load(pkg.preprocess, 50)
    qdq = quantize_onnx(pkg.path(pkg.manifest.source), str(tmp_path / "q.onnx"),
                        OrtCalibrationReader("image", data.tensors), "tensorrt").path
    built = tensorrt_engine.build_engine(qdq, str(tmp_path / "m.engine"), (3, 32, 32))
    assert os.path.getsize(str(tmp_path / "m.engine")) > 0 and built["compute"] != "unknown"
