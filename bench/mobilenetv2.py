"""A MobileNetV2 (width 1.0, 224x224, 1000 classes) written with onnx.helper, random He-initialised weights.

For speed and size measurements only: with random weights, fidelity is measured as logit cosine, not top-1.
    python bench/mobilenetv2.py out.onnx
"""
import sys
from typing import List, Tuple

import numpy as np

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper
BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def build(path: str, classes: int = 1000, size: int = 224, seed: int = 0) -> str:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []  # type: List, List
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return "%s_%d" % (prefix, counter[0])

    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6.0, np.float32), "six")]

    def conv(x: str, cin: int, cout: int, k: int, stride: int, groups: int = 1, relu6: bool = True) -> str:
        w, b, y = name("w"), name("b"), name("conv")
        fan_in = (cin // groups) * k * k
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32), w))
        inits.append(numpy_helper.from_array((rng.standard_normal(cout) * 0.01).astype(np.float32), b))
        nodes.append(helper.make_node("Conv", [x, w, b], [y], name=y, kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4, group=groups))
        if not relu6:
            return y
        r = name("relu6")
        nodes.append(helper.make_node("Clip", [y, "zero", "six"], [r], name=r))
        return r

    x = conv("image", 3, 32, 3, 2)
    cin = 32
    for t, c, n, s in BLOCKS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = conv(x, cin, hidden, 1, 1) if t != 1 else x
            h = conv(h, hidden, hidden, 3, stride, groups=hidden)
            h = conv(h, hidden, c, 1, 1, relu6=False)
            if stride == 1 and cin == c:
                a = name("add")
                nodes.append(helper.make_node("Add", [x, h], [a], name=a))
                h = a
            x, cin = h, c
    x = conv(x, cin, 1280, 1, 1)
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"], name="gap"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    inits += [numpy_helper.from_array((rng.standard_normal((classes, 1280)) * np.sqrt(1.0 / 1280)).astype(np.float32),
                                      "fc_w"), numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b")]
    graph = helper.make_graph(nodes, "mobilenetv2", [helper.make_tensor_value_info(
        "image", TensorProto.FLOAT, ["batch", 3, size, size])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["batch", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def params(path: str) -> Tuple[int, int]:
    import onnx

    m = onnx.load(path)
    return len(m.graph.node), sum(int(np.prod(i.dims)) for i in m.graph.initializer)


if __name__ == "__main__":
    out = build(sys.argv[1] if len(sys.argv) > 1 else "mobilenetv2.onnx")
    print("%s: %d nodes, %d parameters" % ((out,) + params(out)))
