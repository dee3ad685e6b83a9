"""Small ONNX models built with onnx.helper for converter edge cases (IR 8, so every tool here reads them)."""
import numpy as np


def _save(model, path):
    import onnx

    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def tiny_cnn(path, classes=10, size=32, channels=3, extra_op=None, opset=17, two_inputs=False, dynamic_hw=False,
             seed=0, batch="N"):
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm; ``extra_op`` inserts e.g. CastLike after the Conv;
    ``batch`` a fixed batch size (default: dynamic)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((8, channels, 3, 3)).astype(np.float32) * 0.3, "W"),
             numpy_helper.from_array(np.zeros(8, np.float32), "B"),
             numpy_helper.from_array(rng.standard_normal((classes, 8)).astype(np.float32), "FW"),
             numpy_helper.from_array(np.zeros(classes, np.float32), "FB")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv0", pads=[1, 1, 1, 1])]
    feed = "c"
    if extra_op == "CastLike":
        inits.append(numpy_helper.from_array(np.zeros(1, np.float32), "like"))
        nodes.append(helper.make_node("CastLike", ["c", "like"], ["cl"], name="odd_castlike"))
        feed = "cl"
    if two_inputs:
        nodes.append(helper.make_node("Add", [feed, "x2"], ["added"], name="add_second_input"))
        feed = "added"
    nodes += [helper.make_node("Relu", [feed], ["r"], name="relu0"),
              helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "FW", "FB"], ["y"], name="fc", transB=1)]
    h = "H" if dynamic_hw else size
    w = "W" if dynamic_hw else size
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, h, w])]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [batch, 8, h, w]))
    graph = helper.make_graph(nodes, "tiny", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                    [batch, classes])], inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)


def vector_model(path):
    """A non-image model: input [N, 16] -> Gemm -> [N, 4]."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 16), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], "vec",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def asymmetric_qdq(path, zero_point=3):
    """A hand-made Q/DQ model whose activation zero point is not 0 (what TensorRT cannot build)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "zp"),
             numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "Wq"),
             numpy_helper.from_array(np.full(4, 0.1, np.float32), "Ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), "Wzp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_in"),
             helper.make_node("DequantizeLinear", ["Wq", "Ws", "Wzp"], ["W"], name="dq_w", axis=0),
             helper.make_node("Conv", ["xd", "W"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "asym", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
