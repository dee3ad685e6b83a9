"""The TensorRT-safe Q/DQ verifier: accepts the tensorrt profile, rejects each broken rule."""
import os

import numpy as np
import pytest

from edgesight.calibration.dataset import ImageFolder, OrtCalibrationReader
from edgesight.converters.onnx_quant import quantize_onnx
from edgesight.converters.qdq_verify import check_tensorrt_qdq, verify_tensorrt_qdq
from edgesight.errors import ConversionError
from edgesight.runtimes import load_package

from support import EXAMPLE, EXAMPLE_PACKAGE
from support.onnx_models import asymmetric_qdq, tiny_cnn


@pytest.fixture(scope="module")
def calib():
    pkg = load_package(EXAMPLE_PACKAGE)
    return pkg, ImageFolder(os.path.join(EXAMPLE, "images", "calib")).load(pkg.preprocess, 40)


def rules(path):
    return {v.rule for v in check_tensorrt_qdq(path)}


def test_tensorrt_profile_passes(calib, tmp_path):
    pkg, data = calib
    out = quantize_onnx(pkg.path(pkg.manifest.source), str(tmp_path / "trt.onnx"),
                        OrtCalibrationReader("image", data.tensors), "tensorrt").path
    assert check_tensorrt_qdq(out) == []
    verify_tensorrt_qdq(out)  # does not raise
    import onnx

    model = onnx.load(out)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


def test_tensorrt_profile_places_qdq_at_weighted_and_residual_inputs_only(calib, tmp_path):
    """NVIDIA's placement: every weighted layer's activation input is quantized, no weighted layer's output is, and
    no other op type is quantized (ONNX Runtime's default quantizes every output: MobileNetV3 0.9880 -> 0.9916)."""
    import onnx

    pkg, data = calib
    out = quantize_onnx(pkg.path(pkg.manifest.source), str(tmp_path / "trt.onnx"),
                        OrtCalibrationReader("image", data.tensors), "tensorrt")
    assert "placement" in out.steps
    graph = onnx.load(out.path).graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert weighted
    for n in weighted:
        assert producer[n.input[0]].op_type == "DequantizeLinear", n.name
        assert all(c.op_type != "QuantizeLinear" for c in consumers.get(n.output[0], [])), n.name
    for q in (n for n in graph.node if n.op_type == "QuantizeLinear"):
        users = {u.op_type for d in consumers[q.output[0]] for u in consumers.get(d.output[0], [])}
        assert users <= {"Conv", "Gemm", "MatMul", "Add"}, (q.name, users)


def test_cpu_profile_is_rejected_as_asymmetric_with_int32_bias(calib, tmp_path):
    pkg, data = calib
    out = quantize_onnx(pkg.path(pkg.manifest.source), str(tmp_path / "cpu.onnx"),
                        OrtCalibrationReader("image", data.tensors), "cpu").path
    assert {"int8", "float-bias"} <= rules(out)  # uint8 activations, INT32 bias DequantizeLinear
    with pytest.raises(ConversionError, match="not TensorRT-safe"):
        verify_tensorrt_qdq(out)


def test_deliberately_asymmetric_model_is_rejected(tmp_path):
    path = asymmetric_qdq(tmp_path / "asym.onnx", zero_point=3)
    violations = check_tensorrt_qdq(path)
    assert [(v.rule, v.node) for v in violations if v.rule == "symmetric"] == [("symmetric", "q_in"),
                                                                                ("symmetric", "dq_in")]
    assert rules(asymmetric_qdq(tmp_path / "sym.onnx", zero_point=0)) == set()


def test_per_tensor_weights_are_rejected(calib, tmp_path, monkeypatch):
    from edgesight.converters import onnx_quant

    monkeypatch.setitem(onnx_quant.PROFILES, "tensorrt",
                        onnx_quant.PROFILES["tensorrt"]._replace(per_channel=False))
    pkg, data = calib
    out = quantize_onnx(pkg.path(pkg.manifest.source), str(tmp_path / "pt.onnx"),
                        OrtCalibrationReader("image", data.tensors), "tensorrt").path
    assert rules(out) == {"per-channel"}


def test_opset_domain_and_unquantized_rules(tmp_path):
    plain18 = tiny_cnn(tmp_path / "m18.onnx", opset=18)
    assert {"opset", "quantized"} <= rules(plain18)
    import onnx
    from onnx import helper

    model = onnx.load(str(tmp_path / "m18.onnx"))
    model.opset_import.extend([helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "dom.onnx"))
    assert "domain" in rules(str(tmp_path / "dom.onnx"))


def test_opset_above_17_is_brought_down_for_tensorrt(tmp_path):
    src = tiny_cnn(tmp_path / "m18.onnx", opset=18)
    data = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    out = quantize_onnx(src, str(tmp_path / "q.onnx"), OrtCalibrationReader("x", data), "tensorrt").path
    assert check_tensorrt_qdq(out) == []
