"""The exact rewrites before quantization: a squeeze-excitation's spatial ReduceMean becomes GlobalAveragePool, which
ONNX Runtime quantizes (QLinearGlobalAveragePool) where a ReduceMean runs in float between DequantizeLinear and
QuantizeLinear. Nothing else changes and the float outputs stay the same."""
import collections

import numpy as np
import pytest

from edgesight.calibration.dataset import OrtCalibrationReader
from edgesight.converters import onnx_quant, onnx_rewrite

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _se_block(path, opset=17, axes=(2, 3), keepdims=1):
    """conv -> ReduceMean(axes) -> conv -> HardSigmoid -> x * gate -> global pool -> fc: MobileNetV3's SE shape."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32))  # noqa: E731
    inits = [w(8, 3, 3, 3), w(8, 8, 1, 1), w(8, 10)]
    inits[0].name, inits[1].name, inits[2].name = "w0", "w1", "fc"
    mean_in = ["x1"]
    attrs = {"keepdims": keepdims}
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), "axes"))
        mean_in.append("axes")
    else:
        attrs["axes"] = list(axes)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["x1"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", mean_in, ["m"], name="se_pool", **attrs),
             helper.make_node("Conv", ["m", "w1"], ["g"], name="se_conv"),
             helper.make_node("HardSigmoid", ["g"], ["gate"], name="se_gate", alpha=1 / 6.0),
             helper.make_node("Mul", ["x1", "gate"], ["y"], name="se_mul"),
             helper.make_node("GlobalAveragePool", ["y"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _run(path_or_model, x):
    blob = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _inferred(path):
    return onnx.shape_inference.infer_shapes(onnx.load(path))


@pytest.mark.parametrize("opset", [17, 18])
def test_a_spatial_mean_becomes_a_global_pool_with_the_same_outputs(tmp_path, opset):
    path = _se_block(tmp_path / "se.onnx", opset=opset)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    model = _inferred(path)
    assert onnx_rewrite.mean_as_global_pool(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "ReduceMean" not in ops and ops.count("GlobalAveragePool") == 2
    assert "axes" not in {i.name for i in model.graph.initializer}  # opset 18's axes input went with it
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, x), _run(path, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axes,keepdims", [((1,), 1), ((2, 3), 0), ((1, 2, 3), 1), ((-2, -1), 1)])
def test_other_means_are_left_alone(tmp_path, axes, keepdims):
    model = _inferred(_se_block(tmp_path / "m.onnx", axes=axes, keepdims=keepdims))
    expected = 1 if sorted(a % 4 for a in axes) == [2, 3] and keepdims else 0
    assert onnx_rewrite.mean_as_global_pool(model) == expected


def test_a_mean_of_unknown_rank_is_left_alone(tmp_path):
    model = onnx.load(_se_block(tmp_path / "m.onnx"))  # no shape inference: the rank of x1 is unknown
    assert onnx_rewrite.mean_as_global_pool(model) == 0


def test_the_cpu_profile_pools_in_int8(tmp_path):
    """What ONNX Runtime runs: without the rewrite the pool stays a float ReduceMean between DQ and Q."""
    path = _se_block(tmp_path / "se.onnx")
    calib = np.random.default_rng(2).standard_normal((16, 3, 16, 16)).astype(np.float32)
    q = onnx_quant.quantize_onnx(path, str(tmp_path / "q.onnx"), OrtCalibrationReader("x", calib), "cpu")
    assert q.steps["rewrite"].startswith("1 spatial ReduceMean")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(q.path, sess_options=opts, providers=["CPUExecutionProvider"])
    ran = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    assert ran["QLinearGlobalAveragePool"] == 2 and ran["ReduceMean"] == 0, ran


def _dq_hs_q(scale_g, zero_g=0, alpha=1 / 6.0, beta=0.5, dtype=np.uint8):
    """x (quantized, every code) -> DequantizeLinear -> HardSigmoid -> QuantizeLinear."""
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "sx"),
             numpy_helper.from_array(np.array(128 if dtype == np.uint8 else 0, dtype), "zx"),
             numpy_helper.from_array(np.array(scale_g, np.float32), "sg"),
             numpy_helper.from_array(np.array(zero_g, dtype), "zg")]
    nodes = [helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["x"], name="dq"),
             helper.make_node("HardSigmoid", ["x"], ["h"], name="gate", alpha=alpha, beta=beta),
             helper.make_node("QuantizeLinear", ["h", "sg", "zg"], ["hq"], name="q")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", elem, [256])],
                              [helper.make_tensor_value_info("hq", elem, [256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _codes(model, dtype=np.uint8):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    info = np.iinfo(dtype)
    return sess.run(None, {"xq": np.arange(info.min, info.max + 1).astype(dtype)})[0].astype(np.int32)


@pytest.mark.parametrize("scale_g", [1 / 255.0, 0.8 / 255, 0.5 / 255])
def test_a_hardsigmoid_between_dq_and_q_is_a_requantization_within_one_step(scale_g):
    """Every input code: the rewritten graph gives the same quantized gate, or one step off where the zero point's
    rounding (beta / scale is rarely an integer) or a rounding tie moves it; where the gate is clipped (below 0,
    above 1 or above the top of the calibrated range) it is exact."""
    model = _dq_hs_q(scale_g)
    before = _codes(model)
    assert onnx_rewrite.hardsigmoid_as_requantize(model) == 1
    assert [(n.domain, n.op_type) for n in model.graph.node] == [("com.microsoft", "QLinearAdd")]
    after = _codes(model)
    assert np.abs(after - before).max() <= 1
    assert after.min() == before.min() == 0 and after.max() == before.max()
    gate = (np.arange(256) - 128) * 0.05 / 6.0 + 0.5  # the float HardSigmoid of every code (sx 0.05, zx 128)
    clipped = (gate < -1e-6) | (gate > min(1.0, 255 * scale_g) + 1e-6)
    assert clipped.sum() > 100 and (after[clipped] == before[clipped]).all()


def test_the_dequantization_a_hard_swish_multiplies_by_stays_and_the_gate_reads_the_same_codes():
    """Hard-swish is ``x * HardSigmoid(x)``: the DequantizeLinear also feeds the Mul, so only the gate's float path
    goes; the requantization reads the same 8-bit tensor with its own scale and zero point."""
    from onnx import helper

    model = _dq_hs_q(1 / 255.0)
    g = model.graph
    g.node.append(helper.make_node("Mul", ["x", "h"], ["y"], name="swish"))
    g.output.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [256]))
    del g.output[0]  # hq is read by the Mul's Q/DQ in a real model; here the float product is the output
    g.node[-1].input[1] = "hdq"
    g.node.insert(3, helper.make_node("DequantizeLinear", ["hq", "sg", "zg"], ["hdq"], name="dq_gate"))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    codes = np.arange(256).astype(np.uint8)
    before = sess.run(None, {"xq": codes})[0]
    assert onnx_rewrite.hardsigmoid_as_requantize(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") == 2 and "QLinearAdd" in ops and "HardSigmoid" not in ops
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"xq": codes})[0]
    x = (codes.astype(np.float32) - 128) * 0.05
    assert np.abs(after - before).max() <= np.abs(x).max() / 255.0 + 1e-6  # one step of the gate times |x|


def test_a_dequantization_read_only_by_rewritten_gates_goes_with_them():
    from onnx import helper

    model = _dq_hs_q(1 / 255.0)
    g = model.graph
    g.node.extend([helper.make_node("HardSigmoid", ["x"], ["h2"], name="gate2", alpha=1 / 6.0, beta=0.5),
                   helper.make_node("QuantizeLinear", ["h2", "sg", "zg"], ["hq2"], name="q2")])
    g.output.append(helper.make_tensor_value_info("hq2", onnx.TensorProto.UINT8, [256]))
    assert onnx_rewrite.hardsigmoid_as_requantize(model) == 2
    assert [n.op_type for n in g.node] == ["QLinearAdd", "QLinearAdd"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a, b = sess.run(None, {"xq": np.arange(256).astype(np.uint8)})
    assert (a == b).all() and a.max() == 255


@pytest.mark.parametrize("case", ["zero point above the lowest code", "range above 1", "int8 symmetric"])
def test_a_hardsigmoid_whose_clip_the_quantization_does_not_give_is_kept(case):
    model = {"zero point above the lowest code": lambda: _dq_hs_q(1 / 255.0, zero_g=3),
             "range above 1": lambda: _dq_hs_q(1 / 254.0),
             "int8 symmetric": lambda: _dq_hs_q(1 / 127.0, dtype=np.int8)}[case]()
    assert onnx_rewrite.hardsigmoid_as_requantize(model) == 0


def test_the_cpu_profile_runs_no_float_hardsigmoid_and_the_tensorrt_one_keeps_it(tmp_path, monkeypatch):
    path = _se_block(tmp_path / "se.onnx")
    calib = np.random.default_rng(2).standard_normal((16, 3, 16, 16)).astype(np.float32)
    q = onnx_quant.quantize_onnx(path, str(tmp_path / "q.onnx"), OrtCalibrationReader("x", calib), "cpu")
    assert q.steps["requantize"].startswith("1 HardSigmoid")
    assert "HardSigmoid" not in {n.op_type for n in onnx.load(q.path).graph.node}
    trt = onnx_quant.quantize_onnx(path, str(tmp_path / "t.onnx"), OrtCalibrationReader("x", calib), "tensorrt")
    assert "requantize" not in trt.steps and "HardSigmoid" in {n.op_type for n in onnx.load(trt.path).graph.node}
    monkeypatch.setattr(onnx_rewrite, "hardsigmoid_as_requantize", lambda model: 0)
    plain = onnx_quant.quantize_onnx(path, str(tmp_path / "p.onnx"), OrtCalibrationReader("x", calib), "cpu")
    x = np.random.default_rng(3).standard_normal((8, 3, 16, 16)).astype(np.float32)
    a, b = _run(q.path, x), _run(plain.path, x)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999, cos
